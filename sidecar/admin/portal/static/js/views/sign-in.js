// Sign in: a client's credential (the value it sends in its credential header on API calls),
// or the operator's admin token, exchanged for a session kept in this tab only.

import { ApiError, api, session } from "../api.js";
import { append, field, h } from "../dom.js";

/** The header clients send their credential in (the page is served naming it). */
export function credentialHeader() {
  const meta = document.querySelector('meta[name="sidecar-credential-header"]');
  return meta?.getAttribute("content") || "Authorization";
}

/** A note when a client credential names an account with nothing in it: any value signs in,
 * so a typo would otherwise look like an account whose endpoints are gone. */
async function emptyAccountNote(header) {
  const [me, { subscriptions }, { attempts }] = await Promise.all([
    api.me(),
    api.subscriptions(),
    api.messages({ limit: 1 }),
  ]);
  if (me.kind !== "client" || subscriptions.length > 0 || attempts.length > 0) return null;
  return `No endpoints or messages under this credential yet. If you expected some, check the credential: it must be exactly what your application sends in its ${header} header.`;
}

export function renderSignIn(root, { message, onSignedIn, setTitle }) {
  const header = credentialHeader();
  const example = header.toLowerCase() === "authorization" ? " (for example Bearer key-…)" : "";
  setTitle("Sign in");
  const credential = h("input", {
    type: "password",
    name: "credential",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    maxlength: "4096",
  });
  const errorBox = h("div", { class: "form-error" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card sign-in", novalidate: true },
    field(
      "Credential",
      credential,
      `The value your application sends in its ${header} header on API calls${example}, or the operator's admin token.`,
    ).row,
    errorBox,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.replaceChildren();
    const value = credential.value.trim();
    if (!value) {
      append(errorBox, h("p", { role: "alert" }, "Enter your credential."));
      credential.focus();
      return;
    }
    submit.disabled = true;
    try {
      const created = await api.signIn(value);
      session.set(created.token);
      credential.value = "";
      await onSignedIn(await emptyAccountNote(header));
    } catch (error) {
      const text = error instanceof ApiError ? error.message : "Sign-in failed.";
      append(errorBox, h("p", { role: "alert" }, text));
      credential.focus();
    } finally {
      submit.disabled = false;
    }
  });
  append(
    root,
    h("h1", { tabindex: "-1" }, "Sign in"),
    message ? h("p", { class: "session-message", role: "alert" }, message) : null,
    h(
      "p",
      {},
      "Manage your webhook endpoints, watch their deliveries, send test events and check signatures.",
    ),
    form,
    h(
      "p",
      { class: "hint" },
      "Your operator can also send you a portal link that signs you in directly. The session lasts one hour in this tab.",
    ),
  );
}
