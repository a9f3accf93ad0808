// Operations: one synchronised call's whole story (received, forwarded, the API's answer, held
// or answered 202, its completion, what the client got, long-polls, retries, every webhook
// attempt), and a search by the correlation id its answer carried. A client sees its own; the
// operator sees everyone's and may expunge one.

import { ApiError, api } from "../api.js";
import { confirmDialog } from "../dialog.js";
import { append, clear, field, h, title } from "../dom.js";
import { duration, when } from "../format.js";

const POLL_MS = 1500;

const FALLBACK_REASONS = {
  budget: "its budget ran out",
  prefer: "the client asked for it (Prefer: respond-async)",
  shed: "the route held as many calls as it may",
  redis: "Redis did not answer",
  no_id: "the 202 named no id to wait on",
  location: "the result's Location did not answer",
  bad_location: "the 202's Location was malformed",
};

function after(ms) {
  return ms === undefined || ms === null ? "" : ` after ${duration(ms)}`;
}

/** What happened, in words (every value from the API goes in as text). */
function describe(e) {
  switch (e.kind) {
    case "received":
      return `Received ${e.method || ""} ${e.path || ""}`.trim();
    case "forwarded":
      return "Forwarded to the API";
    case "upstream_answered":
      return `The API answered ${e.status}${e.location ? `, Location ${e.location}` : ""}${after(e.after_ms)}`;
    case "held":
      return `Held for its completion (at most ${duration(e.budget_ms)})`;
    case "fallback":
      return `Answered with the 202: ${FALLBACK_REASONS[e.reason] || e.reason}`;
    case "completed":
      return `Completed: ${e.state}${e.event_type ? ` (${e.event_type})` : ""}, learnt from the ${e.source === "poll" ? "Location's poll" : "completion stream"}`;
    case "answered":
      return `The client got ${e.status}${after(e.after_ms)}`;
    case "client_gone":
      return `The client left${after(e.after_ms)}`;
    case "long_poll":
      return e.via === "status"
        ? `Its status URL, held (Prefer: wait): ${e.status} (${e.state})`
        : `A long-poll of its Location: ${e.result}${e.waited_ms ? ` after ${duration(e.waited_ms)}` : ""}`;
    case "status_read":
      return `Its status URL was read: ${e.status} (${e.state})`;
    case "idempotent_attach":
      return `A retry with the same Idempotency-Key attached to it: the retry got ${e.status}`;
    case "idempotent_replay":
      return `A retry with the same Idempotency-Key was answered again: ${e.status}`;
    case "webhook_attempt":
      return `Webhook attempt ${e.attempt} to ${e.subscription}: ${e.status ?? e.error ?? "no answer"}, ${e.result}`;
    default:
      return e.kind;
  }
}

function stateBadge(state) {
  const tone = state === "succeeded" ? "delivered" : state === "failed" ? "failed" : "retry";
  return h("span", { class: `badge result-${tone}` }, state);
}

function findForm(ctx, value = "") {
  const input = h("input", {
    type: "text",
    name: "correlation_id",
    spellcheck: "false",
    autocomplete: "off",
    maxlength: "128",
    value,
  });
  const form = h(
    "form",
    { class: "find", role: "search", "aria-label": "Find an operation" },
    field("Correlation id", input, "The X-Correlation-ID of the call's answer, or of its webhook.")
      .row,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Find operation")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = input.value.trim();
    if (id) ctx.navigate(`#/operations/${encodeURIComponent(id)}`);
  });
  return form;
}

export async function renderOperations(root, ctx) {
  clear(root);
  append(
    root,
    title("Operations"),
    h(
      "p",
      {},
      "Every call the sidecar synchronised, step by step: what the API answered, how long the call was held, its completion, what the client got, its retries and every webhook attempt.",
    ),
    findForm(ctx),
  );
}

function notFound(root, ctx, id) {
  clear(root);
  append(
    root,
    title("Operation not found"),
    h(
      "p",
      {},
      `There is no operation ${id} in your account. Operations are kept for a day (the sidecar's tracking_ttl and operations.retention).`,
    ),
    findForm(ctx, id),
  );
}

function timeline(op) {
  return h(
    "ol",
    { class: "timeline" },
    op.events.map((e) =>
      h(
        "li",
        { class: `step step-${e.kind}` },
        h("time", { datetime: e.at }, when(e.at)),
        " ",
        h("span", {}, describe(e)),
        e.kind === "webhook_attempt"
          ? [
              " ",
              h(
                "a",
                { href: `#/messages/${encodeURIComponent(e.message_id)}`, class: "short-id" },
                e.message_id,
              ),
            ]
          : null,
      ),
    ),
  );
}

export async function renderOperation(root, ctx, id) {
  let op;
  try {
    op = await api.operation(id);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      if (ctx.live()) notFound(root, ctx, id);
      return;
    }
    throw error;
  }
  if (!ctx.live()) return;
  clear(root);
  const stateValue = h("dd", {}, stateBadge(op.state));
  const steps = h("div", {}, timeline(op));
  const dropped = h("p", { class: "hint" });
  const drawDropped = (o) => {
    dropped.textContent = o.events_dropped
      ? `${o.events_dropped} later steps were left out: an operation keeps at most 100.`
      : "";
  };
  append(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/operations" }, "Operations"), " / operation"),
    title(`Operation ${op.correlation_id}`),
    h(
      "dl",
      { class: "details" },
      h("dt", {}, "Route"),
      h("dd", {}, h("code", {}, op.route)),
      h("dt", {}, "State"),
      stateValue,
      h("dt", {}, "Received"),
      h("dd", {}, when(op.created_at)),
      op.location ? [h("dt", {}, "Location"), h("dd", {}, h("code", {}, op.location))] : null,
      op.operation_id
        ? [h("dt", {}, "Operation id"), h("dd", {}, h("code", {}, op.operation_id))]
        : null,
      op.owner ? [h("dt", {}, "Client"), h("dd", {}, h("code", {}, op.owner))] : null,
    ),
  );
  if (ctx.isOperator && !ctx.readOnly) {
    const expunge = h("button", { type: "button", class: "danger" }, "Expunge");
    expunge.addEventListener("click", async () => {
      const ok = await confirmDialog({
        title: "Expunge this operation?",
        body: "Its record, timeline, status URL, Idempotency-Key and webhook messages (with their payloads) are deleted at once. This cannot be undone.",
        confirm: "Expunge",
        danger: true,
      });
      if (!ok) return;
      try {
        await api.expungeOperation(op.correlation_id);
        ctx.flash(`Operation ${op.correlation_id} expunged.`);
        ctx.navigate("#/operations");
      } catch (error) {
        ctx.notice(error.message);
      }
    });
    append(root, h("div", { class: "toolbar" }, expunge));
  }
  append(root, h("h2", {}, "Timeline"), steps, dropped);
  drawDropped(op);
  let shown = JSON.stringify(op);
  ctx.every(POLL_MS, async () => {
    const fresh = await api.operation(id);
    if (!ctx.live()) return;
    const key = JSON.stringify(fresh);
    if (key === shown) return;
    shown = key;
    clear(stateValue);
    append(stateValue, stateBadge(fresh.state));
    clear(steps);
    append(steps, timeline(fresh));
    drawDropped(fresh);
  });
}
