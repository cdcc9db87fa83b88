// The two views: the jobs list and one job. Each takes the view element and a context
// {api, showError, clearError}, and draws only from what the API returned.

import { badge, el, facts, formatNumber, formatTime, formatValue, table } from "./dom.js";
import { lossChart, metricSeries } from "./chart.js";
import { privacySection } from "./privacy.js";

const PAUSABLE = ["validating_files", "queued", "running"];
const CANCELLABLE = ["validating_files", "queued", "running", "paused"];

const jobHref = (id) => `#/jobs/${encodeURIComponent(id)}`;

function progress(job) {
  const done = job.steps_completed ?? 0;
  const total = job.total_steps;
  const bar = total ? el("progress", { max: total, value: Math.min(done, total) }) : null;
  return el("span", { class: "steps" }, `${formatNumber(done)} / ${total ? formatNumber(total) : "?"}`, bar);
}

function jobRow(job) {
  return Object.assign([
    el("a", { href: jobHref(job.id), class: "mono" }, job.id),
    badge(job.status),
    job.model,
    formatTime(job.created_at),
    progress(job),
    job.fine_tuned_model ? el("span", { class: "mono" }, job.fine_tuned_model) : "—",
  ], { attrs: { "data-testid": "job-row", "data-job-id": job.id } });
}

const JOB_COLUMNS = [
  { label: "Job" }, { label: "Status" }, { label: "Model" }, { label: "Created" }, { label: "Steps" },
  { label: "Fine-tuned model" },
];

/** The organization's jobs, newest first, 20 at a time ("Load more" follows the cursor). */
export async function renderJobs(view, ctx) {
  const header = el("div", { class: "view-head" }, el("h1", {}, "Fine-tuning jobs"),
    el("button", { type: "button", class: "quiet", on: { click: () => renderJobs(view, ctx) } }, "Refresh"));
  view.replaceChildren(header, el("p", { class: "loading" }, "Loading jobs…"));
  let page;
  try {
    page = await ctx.api.listJobs();
  } catch (err) {
    ctx.showError(err);
    view.replaceChildren(header);
    return;
  }
  ctx.clearError();
  if (!page.data.length) {
    view.replaceChildren(header, el("p", { class: "empty" }, "No jobs yet. Jobs created with this key's organization appear here."));
    return;
  }
  const tbl = table(JOB_COLUMNS, page.data.map(jobRow), { "data-testid": "jobs-table", class: "jobs" });
  const tbody = tbl.querySelector("tbody");
  const more = el("button", { type: "button", "data-testid": "load-more" }, "Load more");
  let after = page.last_id;
  more.hidden = !page.has_more;
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const next = await ctx.api.listJobs(after);
      const rows = table(JOB_COLUMNS, next.data.map(jobRow)).querySelectorAll("tbody tr");
      tbody.append(...rows);
      after = next.last_id;
      more.hidden = !next.has_more;
      ctx.clearError();
    } catch (err) {
      ctx.showError(err);
    } finally {
      more.disabled = false;
    }
  });
  view.replaceChildren(header, tbl, el("div", { class: "more" }, more));
}

function actions(job, view, ctx) {
  const bar = el("div", { class: "actions" });
  const run = async (button, call) => {
    button.disabled = true;
    try {
      await call(job.id);
      await renderJob(view, ctx, job.id);
    } catch (err) {
      ctx.showError(err);
      button.disabled = false;
    }
  };
  bar.append(el("button", { type: "button", class: "quiet", on: { click: () => renderJob(view, ctx, job.id) } }, "Refresh"));
  if (job.status === "paused") {
    const resume = el("button", { type: "button", "data-testid": "resume" }, "Resume");
    resume.addEventListener("click", () => run(resume, ctx.api.resume));
    bar.append(resume);
  }
  if (PAUSABLE.includes(job.status)) {
    const pause = el("button", { type: "button", "data-testid": "pause" }, "Pause");
    pause.addEventListener("click", () => run(pause, ctx.api.pause));
    bar.append(pause);
  }
  if (CANCELLABLE.includes(job.status)) {
    const cancel = el("button", { type: "button", class: "danger", "data-testid": "cancel" }, "Cancel job…");
    cancel.addEventListener("click", () => {
      const confirm = el("button", { type: "button", class: "danger", "data-testid": "confirm-cancel" }, "Cancel for good");
      const keep = el("button", { type: "button", class: "quiet" }, "Keep it");
      const prompt = el("span", { class: "confirm" }, "Cancelling cannot be undone. ", confirm, keep);
      confirm.addEventListener("click", () => run(confirm, ctx.api.cancel));
      keep.addEventListener("click", () => prompt.replaceWith(cancel));
      cancel.replaceWith(prompt);
    });
    bar.append(cancel);
  }
  return bar;
}

