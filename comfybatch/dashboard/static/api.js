// @ts-check
// The API: one fetch wrapper (the key as a bearer token), its errors, and the key kept in this browser.

export const KEY_STORE = "comfybatch.apiKey";

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }

  /** Problems as `{field, row, column, message}`: 400 `problems`, 422 `detail` list, or the plain detail. */
  get problems() {
    const body = this.body || {};
    if (Array.isArray(body.problems) && body.problems.length) return body.problems;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => ({ field: fieldOf(d.loc), message: String(d.msg ?? d) }));
    }
    return [{ field: null, message: this.message }];
  }
}

function fieldOf(loc) {
  const parts = (Array.isArray(loc) ? loc : []).filter((part) => part !== "body");
  return parts.length ? parts.join(".") : null;
}

function describe(status, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${fieldOf(d.loc) ?? "request"}: ${d.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

export const apiKey = () => localStorage.getItem(KEY_STORE) || "";

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/**
 * One API call; JSON in and out unless `raw`. Throws ApiError (status 0 for network failures).
 * @param {string} method
 * @param {string} path
 * @param {{json?: unknown, body?: BodyInit, headers?: Record<string, string>, raw?: boolean}} [options]
 * @returns {Promise<any>} the parsed JSON, or the Response itself when `raw`
 */
export async function api(method, path, { json, body, headers, raw } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, null, `cannot reach the dashboard (${error.message})`);
  }
  if (!response.ok) {
    let detail = null;
    try {
      detail = await response.json();
    } catch {
      detail = null;
    }
    if (response.status === 401) askForKey(apiKey() ? "The saved API key was refused." : "This server needs an API key.");
    const error = new ApiError(response.status, detail, describe(response.status, detail));
    error.retryAfter = response.headers.get("Retry-After");
    throw error;
  }
  return raw ? response : response.json();
}

export function askForKey(reason) {
  const panel = document.getElementById("key-panel");
  document.getElementById("key-reason").textContent = reason;
  panel.hidden = false;
  document.getElementById("key-input").focus();
}

/** `#key=<key>` (the link `comfybatch up` prints): keep the key, then drop it from the address bar and history. */
export function takeKeyFromLink() {
  const match = location.hash.match(/^#key=([A-Za-z0-9_-]+)$/);
  if (!match) return;
  localStorage.setItem(KEY_STORE, match[1]);
  history.replaceState(null, "", location.pathname + location.search);
}
