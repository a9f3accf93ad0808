// The message log: a filterable, paginated, live-updating table of attempts (the Messages view,
// and each endpoint's Attempts), and one message's payload, headers and attempts.

import { ApiError, api } from "../api.js";
import { append, clear, field, h, pre, tableRegion, title } from "../dom.js";
import { duration, fromNow, json, localToIso, when } from "../format.js";

const POLL_MS = 1500;
const PAGE_SIZE = 25;

function statusText(attempt) {
  if (attempt.status !== null && attempt.status !== undefined) return String(attempt.status);
  return attempt.error || "—";
}

function resultBadge(result) {
  return h("span", { class: `badge result-${result}` }, result);
}

/** The attempts table with its filters, pages and live updates. */
export function attemptsPanel(
  ctx,
  { subscription = null, heading, level, types, endpoints = null },
) {
  const headingEl = level === "h1" ? title(heading) : h(level, {}, heading);
  const status = h(
    "select",
    { name: "status" },
    h("option", { value: "" }, "All"),
    h("option", { value: "succeeded" }, "Succeeded"),
    h("option", { value: "failed" }, "Failed"),
  );
  const eventType = h(
    "select",
    { name: "event_type" },
    h("option", { value: "" }, "All event types"),
    types.map((t) => h("option", { value: t.type }, t.type)),
  );
  const from = h("input", { type: "datetime-local", name: "since" });
  const to = h("input", { type: "datetime-local", name: "until" });
  const live = h("input", { type: "checkbox", checked: true });
  const liveId = `live-${subscription || "all"}`;
  live.id = liveId;
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": `Filter ${heading.toLowerCase()}` },
    field("Status", status).row,
    field("Event type", eventType).row,
    field("From", from).row,
    field("To", to).row,
    h("div", { class: "check live" }, live, h("label", { for: liveId }, "Live updates")),
  );
  filters.addEventListener("submit", (event) => event.preventDefault());
  const body = h("div", { class: "attempts-body" });
  const liveRegion = h("p", { class: "visually-hidden", role: "status" });
  const older = h("button", { type: "button" }, "Older");
  const newer = h("button", { type: "button" }, "Newer");
  const pager = h("div", { class: "pager" }, newer, older);
  const cursors = [null]; // cursors[i] = the cursor of page i (page 0: the newest)
  let page = 0;
  let nextCursor = null;
  let shown = "";

  const query = () => ({
    status: status.value,
    event_type: eventType.value,
    since: localToIso(from.value),
    until: localToIso(to.value),
    subscription,
    cursor: cursors[page],
    limit: PAGE_SIZE,
  });

  const endpointCell = (attempt) => {
    if (!endpoints) return null;
    const url = endpoints.get(attempt.sub_id);
    return h(
      "td",
      {},
      h(
        "a",
        {
          href: `#/endpoints/${encodeURIComponent(attempt.sub_id)}`,
          title: url || attempt.sub_id,
          class: "short-url",
        },
        url || attempt.sub_id,
      ),
    );
  };

  const draw = (attempts) => {
    clear(body);
    if (attempts.length === 0) {
      const filtered = status.value || eventType.value || from.value || to.value;
      append(
        body,
        h(
          "p",
          { class: "empty" },
          filtered
            ? "No attempts match these filters."
            : subscription
              ? "No attempts yet. Send a test event to see one here."
              : "No messages yet. Open an endpoint and send a test event, or make a call through the sidecar.",
        ),
      );
      return;
    }
    const columns = [
      "Time",
      "Event type",
      endpoints ? "Endpoint" : null,
      "Status",
      "Duration",
      "Attempt",
      "Trigger",
      "Result",
      "Message",
    ].filter(Boolean);
    const table = h(
      "table",
      { class: "attempts" },
      h("caption", { class: "visually-hidden" }, `${heading}, newest first`),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          columns.map((c) => h("th", { scope: "col" }, c)),
        ),
      ),
      h(
        "tbody",
        {},
        attempts.map((a) =>
          h(
            "tr",
            {},
            h("td", {}, h("time", { datetime: a.time }, when(a.time))),
            h("td", {}, h("code", {}, a.type)),
            endpointCell(a),
            h("td", {}, statusText(a)),
            h("td", {}, duration(a.duration_ms)),
            h("td", {}, String(a.attempt)),
            h("td", {}, a.trigger),
            h("td", {}, resultBadge(a.result)),
            h(
              "td",
              {},
              h(
                "a",
                {
                  href: `#/messages/${encodeURIComponent(a.message_id)}`,
                  title: a.message_id,
                  class: "short-id",
                },
                a.message_id,
              ),
            ),
          ),
        ),
      ),
    );
    append(body, tableRegion(heading, table));
  };

  const load = async (announce = false) => {
    const { attempts, next_cursor: next } = await api.messages(query());
    if (!ctx.live()) return;
    nextCursor = next;
    older.disabled = !next;
    newer.disabled = page === 0;
    const key = JSON.stringify(attempts);
    if (key === shown) return;
    const had = shown !== "";
    shown = key;
    draw(attempts);
    if (announce || had)
      liveRegion.textContent = `${attempts.length} attempt${attempts.length === 1 ? "" : "s"} shown.`;
  };

  const reload = () => {
    cursors.length = 1;
    page = 0;
    shown = "";
    load(true).catch((error) => {
      clear(body);
      append(body, ctx.problem(error));
    });
  };
  for (const control of [status, eventType, from, to]) control.addEventListener("change", reload);
  older.addEventListener("click", () => {
    if (!nextCursor) return;
    page += 1;
    cursors[page] = nextCursor;
    shown = "";
    load(true).then(() => older.disabled || older.focus());
  });
  newer.addEventListener("click", () => {
    if (page === 0) return;
    page -= 1;
    shown = "";
    load(true).then(() => (newer.disabled ? older.focus() : newer.focus()));
  });
  ctx.every(POLL_MS, async () => {
    if (live.checked && page === 0) await load();
  });
  const section = h(
    "section",
    { class: "attempts-panel", "aria-labelledby": `${liveId}-heading` },
    headingEl,
    filters,
    liveRegion,
    body,
    pager,
  );
  headingEl.id = headingEl.id || `${liveId}-heading`;
  section.setAttribute("aria-labelledby", headingEl.id);
  append(body, h("p", { class: "loading" }, "Loading…"));
  reload();
  return section;
}

