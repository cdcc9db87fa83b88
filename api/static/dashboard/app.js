// The dashboard's entry point: the key form, the error banner and the routes (#/jobs, #/jobs/<id>).

import { api, ApiError, forgetKey, getKey, setKey } from "./api.js";
import { el } from "./dom.js";
import { renderJob, renderJobs } from "./views.js";

const view = document.getElementById("view");
const alertBox = document.getElementById("alert");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const keyState = document.getElementById("key-state");

const STATUS_TEXT = { 400: "Bad request", 401: "Not authorised", 403: "Forbidden", 404: "Not found",
  409: "Conflict", 429: "Too many requests", 500: "Server error", 503: "Unavailable" };

function showError(err) {
  const status = err instanceof ApiError ? err.status : 0;
  const title = status ? `${status} ${STATUS_TEXT[status] || "Error"}` : "Error";
  const code = err instanceof ApiError && err.code ? el("code", {}, err.code) : null;
  alertBox.replaceChildren(el("strong", {}, title), " ", el("span", { "data-field": "message" }, err.message), " ", code ?? "");
  alertBox.dataset.status = String(status);
  alertBox.hidden = false;
  if (status === 401) keyInput.focus();
}

function clearError() {
  alertBox.hidden = true;
  alertBox.replaceChildren();
  delete alertBox.dataset.status;
}

const ctx = { api, showError, clearError };

function showKeyState() {
  const key = getKey();
  keyState.textContent = key ? `key …${key.slice(-4)} in use (this tab only)` : "no key";
  keyInput.value = "";
}

function route() {
  const match = /^#\/jobs\/(.+)$/.exec(window.location.hash);
  if (match) return renderJob(view, ctx, decodeURIComponent(match[1]));
  return renderJobs(view, ctx);
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  setKey(key);
  showKeyState();
  route();
});

document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  showKeyState();
  clearError();
  view.replaceChildren(el("p", { class: "empty" }, "Key forgotten. Paste an API key to continue."));
});

window.addEventListener("hashchange", route);
showKeyState();
if (getKey()) route();
else view.replaceChildren(el("p", { class: "empty" }, "Paste an API key (sk-pt-…) above to see your organization's jobs."));
