// The portal's shell: signing in (a credential, or a portal link's #session=… fragment),
// the navigation, the router (one view per address, so every view can be bookmarked), notices,
// and the polling that keeps open views live.

import { ApiError, api, onUnauthorized, session } from "./api.js";
import { confirmDialog } from "./dialog.js";
import { append, clear, h } from "./dom.js";
import {
  renderEditEndpoint,
  renderEndpoint,
  renderEndpoints,
  renderNewEndpoint,
} from "./views/endpoints.js";
import { renderEventTypes } from "./views/event-types.js";
import { renderMessage, renderMessages } from "./views/messages.js";
import { renderOperation, renderOperations } from "./views/operations.js";
import { renderSignIn } from "./views/sign-in.js";
import { renderVerify } from "./views/verify.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const noticeEl = document.getElementById("notice");

const ROUTES = [
  [/^#\/endpoints\/new$/, renderNewEndpoint, "Add endpoint"],
  [/^#\/endpoints\/([^/]+)\/edit$/, renderEditEndpoint, "Edit endpoint"],
  [/^#\/endpoints\/([^/]+)$/, renderEndpoint, "Endpoint"],
  [/^#\/endpoints$/, renderEndpoints, "Endpoints"],
  [/^#\/messages\/([^/]+)$/, renderMessage, "Message"],
  [/^#\/messages$/, renderMessages, "Messages"],
  [/^#\/operations\/([^/]+)$/, renderOperation, "Operation"],
  [/^#\/operations$/, renderOperations, "Operations"],
  [/^#\/event-types$/, renderEventTypes, "Event types"],
  [/^#\/verify$/, renderVerify, "Verify a signature"],
];

let generation = 0;
let timers = [];
let flashed = null;
let catalog = null;

function stopTimers() {
  for (const timer of timers) window.clearInterval(timer);
  timers = [];
}

/** What a view gets: the caller, the catalog, notices, navigation and polling. */
function context(gen) {
  return {
    get me() {
      return state.me;
    },
    get readOnly() {
      return Boolean(state.me?.read_only);
    },
    get isOperator() {
      return Boolean(state.me && state.me.kind === "operator");
    },
    live: () => gen === generation,
    navigate(hash) {
      window.location.hash = hash;
    },
    notice,
    flash(text) {
      flashed = text;
    },
    problem,
    async catalog() {
      if (!catalog) catalog = (await api.eventTypes()).event_types;
      return catalog;
    },
    every(ms, fn) {
      const timer = window.setInterval(() => {
        if (gen !== generation || document.hidden) return;
        fn().catch((error) => {
          if (!(error instanceof ApiError)) throw error;
        });
      }, ms);
      timers.push(timer);
    },
    setTitle(text) {
      document.title = `${text} · sidecar portal`;
    },
  };
}

const state = { me: null };

/** A shown problem: its title and detail (and every listed problem), never a stack trace. */
export function problem(error) {
  const title = error instanceof ApiError ? error.title : "Something went wrong";
  const detail =
    error instanceof ApiError ? error.detail : String(error?.message ? error.message : error);
  const list =
    error instanceof ApiError && error.errors.length > 1
      ? h(
          "ul",
          {},
          error.errors.map((e) => h("li", {}, e)),
        )
      : null;
  return h(
    "div",
    { class: "problem", role: "alert" },
    h("strong", {}, title),
    detail ? ` ${detail}` : "",
    list,
  );
}

function notice(text) {
  clear(noticeEl);
  if (text) append(noticeEl, h("p", {}, text));
}

function sessionEndedMessage(error) {
  if (error && error.reason === "expired") return "Your session expired. Sign in again.";
  if (error && error.reason === "revoked") return "Your session was revoked. Sign in again.";
  if (error instanceof ApiError) return error.message;
  return null;
}

function showSignedOut(message) {
  stopTimers();
  generation += 1;
  state.me = null;
  catalog = null;
  session.clear();
  document.body.classList.remove("signed-in");
  nav.hidden = true;
  who.textContent = "";
  signOutButton.hidden = true;
  notice(null);
  clear(main);
  renderSignIn(main, { message, onSignedIn: signedIn, setTitle: context(generation).setTitle });
  const heading = main.querySelector("h1");
  if (heading) heading.focus();
}

async function signedIn(note = null) {
  try {
    state.me = await api.me();
  } catch (error) {
    showSignedOut(sessionEndedMessage(error));
    return;
  }
  if (note) flashed = note;
  document.body.classList.add("signed-in");
  nav.hidden = false;
  signOutButton.hidden = false;
  const tenant =
    state.me.kind === "operator" ? "the operator" : `client ${state.me.tenant.slice(0, 10)}…`;
  who.textContent = `Signed in as ${tenant}${state.me.read_only ? " (read-only)" : ""}`;
  if (!ROUTES.some(([pattern]) => pattern.test(window.location.hash))) {
    window.history.replaceState(null, "", "#/endpoints");
  }
  await route();
}

async function route() {
  if (!state.me) return;
  stopTimers();
  generation += 1;
  const gen = generation;
  const hash = window.location.hash;
  const found = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!found) {
    window.location.hash = "#/endpoints";
    return;
  }
  const [pattern, render, label] = found;
  const args = hash.match(pattern).slice(1).map(decodeURIComponent);
  for (const link of nav.querySelectorAll("a")) {
    const current =
      hash === link.getAttribute("href") || hash.startsWith(`${link.getAttribute("href")}/`);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  notice(flashed);
  flashed = null;
  clear(main);
  const ctx = context(gen);
  ctx.setTitle(label);
  append(main, h("p", { class: "loading" }, "Loading…"));
  try {
    await render(main, ctx, ...args);
  } catch (error) {
    if (gen !== generation) return;
    if (error instanceof ApiError && error.status === 401) return; // back at sign-in already
    clear(main);
    append(main, h("h1", { tabindex: "-1" }, "Something went wrong"), problem(error));
  }
  if (gen !== generation) return;
  const loading = main.querySelector(":scope > .loading");
  if (loading) loading.remove();
  const heading = main.querySelector("h1");
  if (heading) heading.focus({ preventScroll: false });
}

async function signOut() {
  try {
    if (state.me?.session) await api.revokeSession(state.me.session.id);
  } catch {
    // Signing out locally is what matters; the session expires by itself anyway.
  }
  showSignedOut("You signed out.");
}

/** A portal link's token, taken out of the address bar (and the history) at once; null. */
function takeTokenFromFragment() {
  const match = window.location.hash.match(/^#session=([A-Za-z0-9_-]+)/);
  if (!match) return null;
  window.history.replaceState(
    null,
    "",
    `${window.location.pathname}${window.location.search}#/endpoints`,
  );
  return match[1];
}

/** Sign in with a portal link's token. A live session in this tab is never replaced without
 * asking: a link someone else sent would otherwise sign this tab in as them. */
async function useLink(token) {
  const current = session.token;
  let me = null;
  if (current && current !== token) {
    try {
      me = await api.me();
    } catch {
      me = null; // the current session has ended: nothing to keep
    }
  }
  if (!me) {
    session.set(token);
    await signedIn();
    return;
  }
  if (!state.me) await signedIn(); // show who this tab is signed in as, behind the question
  const who = me.kind === "operator" ? "the operator" : `client ${me.tenant.slice(0, 10)}…`;
  const switchTo = await confirmDialog({
    title: "Open the portal link?",
    body: `This tab is signed in as ${who}. The link you opened signs in with another session, possibly of another account. Switch to it only if you asked for this link.`,
    confirm: "Switch to the link's session",
    dismiss: "Keep my session",
  });
  if (switchTo) {
    session.set(token);
    await signedIn("Signed in with the portal link.");
  } else {
    flashed = "You kept your session; the portal link was not used.";
    await route();
  }
}

onUnauthorized((error) => showSignedOut(sessionEndedMessage(error)));
signOutButton.addEventListener("click", signOut);
window.addEventListener("hashchange", () => {
  const linked = takeTokenFromFragment();
  if (linked) {
    useLink(linked);
    return;
  }
  route();
});

const linked = takeTokenFromFragment();
if (linked) useLink(linked);
else if (session.token) signedIn();
else showSignedOut(null);
