// Shared helpers for the BioVL pages: the lab token, same-origin API calls, formatting.
// The token comes from the URL fragment (#token=...) or the sign-in form, lives in
// sessionStorage for this tab, and is only ever sent to this page's own origin, in the
// Authorization header: what cannot send headers (<video>, <track>, downloads) uses the
// short-lived signed links the API returns with each job.

const TOKEN_KEY = "biovl.token";

/** Take #token=... out of the address bar (and history) into sessionStorage. */
export function captureTokenFromFragment() {
  const hash = window.location.hash.replace(/^#/, "");
  if (!hash) return;
  const params = new URLSearchParams(hash);
  const token = params.get("token");
  if (!token) return;
  setToken(token);
  params.delete("token");
  const rest = params.toString();
  const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
  window.history.replaceState(null, "", url);
}

export function getToken() {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token.trim());
    else window.sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives only as long as the page */
  }
}

/** Resolve `path` against this origin; refuse anything that would leave it. */
export function sameOriginUrl(path) {
  const url = new URL(path, window.location.origin);
  if (url.origin !== window.location.origin) {
    throw new Error(`refusing to contact another origin: ${url.origin}`);
  }
  return url;
}

/** Path + query of a same-origin URL, e.g. a signed media link (the lab token never goes in a URL). */
export function sameOriginPath(path) {
  const url = sameOriginUrl(path);
  return url.pathname + url.search;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Read a FastAPI-style error body ({"detail": ...}) into one line. */
export function errorText(status, body) {
  let detail = body;
  try {
    const parsed = JSON.parse(body);
    detail = parsed.detail ?? parsed.error ?? parsed.message ?? body;
  } catch {
    /* not JSON */
  }
  if (Array.isArray(detail)) {
    detail = detail.map((d) => (d && d.msg ? `${(d.loc || []).join(".")}: ${d.msg}` : JSON.stringify(d))).join("; ");
  } else if (typeof detail === "object" && detail !== null) {
    detail = JSON.stringify(detail);
  }
  const text = String(detail || "").trim();
  return text ? `HTTP ${status}: ${text}` : `HTTP ${status}`;
}

/** One line for a list that could not be loaded: a refused token said as such, else the error. */
export function loadFailureText(err, what) {
  return err instanceof ApiError && err.status === 401
    ? "The token was not accepted (HTTP 401): check it and sign in again."
    : `Could not load ${what}: ${err.message}`;
}

/** fetch() against this origin with the lab token; returns parsed JSON (or text). */
export async function api(path, options = {}) {
  const url = sameOriginUrl(path);
  const headers = new Headers(options.headers || {});
  const token = getToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  headers.set("Accept", headers.get("Accept") || "application/json");
  const response = await fetch(url, { ...options, headers, credentials: "same-origin", referrerPolicy: "no-referrer" });
  const body = await response.text();
  if (!response.ok) throw new ApiError(response.status, errorText(response.status, body));
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? JSON.parse(body) : body;
}

/** 75.3 -> "1:15.3"; 3723 -> "1:02:03". */
export function formatTime(seconds, digits = 1) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "–";
  const s = Math.max(0, Number(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  let sec = (s % 60).toFixed(digits);
  if (Number(sec) < 10) sec = `0${sec}`;
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export function formatDate(value) {
  if (value === null || value === undefined || value === "") return "–";
  const date = typeof value === "number" ? new Date(value * (value < 1e12 ? 1000 : 1)) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** Tiny element builder: h("a", {href: "/"}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const PENDING = new Set(["queued", "running", "pending", "retrying"]);

/** A status pill: <span class="status status-succeeded">succeeded</span>. */
export function statusBadge(status) {
  const s = String(status || "unknown");
  return h("span", { class: `status status-${s.replace(/[^a-z-]/gi, "")}` }, s);
}

/** Distinct, stable colour per step index (golden-angle hues). */
export function stepColor(index, lightness = 45) {
  return `hsl(${Math.round((index * 137.508) % 360)} 70% ${lightness}%)`;
}

/**
 * Wire a sign-in form (a text/password input + submit) to the token store.
 * `onChange` runs after the token changes.
 */
export function wireSignIn(form, onChange) {
  const input = form.querySelector("input");
  const state = form.querySelector("[data-signin-state]");
  const signOut = form.querySelector("[data-signout]");
  const render = () => {
    const signedIn = Boolean(getToken());
    if (state) state.textContent = signedIn ? "Signed in with a lab token (this tab only)." : "Not signed in.";
    if (signOut) signOut.hidden = !signedIn;
    input.value = "";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.value.trim()) {
      input.focus();
      return;
    }
    setToken(input.value);
    render();
    onChange();
  });
  if (signOut) {
    signOut.addEventListener("click", () => {
      setToken("");
      render();
      onChange();
    });
  }
  render();
}
