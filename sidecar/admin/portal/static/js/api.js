// The one module that talks to the admin API: the session header, JSON in and out, and
// problem+json answers turned into ApiError (shown to the user as title and detail).
// Every operation the page uses is listed in `api` below, as `call(METHOD, "/path")`; the test
// suite checks each against the OpenAPI document.

const TOKEN_KEY = "sidecar.portal.session";
const API_ROOT = new URL("api", new URL(".", window.location.href)).href;

export class ApiError extends Error {
  constructor(status, problem) {
    const title = problem?.title || (status ? `HTTP ${status}` : "Network error");
    const detail = problem?.detail || "";
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.errors = Array.isArray(problem?.errors) ? problem.errors : [];
    this.reason = problem?.reason || null;
  }
}

let unauthorizedHandler = null;

/** Called when a request made with a session answers 401 (the session ended). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export const session = {
  get token() {
    return window.sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    window.sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    window.sessionStorage.removeItem(TOKEN_KEY);
  },
};

async function call(method, template, params = {}, { body, query } = {}) {
  const path = template.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(params[name]));
  const url = new URL(API_ROOT + path);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json, application/problem+json" };
  const token = session.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    });
  } catch {
    throw new ApiError(0, {
      title: "Network error",
      detail: "The sidecar did not answer; try again.",
    });
  }
  if (response.status === 204) return null;
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && token && unauthorizedHandler) unauthorizedHandler(error);
    throw error;
  }
  return data;
}

export const api = {
  signIn: (credential) => call("POST", "/sign-in", {}, { body: { credential } }),
  me: () => call("GET", "/me"),
  revokeSession: (id) => call("DELETE", "/portal-sessions/{id}", { id }),
  eventTypes: () => call("GET", "/event-types"),
  subscriptions: () => call("GET", "/subscriptions"),
  subscription: (id) => call("GET", "/subscriptions/{id}", { id }),
  createSubscription: (body) => call("POST", "/subscriptions", {}, { body }),
  updateSubscription: (id, body) => call("PATCH", "/subscriptions/{id}", { id }, { body }),
  deleteSubscription: (id) => call("DELETE", "/subscriptions/{id}", { id }),
  rotateSecret: (id) => call("POST", "/subscriptions/{id}/rotate-secret", { id }),
  secret: (id) => call("GET", "/subscriptions/{id}/secret", { id }),
  stats: (id) => call("GET", "/subscriptions/{id}/stats", { id }),
  sendTest: (id, body) => call("POST", "/subscriptions/{id}/test", { id }, { body }),
  recover: (id, since) => call("POST", "/subscriptions/{id}/recover", { id }, { body: { since } }),
  redeliver: (id, messageId) =>
    call("POST", "/subscriptions/{id}/messages/{message_id}/redeliver", {
      id,
      message_id: messageId,
    }),
  messages: (query) => call("GET", "/messages", {}, { query }),
  message: (messageId) => call("GET", "/messages/{message_id}", { message_id: messageId }),
  operation: (id) => call("GET", "/operations/{correlation_id}", { correlation_id: id }),
  expungeOperation: (id) => call("DELETE", "/operations/{correlation_id}", { correlation_id: id }),
};
