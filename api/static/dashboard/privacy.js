// The job's privacy: what the device declared (method.privtune.privacy), its record (the mechanism's
// statement and the accounting per text) and its on-device audit (the measured attack success).

import { el, facts, formatNumber, formatPercent, formatValue, table, tree } from "./dom.js";

const KEY_PARAMS = ["eta", "metric", "view_noise", "noise_multiplier", "sensitivity", "clip_norm",
  "importance_score", "importance_to_scale", "noise_floor", "top_fraction", "w_min", "w_max"];

function figure(label, value, testid, note) {
  return el("div", { class: "figure", "data-testid": testid },
    el("div", { class: "figure-label" }, label),
    el("div", { class: "figure-value", "data-field": "value" }, value),
    note ? el("div", { class: "figure-note" }, note) : null);
}

function declared(privacy) {
  const params = Object.entries(privacy).filter(([k]) => !["mechanism", "record", "audit"].includes(k));
  const main = params.filter(([k]) => KEY_PARAMS.includes(k));
  const rest = params.filter(([k]) => !KEY_PARAMS.includes(k));
  return el("section", { class: "panel", "data-testid": "declared-privacy" },
    el("h3", {}, "Declared mechanism"),
    facts([["mechanism", el("code", { "data-testid": "mechanism" }, privacy.mechanism ?? "none")], ...main]),
    rest.length ? el("details", {}, el("summary", {}, `All ${params.length} declared parameters`), facts(rest)) : null);
}

function accountingPanel(accounting) {
  if (!accounting) return el("section", { class: "panel" }, el("h3", {}, "Accounting per text"),
    el("p", { class: "empty" }, "The device sent no accounting for this job."));
  const token = accounting.per_token_one_view;
  const views = accounting.views || {};
  const labels = accounting.labels;
  return el("section", { class: "panel", "data-testid": "accounting" },
    el("h3", {}, "Accounting per text"),
    facts([
      ["bound per text", accounting.epsilon_per_text === null ? "none (no noise)" : accounting.epsilon_per_text,
        { "data-testid": "epsilon-per-text" }],
      ["bound kind", token ? token.kind : undefined],
      ["per token, one view", token ? `${formatNumber(token.most_noised)} (most noised) to ${formatNumber(token.least_noised)} (least noised)` : undefined],
      ["views", `training ${formatValue(views.training ?? 0)}, validation ${formatValue(views.validation ?? 0)}, inference ${formatValue(views.inference ?? 0)}`],
      ["views per text (most)", accounting.views_total],
      ["views charged", accounting.views_charged],
      ["composition", accounting.composition ?? undefined],
      ["tokens per text (mean)", accounting.tokens_per_text],
      ["labels", labels ? `randomised response, ε ${formatNumber(labels.randomised_response_epsilon)} (true label kept with p = ${formatNumber(labels.keep_probability)})`
        : labels === null ? "not protected" : undefined],
    ]),
    accounting.notes && accounting.notes.length
      ? el("ul", { class: "notes", "data-testid": "accounting-notes" }, accounting.notes.map((n) => el("li", {}, n))) : null);
}

function auditPanel(audit) {
  if (!audit) return el("section", { class: "panel", "data-testid": "audit" }, el("h3", {}, "On-device audit"),
    el("p", { class: "empty" }, "No audit was run for this job (the device set no target ASR)."));
  const rows = (audit.audited || []).map((p) => Object.assign([p.eta, formatPercent(p.max_asr)],
    { attrs: p.eta === audit.chosen_eta ? { class: "chosen" } : {} }));
  return el("section", { class: "panel", "data-testid": "audit" },
    el("h3", {}, "On-device audit"),
    facts([
      ["measured ASR", formatPercent(audit.measured_asr), { "data-testid": "audit-asr" }],
      ["target ASR", formatPercent(audit.target_asr)],
      ["chosen eta", audit.chosen_eta],
    ]),
    rows.length ? table([{ label: "eta", class: "num" }, { label: "strongest attack ASR", class: "num" }], rows,
      { class: "compact", "data-testid": "audit-table" }) : null);
}

function recordPanel(record) {
  if (!record) return null;
  return el("section", { class: "panel" },
    el("h3", {}, "Mechanism record"),
    facts([["guarantee", tree(record.guarantee)], ["fitted state", record.state ? tree(record.state) : undefined]]));
}

/** The privacy section of a job (``job.method.privtune.privacy``). */
export function privacySection(job) {
  const privtune = (job.method && job.method.privtune) || null;
  const section = el("section", { class: "block", "data-testid": "privacy" }, el("h2", {}, "Privacy"));
  if (!privtune || !privtune.privacy) {
    section.append(el("p", { class: "empty" }, "This job declares no PrivTune privacy settings."));
    return section;
  }
  const privacy = privtune.privacy;
  const record = privacy.record || null;
  const audit = privacy.audit || null;
  const accounting = record ? record.accounting : null;
  const mechanism = privacy.mechanism ?? "none";
  section.append(el("div", { class: "figures" },
    figure("Mechanism", mechanism, "figure-mechanism"),
    figure("eta", formatNumber(privacy.eta ?? null), "figure-eta", audit ? "chosen by the on-device audit" : "declared"),
    figure("Measured ASR", audit ? formatPercent(audit.measured_asr) : "not audited", "figure-asr",
      audit ? `strongest token attack; target ≤ ${formatPercent(audit.target_asr)}` : null),
    figure("Bound per text", accounting && accounting.epsilon_per_text !== null && accounting.epsilon_per_text !== undefined
      ? formatNumber(accounting.epsilon_per_text) : "—", "figure-epsilon", "worst case; see the notes"),
  ));
  if (mechanism === "none") {
    section.append(el("p", { class: "warning" }, "No noise is added: this is plain split learning, not private fine-tuning."));
  }
  section.append(el("div", { class: "panels" }, declared(privacy), auditPanel(audit), accountingPanel(accounting), recordPanel(record)));
  return section;
}
