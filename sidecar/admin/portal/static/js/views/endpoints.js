// Endpoints: the list, the Add endpoint form, and one endpoint's own view (its secret, tests,
// rotation, disable/enable, delete, recover, and its attempts).

import { ApiError, api } from "../api.js";
import { confirmDialog } from "../dialog.js";
import { append, clear, field, h, tableRegion, title } from "../dom.js";
import { json, localToIso, rate, toLocalInput, when } from "../format.js";
import { attemptsPanel } from "./messages.js";

const link = (href, text) => h("a", { href }, text);

function eventsText(events) {
  return events.includes("*") ? "All events" : events.join(", ");
}

export async function renderEndpoints(root, ctx) {
  const { subscriptions } = await api.subscriptions();
  if (!ctx.live()) return;
  clear(root);
  append(root, title("Endpoints"));
  append(
    root,
    h(
      "p",
      {},
      "The URLs that receive your webhooks. Each delivery is signed with the endpoint's secret.",
    ),
  );
  if (!ctx.readOnly) {
    const add = h("button", { type: "button", class: "primary" }, "Add endpoint");
    add.addEventListener("click", () => ctx.navigate("#/endpoints/new"));
    append(root, h("p", {}, add));
  }
  if (subscriptions.length === 0) {
    append(
      root,
      h(
        "div",
        { class: "empty" },
        h("p", {}, h("strong", {}, "No endpoints yet.")),
        h(
          "p",
          {},
          ctx.readOnly
            ? "Nothing is subscribed to webhooks yet. Someone with write access can add an endpoint."
            : "Add an endpoint with Add endpoint: give the URL that should receive your webhooks and pick the events to send it. Then send it a test event.",
        ),
      ),
    );
    return;
  }
  const rows = subscriptions.map((sub) => {
    const rateCell = h("td", {}, "…");
    api.stats(sub.id).then(
      (stats) => (rateCell.textContent = rate(stats)),
      () => (rateCell.textContent = "—"),
    );
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, link(`#/endpoints/${encodeURIComponent(sub.id)}`, sub.url)),
      h("td", {}, sub.description || "—"),
      h("td", {}, eventsText(sub.events)),
      h("td", {}, sub.enabled ? "Enabled" : "Disabled"),
      rateCell,
    );
  });
  const table = h(
    "table",
    {},
    h("caption", { class: "visually-hidden" }, "Your endpoints"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["URL", "Description", "Events", "Status", "Recent success rate"].map((c) =>
          h("th", { scope: "col" }, c),
        ),
      ),
    ),
    h("tbody", {}, rows),
  );
  append(root, tableRegion("Endpoints", table));
}

function eventsFieldset(types, selected = ["*"]) {
  const all = h("input", {
    type: "checkbox",
    id: "events-all",
    value: "*",
    checked: selected.includes("*"),
  });
  const boxes = types.map((t, i) =>
    h("input", {
      type: "checkbox",
      id: `event-${i}`,
      value: t.type,
      checked: selected.includes(t.type),
    }),
  );
  const sync = () => {
    for (const box of boxes) box.disabled = all.checked;
  };
  all.addEventListener("change", sync);
  sync();
  const fieldset = h(
    "fieldset",
    { class: "events" },
    h("legend", {}, "Events"),
    h("div", { class: "check" }, all, h("label", { for: all.id }, "All events")),
    types.map((t, i) =>
      h(
        "div",
        { class: "check" },
        boxes[i],
        h("label", { for: boxes[i].id }, h("code", {}, t.type)),
        t.description ? h("span", { class: "hint" }, ` ${t.description}`) : null,
      ),
    ),
  );
  const value = () => (all.checked ? ["*"] : boxes.filter((b) => b.checked).map((b) => b.value));
  return { fieldset, value, focus: () => all.focus() };
}

function secretBox(label, secret) {
  const input = h("input", {
    type: "text",
    readonly: true,
    value: secret,
    class: "secret",
    spellcheck: "false",
  });
  const copied = h("span", { class: "hint", role: "status" });
  const copy = h("button", { type: "button" }, "Copy secret");
  copy.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(secret);
      copied.textContent = "Copied.";
    } catch {
      copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  const { row } = field(label, input);
  row.append(h("div", { class: "actions" }, copy, copied));
  return row;
}

