// Modal confirmations with the native <dialog>: focus moves into it, Escape cancels, and focus
// returns to the control that opened it.

import { h } from "./dom.js";

/**
 * Ask for confirmation. `fields` are extra form rows (already labelled); `collect()` reads
 * them; `dismiss` names the button that declines (Cancel). Resolves with collect()'s value (or
 * true) when confirmed, null when declined.
 */
export function confirmDialog({
  title,
  body,
  confirm,
  dismiss = "Cancel",
  danger = false,
  fields = [],
  collect = null,
}) {
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const headingId = `dialog-${Math.random().toString(36).slice(2)}`;
    const cancel = h("button", { type: "button" }, dismiss);
    const ok = h("button", { type: "submit", class: danger ? "danger" : "primary" }, confirm);
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: headingId }, title),
      body ? h("p", {}, body) : null,
      fields,
      h("div", { class: "actions" }, ok, cancel),
    );
    const dialog = h("dialog", { "aria-labelledby": headingId }, form);
    let result = null;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      result = collect ? collect() : true;
      dialog.close();
    });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && typeof opener.focus === "function" && opener.isConnected) opener.focus();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
    const first = form.querySelector("input, select, textarea");
    (first || cancel).focus();
  });
}
