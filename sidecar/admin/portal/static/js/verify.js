// Standard Webhooks verification in the browser (WebCrypto HMAC-SHA256): the secret never
// leaves the page. Mirrors the reference libraries: `v1,<base64>` signatures over
// "{webhook-id}.{webhook-timestamp}.{payload}", keyed by the base64 part of a whsec_ secret,
// timestamps within 5 minutes of now.

export const TOLERANCE_S = 5 * 60;

function decodeBase64(text) {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 === 1) return null;
  try {
    const binary = window.atob(text);
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function encodeBase64(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return window.btoa(binary);
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i += 1) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * {valid: true} or {valid: false, reason, detail}. Reasons: secret (bad secret format),
 * headers (missing or malformed), timestamp (too old / too new), mismatch.
 */
export async function verify(
  { payload, id, timestamp, signature, secret },
  nowS = Date.now() / 1000,
) {
  const raw = secret.trim().replace(/^whsec_/, "");
  const key = decodeBase64(raw);
  if (!key || key.length === 0) {
    return {
      valid: false,
      reason: "secret",
      detail: "Bad secret format: use whsec_ followed by base64, as the portal shows it.",
    };
  }
  if (!id.trim()) return { valid: false, reason: "headers", detail: "The webhook-id is missing." };
  if (!/^\d{1,12}$/.test(timestamp.trim())) {
    return {
      valid: false,
      reason: "headers",
      detail: "The webhook-timestamp must be whole seconds since 1970 (e.g. 1767225600).",
    };
  }
  const given = signature.trim().split(/\s+/).filter(Boolean);
  const v1 = given.filter((s) => s.startsWith("v1,")).map((s) => s.slice(3));
  if (v1.length === 0) {
    return {
      valid: false,
      reason: "headers",
      detail: "The webhook-signature holds no v1,<base64> signature.",
    };
  }
  const cryptoKey = await window.crypto.subtle.importKey(
    "raw",
    key,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const content = new TextEncoder().encode(`${id.trim()}.${timestamp.trim()}.${payload}`);
  const expected = encodeBase64(
    new Uint8Array(await window.crypto.subtle.sign("HMAC", cryptoKey, content)),
  );
  const matches = v1.some((s) => equal(s, expected));
  const ts = Number(timestamp.trim());
  if (nowS - ts > TOLERANCE_S) {
    return {
      valid: false,
      reason: "timestamp",
      detail: `Timestamp too old: it is ${Math.round(nowS - ts)} s in the past (at most ${TOLERANCE_S} s are accepted, against replays). ${matches ? "The signature itself matches." : "The signature does not match either."}`,
    };
  }
  if (ts - nowS > TOLERANCE_S) {
    return {
      valid: false,
      reason: "timestamp",
      detail: `Timestamp too new: it is ${Math.round(ts - nowS)} s in the future; check the clocks.`,
    };
  }
  if (!matches) {
    return {
      valid: false,
      reason: "mismatch",
      detail:
        "Signature mismatch: no v1 signature matches. Check that the payload is the raw body byte for byte (not re-serialised JSON), and that the secret, webhook-id and webhook-timestamp are the ones of this delivery.",
    };
  }
  return { valid: true };
}
