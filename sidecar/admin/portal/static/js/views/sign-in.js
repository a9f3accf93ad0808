// Sign in: a client's credential (the value it sends in its credential header on API calls),
// or the operator's admin token, exchanged for a session kept in this tab only.

import { ApiError, api, session } from "../api.js";
import { append, field, h } from "../dom.js";

export function renderSignIn(root, { message, onSignedIn, setTitle }) {
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
      "The credential your application sends on its API calls (for example Bearer key-…), or the operator's admin token.",
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
      await onSignedIn();
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
