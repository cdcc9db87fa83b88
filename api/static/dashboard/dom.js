// Small DOM helpers. Every string from the API goes through text nodes or attributes set one by one:
// nothing is parsed as HTML (no HTML-string property or method is used anywhere in the dashboard).

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: el("td", {class: "num"}, "text", otherNode). */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element (same signature as el). */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** Unix seconds as "2026-12-02 14:07:31 UTC" (or an em dash). */
export function formatTime(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

/** A number for people: 4 significant digits, thousands separated, exponent form when very large or small. */
export function formatNumber(x) {
  if (x === null || x === undefined) return "—";
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e9 || a < 1e-3)) return x.toExponential(3).replace(/\.?0+e/, "e");
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  return Number(x.toPrecision(4)).toLocaleString("en-US", { maximumFractionDigits: 6 });
}

/** A rate in [0, 1] as a percentage ("3.1%"). */
export function formatPercent(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "—";
  return `${(100 * x).toFixed(1)}%`;
}

/** Any JSON value as text (objects compactly). */
export function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return formatNumber(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "string") return value === "" ? "(empty)" : value;
  if (Array.isArray(value) && value.every((v) => typeof v !== "object" || v === null))
    return value.length ? value.map(formatValue).join(", ") : "(none)";
  return JSON.stringify(value);
}

/** A definition list of [label, value, attrs] rows; a value may be a Node or any JSON value. */
export function facts(rows, attrs = {}) {
  const dl = el("dl", { class: "facts", ...attrs });
  for (const [label, value, extra] of rows) {
    if (value === undefined) continue;
    dl.append(el("dt", {}, label), el("dd", extra || {}, value instanceof Node ? value : formatValue(value)));
  }
  return dl;
}

/** A nested JSON object as nested definition lists (for records whose shape may grow). */
export function tree(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return el("span", {}, formatValue(value));
  const dl = el("dl", { class: "facts tree" });
  for (const [key, child] of Object.entries(value)) {
    const nested = child !== null && typeof child === "object" && !Array.isArray(child);
    dl.append(el("dt", {}, key), el("dd", {}, nested ? tree(child) : formatValue(child)));
  }
  return dl;
}

/** A table: columns [{label, class}], rows of cells (Node or value). */
export function table(columns, rows, attrs = {}) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.class, scope: "col" }, c.label)));
  const body = rows.map((cells) =>
    el("tr", cells.attrs || {}, cells.map((cell, i) =>
      el("td", { class: columns[i].class }, cell instanceof Node ? cell : formatValue(cell)))),
  );
  return el("table", attrs, el("thead", {}, head), el("tbody", {}, body));
}

export function badge(status) {
  return el("span", { class: `badge status-${String(status).replace(/[^a-z_]/g, "")}`, "data-field": "status" }, status);
}
