// The loss curve: an inline SVG line chart of the job's metrics events (train_loss against step), with
// the device's validation results as points (valid_loss on the loss axis, valid_accuracy on a 0-100%
// axis on the right). No library: a path, circles and a few ticks.

import { el, svg, formatNumber } from "./dom.js";

const W = 760, H = 280;
const M = { top: 16, right: 56, bottom: 36, left: 56 };

const finite = (x) => typeof x === "number" && Number.isFinite(x);

/** The series in ``events`` (newest first, as the API lists them): [{step, value}] sorted by step, one point
 * per step (the newest event wins: a step redone after a resume replaces the first report). */
export function metricSeries(events) {
  const ordered = [...events].reverse();
  const series = { train: new Map(), validLoss: new Map(), validAccuracy: new Map() };
  for (const event of ordered) {
    const data = event.type === "metrics" ? event.data : null;
    if (!data || !finite(data.step)) continue;
    if (finite(data.train_loss)) series.train.set(data.step, data.train_loss);
    if (finite(data.valid_loss)) series.validLoss.set(data.step, data.valid_loss);
    if (finite(data.valid_accuracy)) series.validAccuracy.set(data.step, data.valid_accuracy);
  }
  const points = (map) => [...map].map(([step, value]) => ({ step, value })).sort((a, b) => a.step - b.step);
  return { train: points(series.train), validLoss: points(series.validLoss), validAccuracy: points(series.validAccuracy) };
}

/** About ``count`` round tick values from at or below ``lo`` to at or above ``hi``. */
function ticks(lo, hi, count = 5) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  const out = [];
  for (let i = first; i <= last; i++) out.push(Number((i * step).toPrecision(12)));
  return out;
}

function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (x) => r0 + ((x - d0) / span) * (r1 - r0);
}

/** The chart for ``series`` (from metricSeries); a figure with the SVG and its legend. */
export function lossChart(series, totalSteps = null) {
  const { train, validLoss, validAccuracy } = series;
  if (!train.length && !validLoss.length && !validAccuracy.length) {
    return el("p", { class: "empty", "data-testid": "no-metrics" }, "No training metrics reported yet.");
  }
  const steps = [...train, ...validLoss, ...validAccuracy].map((p) => p.step);
  const losses = [...train, ...validLoss].map((p) => p.value);
  const xMax = Math.max(...steps, finite(totalSteps) ? totalSteps : 0);
  const xTicks = ticks(0, xMax);
  // the loss axis spans the data (padded), not 0..max: a flattening curve stays readable
  const [lossLo, lossHi] = losses.length ? [Math.min(...losses), Math.max(...losses)] : [0, 1];
  const pad = (lossHi - lossLo) * 0.05 || Math.abs(lossHi) * 0.05 || 0.05;
  const lossTicks = ticks(Math.max(lossLo >= 0 ? 0 : -Infinity, lossLo - pad), lossHi + pad, 5);
  const x = scale(0, xTicks[xTicks.length - 1], M.left, W - M.right);
  const y = scale(lossTicks[0], lossTicks[lossTicks.length - 1], H - M.bottom, M.top);
  const yAcc = scale(0, 1, H - M.bottom, M.top);

  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-testid": "loss-chart",
    "aria-label": `Training loss over ${train.length} reported steps`,
  });
  const grid = svg("g", { class: "grid" });
  for (const t of lossTicks) {
    grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: y(t), y2: y(t) }));
    grid.append(svg("text", { x: M.left - 8, y: y(t) + 4, "text-anchor": "end" }, formatNumber(t)));
  }
  for (const t of xTicks) {
    grid.append(svg("line", { x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom, class: "v" }));
    grid.append(svg("text", { x: x(t), y: H - M.bottom + 18, "text-anchor": "middle" }, formatNumber(t)));
  }
  grid.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, "step"));
  grid.append(svg("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "axis-label",
    transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, "loss"));
  if (validAccuracy.length) {
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      grid.append(svg("text", { x: W - M.right + 8, y: yAcc(t) + 4, class: "acc" }, `${t * 100}%`));
    }
  }
  root.append(grid);

  if (train.length) {
    const d = train.map((p, i) => `${i ? "L" : "M"}${x(p.step).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, class: "train", "data-series": "train_loss", "data-points": train.length }));
  }
  const marks = svg("g", { class: "marks" });
  for (const p of validLoss) {
    marks.append(svg("circle", { cx: x(p.step), cy: y(p.value), r: 4.5, class: "valid-loss", "data-series": "valid_loss" },
      svg("title", {}, `step ${p.step}: validation loss ${formatNumber(p.value)}`)));
  }
  for (const p of validAccuracy) {
    marks.append(svg("rect", { x: x(p.step) - 4, y: yAcc(p.value) - 4, width: 8, height: 8, class: "valid-acc",
      "data-series": "valid_accuracy" }, svg("title", {}, `step ${p.step}: validation accuracy ${(100 * p.value).toFixed(1)}%`)));
  }
  root.append(marks);

  const legend = el("ul", { class: "legend" },
    train.length ? el("li", { class: "train" }, `training loss (device running mean), ${train.length} points`) : null,
    validLoss.length ? el("li", { class: "valid-loss" }, `validation loss, ${validLoss.length} points`) : null,
    validAccuracy.length ? el("li", { class: "valid-acc" }, `validation accuracy (right axis), ${validAccuracy.length} points`) : null,
  );
  return el("figure", { class: "chart-figure" }, root, legend);
}