/** The form of Add endpoint and Edit endpoint: URL, Description, Events. */
function endpointForm(ctx, types, { sub = null, submitLabel, onSubmit }) {
  const url = h("input", {
    type: "url",
    name: "url",
    required: true,
    maxlength: "2048",
    placeholder: "https://example.com/webhooks",
    value: sub ? sub.url : "",
  });
  const description = h("input", {
    type: "text",
    name: "description",
    maxlength: "1024",
    value: sub ? sub.description : "",
  });
  const events = eventsFieldset(types, sub ? sub.events : ["*"]);
  const errorBox = h("div", { class: "form-error" });
  const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
  const cancel = sub ? `#/endpoints/${encodeURIComponent(sub.id)}` : "#/endpoints";
  const form = h(
    "form",
    { class: "card", novalidate: true },
    field("URL", url, "http(s) URL that will receive a signed POST for each event.").row,
    field("Description", description, "Optional: what this endpoint is for.").row,
    events.fieldset,
    errorBox,
    h("div", { class: "actions" }, submit, link(cancel, "Cancel")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.replaceChildren();
    const chosen = events.value();
    if (!url.value.trim()) {
      append(errorBox, h("p", { role: "alert" }, "Enter the endpoint's URL."));
      url.focus();
      return;
    }
    if (chosen.length === 0) {
      append(errorBox, h("p", { role: "alert" }, "Pick at least one event, or All events."));
      events.focus();
      return;
    }
    submit.disabled = true;
    try {
      await onSubmit(
        { url: url.value.trim(), description: description.value, events: chosen },
        form,
      );
    } catch (error) {
      append(errorBox, ctx.problem(error));
      submit.disabled = false;
    }
  });
  return form;
}

export async function renderNewEndpoint(root, ctx) {
  const types = await ctx.catalog();
  if (!ctx.live()) return;
  clear(root);
  append(root, title("Add endpoint"));
  if (ctx.readOnly) {
    append(root, h("p", {}, "This session is read-only: it cannot add endpoints."));
    return;
  }
  const form = endpointForm(ctx, types, {
    submitLabel: "Create",
    async onSubmit(body) {
      const sub = await api.createSubscription(body);
      const heading = h("h2", { tabindex: "-1", id: "created-heading" }, "Endpoint created");
      form.replaceWith(
        h(
          "section",
          { class: "card", "aria-labelledby": "created-heading" },
          heading,
          h(
            "p",
            {},
            "Your receiver verifies each delivery with this signing secret. Copy it now; you can reveal it again from the endpoint's page.",
          ),
          secretBox("Signing secret", sub.secret),
          h(
            "p",
            {},
            link(`#/endpoints/${encodeURIComponent(sub.id)}`, "Open the endpoint"),
            " · ",
            link("#/endpoints", "Back to endpoints"),
          ),
        ),
      );
      heading.focus();
    },
  });
  append(root, form);
}

export async function renderEditEndpoint(root, ctx, id) {
  let sub;
  try {
    sub = await api.subscription(id);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      if (ctx.live()) notFound(root, id);
      return;
    }
    throw error;
  }
  const types = await ctx.catalog();
  if (!ctx.live()) return;
  clear(root);
  append(
    root,
    h(
      "p",
      { class: "crumbs" },
      link("#/endpoints", "Endpoints"),
      " / ",
      link(`#/endpoints/${encodeURIComponent(sub.id)}`, sub.url),
      " / edit",
    ),
  );
  append(root, title("Edit endpoint"));
  if (ctx.readOnly) {
    append(root, h("p", {}, "This session is read-only: it cannot change endpoints."));
    return;
  }
  append(
    root,
    endpointForm(ctx, types, {
      sub,
      submitLabel: "Save",
      async onSubmit(body) {
        await api.updateSubscription(sub.id, body);
        ctx.flash("Endpoint saved.");
        ctx.navigate(`#/endpoints/${encodeURIComponent(sub.id)}`);
      },
    }),
  );
}

function notFound(root, id) {
  clear(root);
  append(
    root,
    title("Endpoint not found"),
    h(
      "p",
      {},
      `There is no endpoint ${id} in your account. It may have been deleted, or the link may be wrong.`,
    ),
    h("p", {}, link("#/endpoints", "Back to endpoints")),
  );
}