export async function renderMessages(root, ctx) {
  const [types, { subscriptions }] = await Promise.all([ctx.catalog(), api.subscriptions()]);
  if (!ctx.live()) return;
  clear(root);
  const endpoints = new Map(subscriptions.map((s) => [s.id, s.url]));
  append(root, attemptsPanel(ctx, { heading: "Messages", level: "h1", types, endpoints }));
  const messageId = h("input", {
    type: "text",
    name: "message_id",
    spellcheck: "false",
    autocomplete: "off",
    maxlength: "128",
  });
  const find = h(
    "form",
    { class: "find", role: "search", "aria-label": "Find a message" },
    field("Message id", messageId, "A webhook-id your receiver logged, e.g. msg_…").row,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Open message")),
  );
  find.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = messageId.value.trim();
    if (id) ctx.navigate(`#/messages/${encodeURIComponent(id)}`);
  });
  append(root, find);
}

/** The state shown; a message dead-lettered because Redis lost its record says why. */
function stateText(message) {
  return message.dead_reason ? `${message.state} (${message.dead_reason})` : message.state;
}

/** When the next attempt is due, for a message waiting for a scheduled retry; else null. */
function nextAttempt(message) {
  if (message.state !== "scheduled") return null;
  return message.attempts.find((a) => a.next_attempt_at)?.next_attempt_at || null;
}

/** The payload exactly as sent (what the signature covers), to copy into a verifier, and the
 * same payload formatted for reading. */
