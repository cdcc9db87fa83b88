// The JSON API as the dashboard uses it. The key lives in sessionStorage (this tab only) and is sent
// as "Authorization: Bearer"; it is never put in a URL.

const KEY_NAME = "privtune.apiKey";
const JOBS = "/v1/fine_tuning/jobs";

export function getKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
}

/** A failed call: the HTTP status (0: no response), and the API's message and code. */
export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

async function request(method, path, query = {}) {
  const key = getKey();
  if (!key) throw new ApiError(0, "Paste an API key above to see your jobs.", "no_api_key");
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query)) if (value !== null && value !== undefined) url.searchParams.set(name, value);
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, `The gateway could not be reached (${err.message}).`, "connection_error");
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    const message = error.message || `${response.status} ${response.statusText || "error"}`;
    throw new ApiError(response.status, message, error.code || null, error.param || null);
  }
  return body;
}

/** Every item of a cursor-paged list, newest first (follows has_more / last_id). */
async function all(path, limit = 100, maxPages = 1000) {
  const items = [];
  let after = null;
  for (let i = 0; i < maxPages; i++) {
    const page = await request("GET", path, { limit, after });
    items.push(...page.data);
    if (!page.has_more || !page.last_id) return items;
    after = page.last_id;
  }
  return items;
}

const jobPath = (id) => `${JOBS}/${encodeURIComponent(id)}`;

export const api = {
  listJobs: (after = null, limit = 20) => request("GET", JOBS, { limit, after }),
  getJob: (id) => request("GET", jobPath(id)),
  allEvents: (id) => all(`${jobPath(id)}/events`),
  allCheckpoints: (id) => all(`${jobPath(id)}/checkpoints`, 100),
  cancel: (id) => request("POST", `${jobPath(id)}/cancel`),
  pause: (id) => request("POST", `${jobPath(id)}/pause`),
  resume: (id) => request("POST", `${jobPath(id)}/resume`),
};