export async function renderEndpoint(root, ctx, id) {
  let sub;
  try {
    sub = await api.subscription(id);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      if (ctx.live()) notFound(root, id);
      return;
    }
    throw error;
  }
  const types = await ctx.catalog();
  if (!ctx.live()) return;
  clear(root);
  const details = h("dl", { class: "details" });
  const secretArea = h("div", { class: "secret-area" });
  const panel = h("div", { class: "panel-area" });
  const rateValue = h("dd", {}, "…");
  const refreshStats = () =>
    api.stats(sub.id).then((stats) => {
      rateValue.textContent = rate(stats);
    });
  const fillDetails = () => {
    clear(details);
    const add = (term, value) =>
      append(details, h("dt", {}, term), value instanceof Node ? value : h("dd", {}, value));
    add("URL", h("dd", {}, h("code", {}, sub.url)));
    add("Description", sub.description || "—");
    add("Events", eventsText(sub.events));
    add(
      "Status",
      sub.enabled
        ? "Enabled"
        : sub.disabled_reason
          ? `Disabled: ${sub.disabled_reason}`
          : "Disabled",
    );
    if (sub.failing_since) add("Failing since", when(sub.failing_since));
    add("Created", when(sub.created_at));
    add("Recent success rate", rateValue);
    add("Endpoint id", h("dd", {}, h("code", {}, sub.id)));
  };
  fillDetails();
  refreshStats().catch(() => (rateValue.textContent = "—"));

  append(
    root,
    h("p", { class: "crumbs" }, link("#/endpoints", "Endpoints"), " / endpoint"),
    title(sub.url),
    details,
  );

  if (!ctx.readOnly) {
    const revealButton = h("button", { type: "button", "aria-expanded": "false" }, "Reveal secret");
    revealButton.addEventListener("click", async () => {
      if (revealButton.getAttribute("aria-expanded") === "true") {
        clear(secretArea);
        revealButton.textContent = "Reveal secret";
        revealButton.setAttribute("aria-expanded", "false");
        return;
      }
      try {
        const secret = await api.secret(sub.id);
        clear(secretArea);
        append(secretArea, secretBox("Signing secret", secret.secret));
        if (secret.previous_secret) {
          append(
            secretArea,
            h(
              "p",
              { class: "hint" },
              `The previous secret keeps signing beside it until ${when(secret.previous_secret_valid_until)}.`,
            ),
          );
        }
        revealButton.textContent = "Hide secret";
        revealButton.setAttribute("aria-expanded", "true");
      } catch (error) {
        clear(secretArea);
        append(secretArea, ctx.problem(error));
      }
    });

    const testButton = h("button", { type: "button", "aria-expanded": "false" }, "Send test event");
    testButton.addEventListener("click", () => openTestForm(ctx, sub, types, panel, testButton));

    const rotateButton = h("button", { type: "button" }, "Rotate secret");
    rotateButton.addEventListener("click", async () => {
      const ok = await confirmDialog({
        title: "Rotate the signing secret?",
        body: "A new secret signs every delivery from now on. The current one keeps signing beside it for 24 hours, so your receiver can switch at its own pace.",
        confirm: "Rotate secret",
      });
      if (!ok) return;
      try {
        const rotated = await api.rotateSecret(sub.id);
        clear(secretArea);
        append(
          secretArea,
          h("p", { role: "status" }, "Secret rotated."),
          secretBox("New signing secret", rotated.secret),
          h(
            "p",
            { class: "hint" },
            `The previous secret keeps signing until ${when(rotated.previous_secret_valid_until)}.`,
          ),
        );
        revealButton.textContent = "Hide secret";
        revealButton.setAttribute("aria-expanded", "true");
        secretArea.querySelector("input").focus();
      } catch (error) {
        clear(secretArea);
        append(secretArea, ctx.problem(error));
      }
    });

    const toggleButton = h("button", { type: "button" }, sub.enabled ? "Disable" : "Enable");
    toggleButton.addEventListener("click", async () => {
      try {
        sub = await api.updateSubscription(sub.id, { enabled: !sub.enabled });
        toggleButton.textContent = sub.enabled ? "Disable" : "Enable";
        fillDetails();
        ctx.notice(
          sub.enabled
            ? "Endpoint enabled."
            : "Endpoint disabled: nothing is delivered to it until you enable it.",
        );
        toggleButton.focus();
      } catch (error) {
        ctx.notice(error.message);
      }
    });

    const recoverButton = h("button", { type: "button" }, "Recover");
    recoverButton.addEventListener("click", async () => {
      const since = h("input", {
        type: "datetime-local",
        required: true,
        value: toLocalInput(new Date(Date.now() - 24 * 3600 * 1000)),
      });
      const chosen = await confirmDialog({
        title: "Recover failed messages",
        body: "Redeliver every message to this endpoint whose delivery failed for good (every retry used up) since the time you choose. Messages still waiting for a scheduled retry are left alone: they keep their schedule, and each message shows when its next retry is due.",
        confirm: "Recover",
        fields: [field("Since", since, "Your local time.").row],
        collect: () => localToIso(since.value),
      });
      if (!chosen) return;
      try {
        const result = await api.recover(sub.id, chosen);
        ctx.notice(
          result.count === 0
            ? `No failed messages since ${when(result.since)}. Messages waiting for a retry keep their schedule.`
            : `${result.count} failed message${result.count === 1 ? "" : "s"} queued for redelivery. Messages waiting for a retry keep their schedule.`,
        );
      } catch (error) {
        ctx.notice(error.message);
      }
    });

    const editButton = h("button", { type: "button" }, "Edit");
    editButton.addEventListener("click", () =>
      ctx.navigate(`#/endpoints/${encodeURIComponent(sub.id)}/edit`),
    );

    const deleteButton = h("button", { type: "button", class: "danger" }, "Delete");
    deleteButton.addEventListener("click", async () => {
      const ok = await confirmDialog({
        title: "Delete this endpoint?",
        body: `${sub.url} stops receiving webhooks at once, and its attempts log is deleted. This cannot be undone.`,
        confirm: "Delete",
        danger: true,
      });
      if (!ok) return;
      try {
        await api.deleteSubscription(sub.id);
        ctx.flash("Endpoint deleted.");
        ctx.navigate("#/endpoints");
      } catch (error) {
        ctx.notice(error.message);
      }
    });

    append(
      root,
      h(
        "div",
        { class: "toolbar", role: "group", "aria-label": "Endpoint actions" },
        editButton,
        revealButton,
        testButton,
        rotateButton,
        toggleButton,
        recoverButton,
        deleteButton,
      ),
      secretArea,
      panel,
    );
  }

  append(
    root,
    attemptsPanel(ctx, { subscription: sub.id, heading: "Attempts", level: "h2", types }),
  );
  ctx.every(5000, refreshStats);
}

