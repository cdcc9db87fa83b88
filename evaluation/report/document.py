"""The results document: the setting sections, the method text, and the hand-written notes kept verbatim.

Promises: ``render(rows, out)`` writes ``out`` (Markdown; plots as PNG files beside it or in
``plots_dir``) and returns its text; the same rows and notes give the same document. Rows are
grouped by setting (``queries.setting_of``), rendered in order of their first row. A block between
``<!-- notes:start -->`` and ``<!-- notes:end -->`` in an existing ``out`` is kept verbatim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from evaluation.report.paper import headline_table, paper_table
from evaluation.report.plots import plot_eta, plot_privacy_utility
from evaluation.report.queries import NOISE_MECHANISMS, config_setting, setting_of
from evaluation.report.seeds import seeds_table
from evaluation.report.splits import confidence_table, exposure_table, token_split_table, views_table
from evaluation.report.tables import (
    ablation_table,
    attribute_table,
    eta_table,
    hops_table,
    markdown_table,
    split_table,
    variants_table,
)
from evaluation.rows import Machine, ResultRow

__all__ = ["METHOD_TEXT", "NOTES_END", "NOTES_START", "render", "setting_name"]

NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"

METHOD_TEXT = """\
**What one row is.** `evaluation.harness.run_experiment`: fit the device's `Privatizer` on the private
training texts, train through the service's own split code in one process (`DeviceTrainer` posting
the real wire payloads to the worker's `StepServer` -> `TopTrainer`, LoRA r=8 on the top blocks, which
return the pooled representation; the classification head is the device's own `ClassifierHead`,
trained there with the job's optimiser; every step privatizes its batch again: with the default
per-text noise each epoch re-sends the same view of a text, with `view_noise='fresh'` each epoch is
a new draw), then:

- **Top model**: as the service configures it: for mechanisms that add noise the top is noise-aware
  (each received state's precision is estimated from its norm and weights its attention key and its
  share of the pool, `worker.models.top.TopModel`); otherwise a plain mean pool. The "Variants"
  table shows `privtune` with a plain top.

- **UP**: test accuracy through the same perturbed path (private inference). "UP, unperturbed
  inference" is the same trained model fed unperturbed representations at test time (a diagnostic:
  how much of the loss is the noise at inference vs. a worse model).
- **noise/signal**: mean over real tokens of ||sent - clean|| / ||clean|| for what was actually sent.
- **What is attacked**: the server's view of `n_attack` private training texts from the final
  training steps, decoded from the wire payloads (perturbed hidden states in float16, attention
  mask, and the returned dL/d(representation) rows, computed by the device through its private head).
  The gradient attacks use the server's top model after training, which (learning rate decayed to
  ~0) is the model that produced those gradients. Since harness version 5 the attacks also get
  *every view* of those texts the server received: their rows in every earlier epoch and the
  `validation_views` (2: the SDK's job validates before and after training) and `inference_views`
  (0 in the grids) inference requests of them, sent by the device with the job's privatizer (with
  the default per-text noise each re-send is the same view; with `view_noise='fresh'` each is a new
  draw). Token ids, attributes, labels, the exposure truth (the positions the mechanism sent at its
  lowest noise level, when it has at least two levels) and the token class (content / function /
  punctuation, from the tokenizer) are used for scoring only.
- **Threat models** (`evaluation/attacks`): *naive* = the paper's attacker (trains on CLEAN
  representations of public text); *adaptive* = Kerckhoffs' attacker (knows the mechanism, its
  parameters and fitted state; trains on public text passed through the same mechanism and models its
  deterministic part). With mechanism `none` the two coincide.
- **Attacks**: A0-opt (inversion by optimisation, on a subset of texts), A0-learned (linear
  discriminant token classifier), A1 (DLG-style gradient inversion, small subset), A1-label (k-means
  on the returned gradient rows with k = the number of labels, scored under the best one-to-one
  cluster-to-label matching: an upper bound that assumes the attacker can name the clusters), A2
  (nearest split-layer prototype), A3 (attribute classifier on pooled h~), A4 (not applicable since
  the head moved to the device: shadow gradients need its weights), A5 (k-means). "Strongest token ASR" is
  the maximum over the token attacks (A0-opt, A0-learned, A0-bayes, A0-multiview, A0-context, A1, A2, those
  that ran) for that threat model; the split tables show that attack's ASR on the exposed / buried
  tokens and per token class.
- **Chance**: the rate of a majority guesser on the same items (the most frequent token / label /
  attribute). **Undefended**: the same attack on mechanism `none` (the "None" rows).

**Data** (`evaluation/data.py`, read from `--data-dir` / `PRIVTUNE_EVAL_DATA`, never copied):
`vader-movie` = VADER's Rotten Tomatoes snippets, the SST-2 stand-in (binary; the domain is constant,
so attribute attacks do not apply); `vader-mixed` = movie + tweet + amazon, private attribute = domain
(balanced, chance ~1/3); `multiemo` = 4-class, private attribute = domain incl. medicine. The
victim's private texts and the attacker's public texts are disjoint parts of the `train` split (each
attribute value divided between them); utility uses the fixed `test` split.