function payloadSection(message) {
  const raw = message.body || JSON.stringify(message.payload);
  const copied = h("span", { class: "hint", role: "status" });
  const copy = h("button", { type: "button" }, "Copy payload as sent");
  const exact = pre(raw, "Payload as sent");
  copy.addEventListener("click", async () => {
    window.getSelection()?.selectAllChildren(exact);
    try {
      await navigator.clipboard.writeText(raw);
      copied.textContent = "Copied.";
    } catch {
      copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  return [
    h("h2", {}, "Payload"),
    h(
      "p",
      { class: "hint" },
      "Exactly as sent: the bytes the signature covers. Paste them as they are into Verify a signature.",
    ),
    exact,
    h("div", { class: "actions" }, copy, copied),
    h(
      "details",
      {},
      h("summary", {}, "Formatted"),
      pre(json(message.payload), "Formatted for reading"),
    ),
  ];
}

function notFound(root, id) {
  clear(root);
  append(
    root,
    title("Message not found"),
    h(
      "p",
      {},
      `There is no message ${id} in your account. Messages are kept 7 days after their last attempt.`,
    ),
    h("p", {}, h("a", { href: "#/messages" }, "Back to messages")),
  );
}

/** The operation a completion's message tells of: a link to its timeline (none for tests). */
function operationRow(message) {
  const cid = message.payload?.correlation_id;
  if (message.trigger === "test" || typeof cid !== "string" || !cid) return null;
  return [
    h("dt", {}, "Operation"),
    h("dd", {}, h("a", { href: `#/operations/${encodeURIComponent(cid)}` }, cid)),
  ];
}

export async function renderMessage(root, ctx, id) {
  let message;
  try {
    message = await api.message(id);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      if (ctx.live()) notFound(root, id);
      return;
    }
    throw error;
  }
  let endpointUrl = null;
  try {
    endpointUrl = (await api.subscription(message.sub_id)).url;
  } catch {
    endpointUrl = null;
  }
  if (!ctx.live()) return;
  clear(root);
  const attemptsArea = h("div");
  const stateValue = h("dd", {}, stateText(message));
  const nextTerm = h("dt", {}, "Next attempt");
  const nextValue = h("dd");
  const drawNext = (fresh) => {
    const due = nextAttempt(fresh);
    nextTerm.hidden = nextValue.hidden = !due;
    clear(nextValue);
    if (due)
      append(
        nextValue,
        h("time", { datetime: due }, when(due)),
        ` (${fromNow(due)}; Recover leaves it to this schedule)`,
      );
  };
  const drawAttempts = (attempts) => {
    clear(attemptsArea);
    if (attempts.length === 0) {
      append(attemptsArea, h("p", { class: "empty" }, "No attempt yet: it is queued."));
      return;
    }
    for (const a of attempts) {
      append(
        attemptsArea,
        h(
          "article",
          { class: "attempt card" },
          h("h3", {}, `Attempt ${a.attempt}`, " ", resultBadge(a.result)),
          h(
            "dl",
            { class: "details" },
            h("dt", {}, "Time"),
            h("dd", {}, h("time", { datetime: a.time }, when(a.time))),
            h("dt", {}, "Status"),
            h("dd", {}, statusText(a)),
            h("dt", {}, "Duration"),
            h("dd", {}, duration(a.duration_ms)),
            h("dt", {}, "Trigger"),
            h("dd", {}, a.trigger),
            a.error_detail ? [h("dt", {}, "Error"), h("dd", {}, a.error_detail)] : null,
          ),
          h("h4", {}, "Response"),
          a.response_excerpt
            ? pre(a.response_excerpt, `Response to attempt ${a.attempt}`)
            : h("p", { class: "hint" }, "Empty response body."),
        ),
      );
    }
  };
  const headerRows = Object.entries(message.headers).map(([name, value]) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, h("code", {}, name)),
      h("td", {}, value === null ? "not recorded" : h("code", {}, value)),
    ),
  );
  append(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/messages" }, "Messages"), " / message"),
    title(`Message ${message.message_id}`),
    h(
      "dl",
      { class: "details" },
      h("dt", {}, "Event type"),
      h("dd", {}, h("code", {}, message.type)),
      h("dt", {}, "Endpoint"),
      h(
        "dd",
        {},
        h(
          "a",
          { href: `#/endpoints/${encodeURIComponent(message.sub_id)}` },
          endpointUrl || message.sub_id,
        ),
      ),
      h("dt", {}, "Created"),
      h("dd", {}, when(message.created_at)),
      h("dt", {}, "State"),
      stateValue,
      nextTerm,
      nextValue,
      operationRow(message),
    ),
  );
  drawNext(message);
  if (!ctx.readOnly) {
    const redeliver = h("button", { type: "button", class: "primary" }, "Redeliver");
    const result = h("p", { role: "status" });
    redeliver.addEventListener("click", async () => {
      redeliver.disabled = true;
      try {
        const queued = await api.redeliver(message.sub_id, message.message_id);
        result.textContent = `Redelivery queued (attempt ${queued.attempt}).`;
      } catch (error) {
        result.textContent = error.message;
      } finally {
        redeliver.disabled = false;
      }
    });
    append(root, h("div", { class: "toolbar" }, redeliver), result);
  }
  append(
    root,
    payloadSection(message),
    h("h2", {}, "Webhook headers"),
    tableRegion(
      "Webhook headers",
      h(
        "table",
        {},
        h("caption", { class: "visually-hidden" }, "Webhook headers of the last attempt"),
        h(
          "thead",
          {},
          h("tr", {}, h("th", { scope: "col" }, "Header"), h("th", { scope: "col" }, "Value")),
        ),
        h("tbody", {}, headerRows),
      ),
    ),
    h("h2", {}, "Attempts"),
    attemptsArea,
  );
  drawAttempts(message.attempts);
  let shown = JSON.stringify(message.attempts);
  ctx.every(POLL_MS, async () => {
    const fresh = await api.message(id);
    if (!ctx.live()) return;
    stateValue.textContent = stateText(fresh);
    drawNext(fresh);
    const key = JSON.stringify(fresh.attempts);
    if (key !== shown) {
      shown = key;
      drawAttempts(fresh.attempts);
    }
  });
}
