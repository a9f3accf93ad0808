// The event-type catalog: every type the routes emit, what it means, an example payload.

import { append, clear, h, pre, title } from "../dom.js";
import { json } from "../format.js";

const SOURCE = {
  declared: "Example declared by the operator.",
  observed: "The shape of your last real payload of this type; its values are elided.",
  generic: "No payload of this type has been sent to you yet; its data depends on the call.",
};

export async function renderEventTypes(root, ctx) {
  const types = await ctx.catalog();
  if (!ctx.live()) return;
  clear(root);
  append(
    root,
    title("Event types"),
    h(
      "p",
      {},
      "Every event a webhook can carry. Subscribe an endpoint to some of them, or to all events.",
    ),
  );
  for (const t of types) {
    const where = t.route
      ? `Sent when a call to route ${t.route} ${t.outcome === "success" ? "succeeds" : "fails"}.`
      : "Sent only when you send a test event.";
    append(
      root,
      h(
        "section",
        { class: "card event-type", "aria-label": t.type },
        h("h2", {}, h("code", {}, t.type)),
        h("p", {}, t.description),
        h("p", { class: "hint" }, where),
        h("h3", {}, "Example payload"),
        pre(json(t.example), `Example payload of ${t.type}`),
        h("p", { class: "hint" }, SOURCE[t.example_source] || ""),
      ),
    );
  }
}