function openTestForm(ctx, sub, types, panel, button) {
  if (button.getAttribute("aria-expanded") === "true") {
    clear(panel);
    button.setAttribute("aria-expanded", "false");
    return;
  }
  const preferred =
    types.find((t) => sub.events.includes(t.type)) ||
    types.find((t) => t.type === "webhook.test") ||
    types[0];
  const select = h(
    "select",
    { name: "type" },
    types.map((t) => h("option", { value: t.type, selected: t === preferred }, t.type)),
  );
  const data = h("textarea", { name: "data", rows: "10", spellcheck: "false", class: "code" });
  const prefill = () => {
    const chosen = types.find((t) => t.type === select.value);
    data.value = json(chosen?.example ? chosen.example.data : {});
  };
  prefill();
  select.addEventListener("change", prefill);
  const errorBox = h("div", { class: "form-error" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const form = h(
    "form",
    { class: "card", novalidate: true, "aria-labelledby": "test-heading" },
    h("h2", { id: "test-heading" }, "Send test event"),
    h("p", {}, "A signed message goes to this endpoint now, whatever events it subscribes to."),
    field("Event type", select).row,
    field(
      "Payload data",
      data,
      "The data member of the payload: JSON, prefilled with the event type's example.",
    ).row,
    errorBox,
    h("div", { class: "actions" }, send),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.replaceChildren();
    let parsed;
    try {
      parsed = JSON.parse(data.value || "{}");
    } catch (error) {
      append(
        errorBox,
        h("p", { role: "alert" }, `Payload data is not valid JSON: ${error.message}`),
      );
      data.focus();
      return;
    }
    send.disabled = true;
    try {
      const queued = await api.sendTest(sub.id, { type: select.value, data: parsed });
      append(
        errorBox,
        h(
          "p",
          { role: "status" },
          `Test event queued as ${queued.message_id}. Its attempt appears under Attempts below.`,
        ),
      );
    } catch (error) {
      append(errorBox, ctx.problem(error));
    } finally {
      send.disabled = false;
    }
  });
  clear(panel);
  append(panel, form);
  button.setAttribute("aria-expanded", "true");
  select.focus();
}
