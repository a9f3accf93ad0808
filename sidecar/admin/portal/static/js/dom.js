// Building the page from DOM nodes only: text always goes in as text (never as HTML), so
// whatever came from a client or a receiver cannot become markup or script.

/**
 * h("button", {type: "button", onclick: fn}, "Save") → an element.
 * Attributes: `class`, `for`, aria-*, data-*, boolean ones (true/false), `on<event>` handlers.
 * Children: strings (as text), nodes, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else if (name === "checked" || name === "selected" || name === "disabled") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** A page heading that takes focus when a view opens (one h1 per view). */
export function title(text) {
  return h("h1", { tabindex: "-1", id: "view-title" }, text);
}

let uid = 0;
export function nextId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A labelled form field: returns {row, input}. */
export function field(label, control, hint) {
  const id = control.id || nextId("f");
  control.id = id;
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  const row = h("div", { class: "field" }, h("label", { for: id }, label), hintEl, control);
  return { row, input: control };
}

/** A wide table in a focusable scroll region (usable by keyboard on narrow screens). */
export function tableRegion(label, table) {
  return h(
    "div",
    { class: "table-scroll", role: "region", "aria-label": label, tabindex: "0" },
    table,
  );
}

/** Preformatted text in a focusable (scrollable by keyboard) region named `label`. */
export function pre(text, label) {
  return h("pre", { tabindex: "0", role: "region", "aria-label": label }, h("code", {}, text));
}
