// The API client of the console: every data call sends the key in X-API-Key, or rides
// on the signed-in person's session (its cookie is HttpOnly: this script never sees it)
// with the session's CSRF token in X-CSRF-Token.
// The key lives in sessionStorage (this tab only), never in a URL the server sees twice.

const STORE = "safecity.apiKey";

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

// `?key=` is accepted once (a link from `make run`), then dropped from the address bar
// and history so it is not bookmarked, shared or shown on screen.
export function takeKeyFromUrl() {
  const url = new URL(window.location.href);
  if (!url.searchParams.has("key")) return;
  const key = (url.searchParams.get("key") || "").trim();
  url.searchParams.delete("key");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  if (key) setKey(key);
}

export const getKey = () => window.sessionStorage.getItem(STORE) || "";
export const setKey = (key) => window.sessionStorage.setItem(STORE, key);
export const clearKey = () => window.sessionStorage.removeItem(STORE);

// The CSRF token of the signed-in session (kept in memory only).
let csrf = "";

function headers(accept) {
  const out = { Accept: accept };
  const key = getKey();
  if (key) out["X-API-Key"] = key;
  if (csrf) out["X-CSRF-Token"] = csrf;
  return out;
}

// Who is signed in (if anyone) and whether sign-in is offered; remembers the CSRF token.
export async function getSession() {
  const res = await fetch("/auth/session", { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!res.ok) return { sign_in: false, signed_in: false };
  const session = await res.json();
  csrf = session.csrf_token || "";
  return session;
}

// Ends the session; resolves to the provider's logout page, if it has one.
export async function signOut() {
  const res = await fetch("/auth/logout", { method: "POST", headers: headers("application/json"), cache: "no-store" });
  csrf = "";
  if (!res.ok) throw new ApiError(res.status, await detail(res));
  return (await res.json()).logout_url;
}

async function detail(res) {
  try {
    const body = await res.json();
    return body.detail || res.statusText;
  } catch {
    return res.statusText;
  }
}

async function check(res) {
  if (res.status === 401) throw new AuthError(await detail(res));
  if (!res.ok) throw new ApiError(res.status, await detail(res));
}

export async function getJson(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  const res = await fetch(url, { headers: headers("application/json"), cache: "no-store" });
  await check(res);
  return res.json();
}

export async function postJson(path, body = {}) {
  const res = await fetch(new URL(path, window.location.origin), {
    method: "POST",
    headers: { ...headers("application/json"), "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  await check(res);
  return res.json();
}

// Server-Sent Events over fetch(): EventSource cannot send the X-API-Key header.
// Resolves when the server ends the stream; rejects on errors and on abort.
export async function stream(path, onEvent, signal) {
  const res = await fetch(path, { headers: headers("text/event-stream"), cache: "no-store", signal });
  await check(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      dispatch(buffer.slice(0, cut), onEvent);
      buffer = buffer.slice(cut + 2);
    }
  }
}

function dispatch(frame, onEvent) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments: connected, keep-alive
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    let value = at < 0 ? "" : line.slice(at + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) onEvent(event, data.join("\n"));
}

// A file the API serves (a CSV export), as a Blob: a plain link could not send the key.
export async function getBlob(path, params = {}, accept = "text/csv") {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, String(value));
  const res = await fetch(url, { headers: headers(accept), cache: "no-store" });
  await check(res);
  const disposition = res.headers.get("Content-Disposition") || "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] || "download";
  return { blob: await res.blob(), name };
}