**eta axis.** `dchi`, `dchi_importance` and `privtune` use the project default metric l1 (Laplace per
coordinate, scale Delta/eta, Delta = 2C, C = median ||h||): noise/signal ~ 57/eta on minilm-l6.
With the default importance map, `privtune` and `dchi_importance` send the top 8% of token
occurrences (by label information) at scale Delta/(16 eta) and the rest at Delta/(0.25 eta), so at
eta 10 (the default) most tokens carry the noise of `dchi` at eta 2.5 and the top ones that of `dchi`
at eta 160.
`gaussian` at "eta" means noise_multiplier = sqrt(2)/eta, the same per-coordinate std. The paper's
eta (Llama-3, its own normalisation) is not the same unit: compare trends, and compare operating
points by ASR and utility drop, not by eta.
"""


def setting_name(row: ResultRow) -> str:
    """A short file-name-safe name of a row's setting, e.g. ``quick-n1024-e2``."""
    c = row.config
    return f"{c.attack_budget}-n{c.n_train}-e{c.epochs}-s{c.seed}"


def _setting_lines(rows: list[ResultRow], plots_dir: Path, doc_dir: Path) -> list[str]:
    c = rows[0].config
    name = setting_name(rows[0])
    total = sum(r.timing.total_s for r in rows)
    median = sorted(r.timing.total_s for r in rows)[len(rows) // 2]
    lines = [
        f"## Setting `{name}`",
        "",
        f"model `{c.model}`; {c.n_train} private training texts, {c.epochs} epochs, batch {c.batch_size}, "
        f"learning rate {c.learning_rate:g}, LoRA r={c.lora_r}, max {c.max_length} tokens; {c.n_public} public "
        f"texts; {c.n_test} test texts; {c.n_attack} attacked texts; attack budget `{c.attack_budget}`; seed "
        f"{c.seed}. {len(rows)} experiments, {total / 60:.1f} min of compute in all "
        f"(median {median:.0f} s per experiment).",
        "",
        "ASR cells are **naive / adaptive** in percent. UP drop = undefended accuracy minus this accuracy. "
        f"One seed: an accuracy near 80% on {c.n_test} test texts has a binomial standard error of "
        f"{100 * math.sqrt(0.8 * 0.2 / max(c.n_test, 1)):.1f} points, so drops smaller than about twice that "
        "are noise.",
        "",
        *_coverage(rows),
    ]
    datasets = sorted({r.config.dataset for r in rows})
    if "vader-movie" in datasets:
        lines += _movie_lines(rows, "vader-movie", name, plots_dir, doc_dir)
    for ds in datasets:
        if ds == "vader-movie":
            continue
        table = attribute_table(rows, ds)
        if table and any(r.data is None or r.data.private_attributes for r in rows if r.config.dataset == ds):
            lines += [f"### Attribute inference on `{ds}` (private attribute: domain), l=3", "", *table, ""]
        elif table:
            lines += [f"### Token and label attacks on `{ds}`, l=3", "", *table, ""]
    for ds in datasets:
        lines += _split_lines(rows, ds)
    lines += ["### Time per experiment", ""]
    header = ["experiment", "dataset", "fit s", "train s", "eval s", "attacks s", "total s"]
    body = []
    for r in rows:
        t = r.timing
        seconds = [0 if s is None else s for s in (t.fit_s, t.train_s, t.eval_s, t.attack_s, t.total_s)]
        body.append([r.label, r.config.dataset, *(f"{s:.0f}" for s in seconds)])
    return lines + markdown_table(header, body) + [""]


def _movie_lines(rows: list[ResultRow], ds: str, name: str, plots_dir: Path, doc_dir: Path) -> list[str]:
    """The vader-movie sections: headline, plots, Table III per mechanism, the paper, Tables IV / V, variants."""
    lines = ["### Headline check (vader-movie, l=3): the paper reports ASR 10% at a 3.33-point UP drop", ""]
    lines += headline_table(rows, ds) + [""]
    for kind, plot in (("privacy_utility", plot_privacy_utility), ("eta", plot_eta)):
        path = plot(rows, ds, plots_dir / f"{kind}_{name}.png", f"{ds}, minilm-l6, l=3, setting {name}")
        if path is not None:
            rel = path.relative_to(doc_dir) if path.is_relative_to(doc_dir) else path
            lines += [f"![{kind} {name}]({rel.as_posix()})", ""]
    for mechanism in NOISE_MECHANISMS:
        table = eta_table(rows, mechanism, ds)
        if table:
            lines += [f"### Table III shape: `{mechanism}` per eta (vader-movie, l=3)", "", *table, ""]
    lines += ["### The paper's Table III next to ours (trend only: different model, data and eta unit)", ""]
    lines += paper_table(rows, ds) + [""]
    eta = _ref_eta()
    for title, table in (
        (f"Table IV shape: split depth (privtune, eta {eta:g})", split_table(rows, ds, "privtune", eta)),
        (f"Table V shape: OPT-3 hop count (privtune, eta {eta:g})", hops_table(rows, ds, eta)),
        (f"Table V shape: mechanism ablation (eta {eta:g})", ablation_table(rows, ds, eta)),
        ("Variants: non-default options next to the default (vader-movie, l=3)", variants_table(rows, ds)),
    ):
        if table:
            lines += ["### " + title, "", *table, ""]
    return lines


def _split_lines(rows: list[ResultRow], ds: str) -> list[str]:
    """The best-response figures of ``ds``: splits by exposure and class, views, exposure reading,
    confident precision (each only when some row reports it)."""
    lines: list[str] = []
    for title, table in (
        (f"Token attacks by exposure and token class (`{ds}`)", token_split_table(rows, ds)),
        (f"Token ASR against the number of views of a text (`{ds}`)", views_table(rows, ds)),
        (f"Reading which tokens were exposed (`{ds}`)", exposure_table(rows, ds)),
        (f"Attacker precision on the tokens it is confident about (`{ds}`)", confidence_table(rows, ds)),
    ):
        if table:
            lines += ["### " + title, "", *table, ""]
    return lines


def _seed_lines(rows: list[ResultRow]) -> list[str]:
    """The section over seeds (configs run with several seeds), empty when there is none."""
    table = seeds_table(rows)
    if not table:
        return []
    return [
        "## Over seeds",
        "",
        "Configurations run with several seeds (rows that differ only in `seed`: the data split, the noise, "
        "the initialisation and the batch order all change with it). Cells are the mean ± the half-width of "
        "the two-sided 95% Student-t interval over the seeds (sample standard deviation, n - 1 degrees of "
        "freedom; with n = 3 the t quantile is 4.30, so the interval is wide), with the interval in brackets. "
        "The UP drop is paired: per seed, the undefended row of that seed minus this row.",
        "",
        *table,
        "",
    ]


def _coverage(rows: list[ResultRow]) -> list[str]:
    """A line saying how much of the matching quick / full grid these rows cover (empty if neither)."""
    from evaluation.sweep import grid

    for quick, name in ((True, "quick"), (False, "full")):
        configs = [c for c in grid(quick=quick) if config_setting(c) == setting_of(rows[0])]  # this seed's
        if not configs:
            continue
        done = {r.key for r in rows}
        missing = [c for c in configs if c.key() not in done]
        line = f"These rows cover {len(configs) - len(missing)} of the {len(configs)} configs of the {name} grid."
        if missing:
            line += " Not (yet) run: " + ", ".join(f"{c.dataset} {c.label()}" for c in missing) + "."
        return [line, ""]
    return []


def _ref_eta() -> float:
    from evaluation.sweep import ETA_REF

    return ETA_REF


def _kept_notes(out: Path) -> str:
    if not out.exists():
        return f"{NOTES_START}\n(hand-written analysis goes here; kept when the report is regenerated)\n{NOTES_END}"
    text = out.read_text(encoding="utf-8")
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start < 0 or end < start:
        return f"{NOTES_START}\n{NOTES_END}"
    return text[start : end + len(NOTES_END)]


def _machine_line(rows: list[ResultRow]) -> str:
    machines: dict[str, Machine] = {}
    for r in rows:
        m = r.machine or Machine()
        machines[json.dumps(m.to_dict(), sort_keys=True)] = m
    described = [
        f"{m.cpu} ({m.nproc} cores, {m.torch_threads} torch threads, torch {m.torch})"
        for _, m in sorted(machines.items())
    ]
    return "Machine(s): " + "; ".join(described)


def render(rows: list[ResultRow], out: Path, plots_dir: Path | None = None, sources: Sequence[str] = ()) -> str:
    """Write the results document for ``rows`` to ``out`` (plots as PNG files in ``plots_dir``, default
    ``out``'s folder); returns the Markdown. Settings are rendered in order of their first row."""
    plots_dir = plots_dir or out.parent
    groups: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        groups.setdefault(setting_of(r), []).append(r)
    dates = sorted(r.finished_at or "" for r in rows)
    lines = [
        "# Privacy-utility results",
        "",
        f"Generated by `python -m evaluation.report {' '.join(sources)}` from {len(rows)} experiment rows "
        f"finished between {dates[0][:16] if dates else '?'} and {dates[-1][:16] if dates else '?'} (UTC).",
        _machine_line(rows),
        "",
        "Reproduce: `privtune eval --quick --report` (reduced grid, < 20 min on 2 CPU cores) or "
        "`privtune eval --report` (the full grid; hours; resumable: re-run the same command; `--shard 0/2` and "
        "`--shard 1/2` run it in two processes; it includes the `headline` rows over seeds 0-2 and the `medicine` "
        "setting, also runnable alone: `privtune eval --grids headline,medicine`); the `defaults` setting: "
        "`privtune eval --grids defaults`. The "
        "rows behind this page are kept in `docs/results/` (continue the full grid with "
        "`privtune eval --out docs/results/full.jsonl`).",
        "",
        "## Analysis",
        "",
        _kept_notes(out),
        "",
        "## How these numbers were produced",
        "",
        METHOD_TEXT,
    ]
    lines += _seed_lines(rows)
    for group in groups.values():
        lines += _setting_lines(group, plots_dir, out.parent)
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text