function setupFacts(privtune, job) {
  if (!privtune) return facts([["method", job.method ? job.method.type : undefined], ["hyperparameters", job.hyperparameters]]);
  const lora = privtune.lora || {};
  const opt = privtune.optimizer || {};
  return facts([
    ["task", privtune.task], ["labels", privtune.num_labels ?? undefined],
    ["split layer", privtune.split_layer], ["device tail", privtune.tail_layers ?? undefined],
    ["batch / tokens", `${formatValue(privtune.batch_size)} × ${formatValue(privtune.max_tokens)}`],
    ["epochs", privtune.n_epochs],
    ["LoRA", `r ${formatValue(lora.r)}, alpha ${formatValue(lora.alpha)}, dropout ${formatValue(lora.dropout)}`],
    ["optimizer", `lr ${formatValue(opt.learning_rate)}, weight decay ${formatValue(opt.weight_decay)}, warm-up ${formatValue(opt.warmup_steps)}`],
    ["noise-aware top", privtune.noise_aware ?? undefined],
  ]);
}

function eventData(event) {
  if (!event.data) return "";
  return Object.entries(event.data).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${formatValue(v)}`).join("  ");
}

/** One job: summary, actions, loss curve, privacy, checkpoints and events (every page of them). */
export async function renderJob(view, ctx, id) {
  const back = el("a", { href: "#/jobs", class: "back" }, "← All jobs");
  if (!view.querySelector(`[data-job-id="${CSS.escape(id)}"]`)) {
    view.replaceChildren(back, el("p", { class: "loading" }, "Loading job…"));
  }
  let job, events, checkpoints;
  try {
    [job, events, checkpoints] = await Promise.all([ctx.api.getJob(id), ctx.api.allEvents(id), ctx.api.allCheckpoints(id)]);
  } catch (err) {
    ctx.showError(err);
    view.replaceChildren(back);
    return;
  }
  ctx.clearError();
  const privtune = (job.method && job.method.privtune) || null;
  const head = el("div", { class: "view-head", "data-job-id": job.id },
    el("h1", { class: "mono", "data-testid": "job-title" }, job.id), badge(job.status), actions(job, view, ctx));
  const summary = facts([
    ["model", job.model], ["created", formatTime(job.created_at)],
    ["finished", job.finished_at ? formatTime(job.finished_at) : undefined],
    ["steps", progress(job)],
    ["estimated finish", job.estimated_finish ? formatTime(job.estimated_finish) : undefined],
    ["fine-tuned model", job.fine_tuned_model ?? "—", { class: "mono" }],
    ["training file", job.training_file ?? undefined], ["seed", job.seed],
  ], { "data-testid": "job-summary" });
  const error = job.error ? el("p", { class: "job-error", "data-testid": "job-error" },
    `${job.error.code ? `${job.error.code}: ` : ""}${job.error.message}`) : null;
  const metadata = job.metadata && Object.keys(job.metadata).length
    ? el("section", { class: "panel" }, el("h3", {}, "Metadata"), facts(Object.entries(job.metadata), { "data-testid": "metadata" })) : null;

  const series = metricSeries(events);
  const curve = el("section", { class: "block" }, el("h2", {}, "Loss"), lossChart(series, job.total_steps));

  const ckptTable = checkpoints.length
    ? table([{ label: "Step", class: "num" }, { label: "Created" }, { label: "Checkpoint" }, { label: "Metrics" }],
      checkpoints.map((c) => [c.step_number, formatTime(c.created_at), el("span", { class: "mono" }, c.fine_tuned_model_checkpoint),
        Object.entries(c.metrics || {}).filter(([k, v]) => k !== "step" && v !== null).map(([k, v]) => `${k}=${formatValue(v)}`).join("  ")]),
      { "data-testid": "checkpoints-table" })
    : el("p", { class: "empty" }, "No checkpoints yet.");
  const eventTable = table([{ label: "Time" }, { label: "Level" }, { label: "Type" }, { label: "Message" }, { label: "Data" }],
    events.map((e) => Object.assign([formatTime(e.created_at), el("span", { class: `level level-${e.level === "error" || e.level === "warn" ? e.level : "info"}` }, e.level),
      e.type, e.message, el("span", { class: "data" }, eventData(e))], { attrs: { "data-testid": "event-row" } })),
    { "data-testid": "events-table", class: "events" });

  view.replaceChildren(back, head, error ?? "",
    el("div", { class: "panels two" }, el("section", { class: "panel" }, el("h3", {}, "Job"), summary),
      el("section", { class: "panel" }, el("h3", {}, "Setup"), setupFacts(privtune, job)), metadata),
    curve, privacySection(job),
    el("section", { class: "block" }, el("h2", {}, `Checkpoints (${checkpoints.length})`), ckptTable),
    el("section", { class: "block" }, el("h2", {}, `Events (${events.length}, newest first)`), el("div", { class: "scroll" }, eventTable)));
}
