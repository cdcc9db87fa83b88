"""Turn result rows (JSON lines from ``evaluation.sweep``) into ``docs/RESULTS.md`` tables and PNG plots.

    python -m evaluation.report results.jsonl [more.jsonl ...] --out docs/RESULTS.md

Tables follow the paper's shapes: III (ASR and utility per eta), IV (per split depth), V (per hop
count, and the mechanism ablation), plus the attribute attacks on the mixed-domain datasets. Every
ASR cell is "naive / adaptive" (both threat models, always), every table has a chance row and an
undefended row (the same attacks on mechanism ``none``). Rows are grouped by *setting* (data sizes,
epochs, attack budget, ...) so quick and full runs are never mixed in one table.

A block between ``<!-- notes:start -->`` and ``<!-- notes:end -->`` in an existing output file is
kept verbatim when the file is regenerated (hand-written analysis survives a re-run).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TOKEN_ATTACKS = ("A0-opt", "A0-learned", "A1", "A2")
LABEL_ATTACKS = ("A1-label",)
ATTRIBUTE_ATTACKS = ("A3", "A4", "A5")
THREATS = ("naive", "adaptive")
NOISE_MECHANISMS = ("dchi", "privtune", "gaussian", "dchi_importance")
ABLATION_ORDER = ("none", "gaussian", "dchi", "dchi_importance", "opt3", "opt3_importance", "privtune")
PAPER_TABLE_III = {  # Llama-3, SST, l=3 (method.md section 7): eta -> (ASR %, UP %); None = no noise
    10.0: (8.28, 89.81), 20.0: (21.03, 90.19), 30.0: (29.46, 91.21), 40.0: (41.18, 93.48),
    60.0: (45.79, 95.03), 80.0: (51.42, 95.74), None: (82.64, 96.27),
}  # fmt: skip
PAPER_HEADLINE = {"asr": 10.0, "up_drop": 3.33}
SETTING_FIELDS = ("model", "n_train", "n_public", "n_test", "n_attack", "epochs", "batch_size", "learning_rate",
                  "lora_r", "max_length", "seed", "attack_budget")  # fmt: skip
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"


# ---------------------------------------------------------------- reading rows


def load_rows(paths: Iterable[str | Path], version: int | None = None) -> list[dict[str, Any]]:
    """The finished result rows of the given JSONL files written by harness ``version`` (default: the
    current ``HARNESS_VERSION``; older rows are not comparable). Later rows with the same key win;
    unreadable lines are skipped."""
    from evaluation.harness import HARNESS_VERSION

    version = HARNESS_VERSION if version is None else version
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("status") == "ok" and row.get("harness_version") == version:
                rows[row["key"]] = row
    return list(rows.values())


def setting_of(row: dict[str, Any]) -> tuple:
    """The part of a row's config that must match for rows to share a table."""
    return tuple(row["config"].get(f) for f in SETTING_FIELDS)


def attack(row: dict[str, Any], name: str, threat: str) -> dict[str, Any] | None:
    """The row's entry for attack ``name`` under ``threat`` (None if absent or skipped)."""
    for entry in row.get("attacks", []):
        if entry["name"] == name and entry["threat_model"] == threat and entry.get("asr") is not None:
            return entry
    return None


def strongest(row: dict[str, Any], threat: str, names: Sequence[str] = TOKEN_ATTACKS) -> dict[str, Any] | None:
    """The entry with the highest ASR among ``names`` under ``threat`` (the strongest attacker)."""
    entries = [e for n in names if (e := attack(row, n, threat)) is not None]
    return max(entries, key=lambda e: e["asr"]) if entries else None


def pick(rows: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    """Rows whose config matches every ``field=value`` in ``where``. ``params={}`` asks for the default
    options, so it also excludes rows that set the top model's ``noise_aware`` explicitly (variants)."""
    out = [r for r in rows if all(r["config"].get(k) == v for k, v in where.items())]
    if where.get("params") == {}:
        out = [r for r in out if r["config"].get("noise_aware") is None]
    return out


def is_variant(row: dict[str, Any]) -> bool:
    """A row with non-default mechanism options or an explicit top-model choice."""
    return bool(row["config"].get("params")) or row["config"].get("noise_aware") is not None


def pct(x: float | None, digits: int = 1) -> str:
    """``x`` in percent, or "n/a"."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pair(row: dict[str, Any] | None, name: str | None) -> str:
    """ "naive / adaptive" ASR cell of ``row`` (``name`` None: the strongest token attack)."""
    if row is None:
        return "n/a"
    cells = []
    for threat in THREATS:
        entry = strongest(row, threat) if name is None else attack(row, name, threat)
        cells.append(pct(None if entry is None else entry["asr"]))
    return " / ".join(cells)


def chance_cell(row: dict[str, Any] | None, name: str | None) -> str:
    """The chance level of attack ``name`` (strongest: the largest chance among the token attacks)."""
    if row is None:
        return "n/a"
    names = TOKEN_ATTACKS if name is None else (name,)
    values = [e["chance"] for n in names if (e := attack(row, n, "naive")) is not None]
    return pct(max(values)) if values else "n/a"


def accuracy(row: dict[str, Any] | None) -> float | None:
    """Test accuracy through the perturbed path."""
    return None if row is None else row["utility"]["accuracy"]


# ---------------------------------------------------------------- tables


def _table(header: Sequence[str], body: list[Sequence[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _attack_names(rows: list[dict[str, Any]], names: Sequence[str]) -> list[str]:
    present = {e["name"] for r in rows for e in r.get("attacks", []) if e.get("asr") is not None}
    return [n for n in names if n in present]


def _utility_cells(row: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    if row is None:
        return ["n/a"] * 4
    acc, base_acc = accuracy(row), accuracy(base)
    drop = "n/a" if base_acc is None else f"{100 * (base_acc - acc):+.1f}"
    return [f"{row['noise']['ratio']:.2f}", pct(acc), drop, pct(row["utility"]["accuracy_unperturbed_inference"])]


def eta_table(rows: list[dict[str, Any]], mechanism: str, dataset: str, split_layer: int = 3) -> list[str]:
    """Table III shape for ``mechanism``: one row per eta, plus chance, no-noise and (privtune) OPT-3 rows."""
    same = pick(rows, dataset=dataset, split_layer=split_layer, hops=None, params={})
    points = sorted(pick(same, mechanism=mechanism), key=lambda r: r["config"]["eta"])
    if not points:
        return []
    base = next(iter(pick(same, mechanism="none")), None)
    names = _attack_names(same, TOKEN_ATTACKS + LABEL_ATTACKS)
    header = ["eta", "noise/signal", "UP acc %", "UP drop (pts)", "UP, unperturbed inference %",
              "strongest token ASR %", *[f"{n} ASR %" for n in names]]  # fmt: skip
    ref = base or points[0]
    body = [["chance", "", pct(ref["utility"]["chance"]), "", "", chance_cell(ref, None),
             *[chance_cell(ref, n) for n in names]]]  # fmt: skip
    for r in points:
        body.append([f"{r['config']['eta']:g}", *_utility_cells(r, base), pair(r, None), *[pair(r, n) for n in names]])
    if mechanism in ("privtune",):
        for opt in pick(same, mechanism="opt3"):
            body.append(["inf (opt3: shift only)", *_utility_cells(opt, base), pair(opt, None),
                         *[pair(opt, n) for n in names]])  # fmt: skip
    if base is not None:
        body.append(["None (no noise = undefended)", *_utility_cells(base, base), pair(base, None),
                     *[pair(base, n) for n in names]])  # fmt: skip
    return _table(header, body)


def split_table(rows: list[dict[str, Any]], dataset: str, mechanism: str, eta: float) -> list[str]:
    """Table IV shape: per split layer, undefended vs ``mechanism`` at ``eta``."""
    same = pick(rows, dataset=dataset, hops=None, params={})
    layers = sorted({r["config"]["split_layer"] for r in pick(same, mechanism=mechanism, eta=eta)})
    if len(layers) < 2:
        return []
    header = ["split layer l", "UP none %", f"UP {mechanism} %", "noise/signal", "strongest token ASR none %",
              f"strongest token ASR {mechanism} %", "A2 ASR none %", f"A2 ASR {mechanism} %", "chance (strongest) %"]  # fmt: skip
    body = []
    for layer in layers:
        base = next(iter(pick(same, mechanism="none", split_layer=layer)), None)
        row = next(iter(pick(same, mechanism=mechanism, eta=eta, split_layer=layer)), None)
        body.append([str(layer), pct(accuracy(base)), pct(accuracy(row)), f"{row['noise']['ratio']:.2f}",
                     pair(base, None), pair(row, None), pair(base, "A2"), pair(row, "A2"), chance_cell(row, None)])  # fmt: skip
    return _table(header, body)


def hops_table(rows: list[dict[str, Any]], dataset: str, eta: float) -> list[str]:
    """Table V shape (hop rows): privtune at ``eta`` per OPT-3 hop count (None = the default, 3)."""
    same = pick(rows, dataset=dataset, split_layer=3, mechanism="privtune", eta=eta, params={})
    if len({r["config"]["hops"] for r in same}) < 2:
        return []
    base = next(iter(pick(rows, dataset=dataset, split_layer=3, mechanism="none")), None)
    names = _attack_names(same, TOKEN_ATTACKS)
    header = ["hops n", "noise/signal", "UP acc %", "UP drop (pts)", "UP, unperturbed inference %",
              "strongest token ASR %", *[f"{n} ASR %" for n in names]]  # fmt: skip
    body = []
    for r in sorted(same, key=lambda r: r["config"]["hops"] or 3):
        hops = r["config"]["hops"]
        body.append([f"{hops or 3}" + ("" if hops else " (default)"), *_utility_cells(r, base), pair(r, None),
                     *[pair(r, n) for n in names]])  # fmt: skip
    body.append(["undefended (none)", *_utility_cells(base, base), pair(base, None), *[pair(base, n) for n in names]])
    return _table(header, body)


def ablation_table(rows: list[dict[str, Any]], dataset: str, eta: float) -> list[str]:
    """Table V shape (ablation): every mechanism at ``eta`` (noise-free mechanisms have no eta)."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, params={})
    chosen = []
    for m in ABLATION_ORDER:
        want = None if m in ("none", "opt3", "opt3_importance") else eta
        chosen += pick(same, mechanism=m, eta=want)
    if len(chosen) < 3:
        return []
    base = next(iter(pick(same, mechanism="none")), None)
    names = _attack_names(chosen, TOKEN_ATTACKS + LABEL_ATTACKS)
    header = ["mechanism", "noise/signal", "UP acc %", "UP drop (pts)", "UP, unperturbed inference %",
              "strongest token ASR %", *[f"{n} ASR %" for n in names]]  # fmt: skip
    body = [["chance", "", pct(base["utility"]["chance"]) if base else "n/a", "", "", chance_cell(base, None),
             *[chance_cell(base, n) for n in names]]]  # fmt: skip
    for r in chosen:
        label = r["config"]["mechanism"] + (f" (eta {eta:g})" if r["config"]["eta"] is not None else "")
        body.append([label, *_utility_cells(r, base), pair(r, None), *[pair(r, n) for n in names]])
    return _table(header, body)


def variants_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """Rows with non-default options (e.g. method.md's importance form, the plain top) next to the defaults."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None)
    variants = [r for r in same if is_variant(r)]
    if not variants:
        return []
    base = next(iter(pick(same, mechanism="none", params={})), None)
    defaults = {(r["config"]["mechanism"], r["config"]["eta"]): r for r in pick(same, params={})}
    chosen = []
    for r in sorted(variants, key=lambda r: (r["config"]["mechanism"], r["config"]["eta"] or 0, r["label"])):
        default = defaults.get((r["config"]["mechanism"], r["config"]["eta"]))
        if default is not None and default not in chosen:
            chosen.append(default)
        chosen.append(r)
    header = ["mechanism", "eta", "options (default if empty)", "noise/signal", "UP acc %", "UP drop (pts)",
              "UP, unperturbed inference %", "strongest token ASR %", "A0-learned ASR %", "A2 ASR %"]  # fmt: skip
    body = []
    for r in chosen:
        c = r["config"]
        options = [f"{k}={v}" for k, v in sorted(c["params"].items())]
        if c.get("noise_aware") is not None:
            options.append(f"noise_aware top={c['noise_aware']}")
        eta = "" if c["eta"] is None else f"{c['eta']:g}"
        body.append([c["mechanism"], eta, ", ".join(options), *_utility_cells(r, base), pair(r, None),
                     pair(r, "A0-learned"), pair(r, "A2")])  # fmt: skip
    return _table(header, body)


def attribute_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """Attribute attacks (A3/A4/A5, and A1-label) on a dataset with a private attribute."""
    same = sorted(pick(rows, dataset=dataset, split_layer=3, hops=None, params={}),
                  key=lambda r: (ABLATION_ORDER.index(r["config"]["mechanism"]), r["config"]["eta"] or 0))  # fmt: skip
    if not same:
        return []
    base = next(iter(pick(same, mechanism="none")), None)
    names = _attack_names(same, ATTRIBUTE_ATTACKS + LABEL_ATTACKS)
    header = ["mechanism", "eta", "noise/signal", "UP acc %", "UP drop (pts)", "strongest token ASR %",
              *[f"{n} ASR %" for n in names]]  # fmt: skip
    ref = base or same[0]
    body = [["chance", "", "", pct(ref["utility"]["chance"]), "", chance_cell(ref, None),
             *[chance_cell(ref, n) for n in names]]]  # fmt: skip
    for r in same:
        eta = "" if r["config"]["eta"] is None else f"{r['config']['eta']:g}"
        cells = _utility_cells(r, base)
        body.append([r["config"]["mechanism"], eta, cells[0], cells[1], cells[2], pair(r, None),
                     *[pair(r, n) for n in names]])  # fmt: skip
    return _table(header, body)


# ---------------------------------------------------------------- comparison with the paper


def operating_points(rows: list[dict[str, Any]], dataset: str, mechanism: str, threat: str) -> list[dict[str, Any]]:
    """(eta, accuracy, drop, strongest token ASR) per eta row of ``mechanism`` at l=3, default options."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, params={})
    base = next(iter(pick(same, mechanism="none")), None)
    if base is None:
        return []
    out = []
    for r in pick(same, mechanism=mechanism):
        entry = strongest(r, threat)
        if entry is None:
            continue
        out.append({"eta": r["config"]["eta"], "accuracy": accuracy(r), "drop": accuracy(base) - accuracy(r),
                    "asr": entry["asr"], "attack": entry["name"], "ratio": r["noise"]["ratio"]})  # fmt: skip
    return sorted(out, key=lambda p: (p["eta"] is None, p["eta"] or 0))


def headline_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """Per mechanism and threat model: the lowest ASR within the paper's 3.33-point utility drop, and
    the best utility at ASR <= 10% (the paper's headline: ASR 10% at a 3.33-point drop)."""
    header = ["mechanism", "threat model", "lowest strongest-token ASR % with UP drop <= 3.33 pts (eta, drop)",
              "best UP % with strongest-token ASR <= 10% (eta, drop)", "reaches the paper's headline?"]  # fmt: skip
    body = []
    for mechanism in (*NOISE_MECHANISMS, "opt3", "opt3_importance"):
        for threat in THREATS:
            points = operating_points(rows, dataset, mechanism, threat)
            if not points:
                continue
            eta = lambda p: "-" if p["eta"] is None else f"{p['eta']:g}"
            within = [p for p in points if p["drop"] <= PAPER_HEADLINE["up_drop"] / 100]
            private = [p for p in points if p["asr"] <= PAPER_HEADLINE["asr"] / 100]
            a = min(within, key=lambda p: p["asr"]) if within else None
            b = max(private, key=lambda p: p["accuracy"]) if private else None
            cell_a = (
                "none within the drop"
                if a is None
                else f"{pct(a['asr'])} ({a['attack']}; eta {eta(a)}, {100 * a['drop']:+.1f})"
            )
            cell_b = (
                "no point at ASR <= 10%"
                if b is None
                else f"{pct(b['accuracy'])} (eta {eta(b)}, {100 * b['drop']:+.1f})"
            )
            reached = b is not None and b["drop"] <= PAPER_HEADLINE["up_drop"] / 100
            body.append([mechanism, threat, cell_a, cell_b, "yes" if reached else "no"])
    return _table(header, body) if body else []


def paper_table(
    rows: list[dict[str, Any]], dataset: str, mechanisms: Sequence[str] = ("privtune", "dchi")
) -> list[str]:
    """The paper's Table III (Llama-3, SST) next to our rows at the same etas (trend comparison only)."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, params={})
    base = next(iter(pick(same, mechanism="none")), None)
    header = ["eta", "paper ASR %", "paper UP %"]
    for m in mechanisms:
        header += [f"{m} strongest ASR % (naive / adaptive)", f"{m} UP %"]
    body = []
    for eta, (asr, up) in PAPER_TABLE_III.items():
        cells = ["None" if eta is None else f"{eta:g}", f"{asr:.2f}", f"{up:.2f}"]
        for m in mechanisms:
            r = base if eta is None else next(iter(pick(same, mechanism=m, eta=eta)), None)
            cells += [pair(r, None), pct(accuracy(r))]
        body.append(cells)
    return _table(header, body)


# ---------------------------------------------------------------- plots


def _save(fig: Any, path: Path, title: str) -> Path:
    """Title, lay out and write ``fig`` as a PNG at ``path`` (folders created); closes it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_privacy_utility(rows: list[dict[str, Any]], dataset: str, path: Path, title: str) -> Path | None:
    """Utility against the strongest token ASR, one line per mechanism, one panel per threat model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same = pick(rows, dataset=dataset, split_layer=3, hops=None, params={})
    base = next(iter(pick(same, mechanism="none")), None)
    if base is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, threat in zip(axes, THREATS, strict=True):
        for mechanism in (*NOISE_MECHANISMS, "opt3", "opt3_importance"):
            points = operating_points(rows, dataset, mechanism, threat)
            if not points:
                continue
            xs, ys = [100 * p["asr"] for p in points], [100 * p["accuracy"] for p in points]
            ax.plot(xs, ys, "o-" if len(points) > 1 else "s", label=mechanism)
            for p, x, y in zip(points, xs, ys, strict=True):
                if p["eta"] is not None:
                    ax.annotate(f"{p['eta']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        entry = strongest(base, threat)
        if entry is not None:
            ax.plot([100 * entry["asr"]], [100 * accuracy(base)], "k*", markersize=14, label="none (undefended)")
        ax.axhline(100 * base["utility"]["chance"], color="grey", ls="--", lw=1, label="chance accuracy")
        ax.axhline(100 * accuracy(base) - PAPER_HEADLINE["up_drop"], color="green", ls=":", lw=1,
                   label="undefended - 3.33 pts")  # fmt: skip
        ax.axvline(PAPER_HEADLINE["asr"], color="red", ls=":", lw=1, label="ASR 10%")
        ax.axvspan(-2, PAPER_HEADLINE["asr"], ymin=0, ymax=1, color="green", alpha=0.06)
        ax.text(1, 100 * accuracy(base) - PAPER_HEADLINE["up_drop"] + 0.5, "paper's headline:\nASR <= 10%,\ndrop <= 3.33",
                fontsize=7, color="green", va="bottom")  # fmt: skip
        ax.set_title(f"{threat} attacker")
        ax.set_xlabel("strongest token-inversion ASR (%)  [numbers: eta]")
        ax.set_xlim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    return _save(fig, path, title)


def plot_eta(rows: list[dict[str, Any]], dataset: str, path: Path, title: str) -> Path | None:
    """ASR (both threat models) and utility against eta, with the paper's Table III for the trend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    etas = [e for e in PAPER_TABLE_III if e is not None]
    left.plot(etas, [PAPER_TABLE_III[e][0] for e in etas], "k--", lw=1, label="paper Table III (Llama-3, SST)")
    right.plot(etas, [PAPER_TABLE_III[e][1] for e in etas], "k--", lw=1, label="paper Table III (Llama-3, SST)")
    drawn = False
    for i, mechanism in enumerate(NOISE_MECHANISMS):
        color = f"C{i}"
        for threat, style in zip(THREATS, ("o-", "s:"), strict=True):
            points = [p for p in operating_points(rows, dataset, mechanism, threat) if p["eta"] is not None]
            if not points:
                continue
            drawn = True
            left.plot([p["eta"] for p in points], [100 * p["asr"] for p in points], style, color=color,
                      label=f"{mechanism}, {threat}")  # fmt: skip
            if threat == "naive":
                right.plot([p["eta"] for p in points], [100 * p["accuracy"] for p in points], "o-", color=color,
                           label=mechanism)  # fmt: skip
    if not drawn:
        plt.close(fig)
        return None
    base = next(iter(pick(rows, dataset=dataset, split_layer=3, mechanism="none")), None)
    if base is not None:
        entry = strongest(base, "naive")
        if entry is not None:
            left.axhline(100 * entry["asr"], color="black", lw=1, label="none (undefended)")
            left.axhline(100 * entry["chance"], color="grey", ls="--", lw=1, label="chance (majority token)")
        right.axhline(100 * accuracy(base), color="black", lw=1, label="none (undefended)")
        right.axhline(100 * base["utility"]["chance"], color="grey", ls="--", lw=1, label="chance")
    for ax, label in ((left, "strongest token-inversion ASR (%)"), (right, "test accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("eta (log scale; noise/signal ~ 57 / eta for l1 d_chi on minilm-l6)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, title)


# ---------------------------------------------------------------- the document

METHOD_TEXT = """\
**What one row is.** `evaluation.harness.run_experiment`: fit the device's `Privatizer` on the private
training texts, train through the service's own split code in one process (`DeviceTrainer` posting
the real wire payloads to the worker's `StepServer` -> `TopTrainer`, LoRA r=8 on the top blocks + a
pooled head; every step privatizes its batch again, so every epoch sees fresh noise), then:

- **Top model**: as the service configures it: for mechanisms that add noise the top is noise-aware
  (each received state's precision is estimated from its norm and weights its attention key and its
  share of the pool, `client_sdk.models.top.TopModel`); otherwise a plain mean pool. The "Variants"
  table shows `privtune` with a plain top.

- **UP**: test accuracy through the same perturbed path (private inference). "UP, unperturbed
  inference" is the same trained model fed unperturbed representations at test time (a diagnostic:
  how much of the loss is the noise at inference vs. a worse model).
- **noise/signal**: mean over real tokens of ||sent - clean|| / ||clean|| for what was actually sent.
- **What is attacked**: the server's view of `n_attack` private training texts from the final
  training steps, decoded from the wire payloads (perturbed hidden states in float16, attention
  mask, and the returned dL/d(logits) rows). The gradient attacks use the server's top model after
  training, which (learning rate decayed to ~0) is the model that produced those gradients. Token
  ids, attributes and labels are used for scoring only.
- **Threat models** (`evaluation/attacks`): *naive* = the paper's attacker (trains on CLEAN
  representations of public text); *adaptive* = Kerckhoffs' attacker (knows the mechanism, its
  parameters and fitted state; trains on public text passed through the same mechanism and models its
  deterministic part). With mechanism `none` the two coincide.
- **Attacks**: A0-opt (inversion by optimisation, on a subset of texts), A0-learned (linear
  discriminant token classifier), A1 (DLG-style gradient inversion, small subset), A1-label (label
  from the returned gradient row), A2 (nearest split-layer prototype), A3 (attribute classifier on
  pooled h~), A4 (attribute classifier on returned gradients), A5 (k-means). "Strongest token ASR" is
  the maximum over the token attacks (A0-opt, A0-learned, A1, A2) for that threat model.
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


def setting_name(row: dict[str, Any]) -> str:
    """A short file-name-safe name of a row's setting, e.g. ``quick-n1024-e2``."""
    c = row["config"]
    return f"{c['attack_budget']}-n{c['n_train']}-e{c['epochs']}-s{c['seed']}"


def _setting_lines(rows: list[dict[str, Any]], plots_dir: Path, doc_dir: Path) -> list[str]:
    c = rows[0]["config"]
    name = setting_name(rows[0])
    total = sum(r["timing"]["total_s"] for r in rows)
    lines = [
        f"## Setting `{name}`",
        "",
        f"model `{c['model']}`; {c['n_train']} private training texts, {c['epochs']} epochs, batch {c['batch_size']}, "
        f"learning rate {c['learning_rate']:g}, LoRA r={c['lora_r']}, max {c['max_length']} tokens; {c['n_public']} public "
        f"texts; {c['n_test']} test texts; {c['n_attack']} attacked texts; attack budget `{c['attack_budget']}`; seed "
        f"{c['seed']}. {len(rows)} experiments, {total / 60:.1f} min of compute in all "
        f"(median {sorted(r['timing']['total_s'] for r in rows)[len(rows) // 2]:.0f} s per experiment).",
        "",
        "ASR cells are **naive / adaptive** in percent. UP drop = undefended accuracy minus this accuracy. "
        f"One seed: an accuracy near 80% on {c['n_test']} test texts has a binomial standard error of "
        f"{100 * math.sqrt(0.8 * 0.2 / max(c['n_test'], 1)):.1f} points, so drops smaller than about twice that are noise.",
        "",
        *_coverage(rows),
    ]
    datasets = sorted({r["config"]["dataset"] for r in rows})
    if "vader-movie" in datasets:
        ds = "vader-movie"
        lines += ["### Headline check (vader-movie, l=3): the paper reports ASR 10% at a 3.33-point UP drop", ""]
        lines += headline_table(rows, ds) + [""]
        for kind, fn in (("privacy_utility", plot_privacy_utility), ("eta", plot_eta)):
            path = fn(rows, ds, plots_dir / f"{kind}_{name}.png", f"{ds}, minilm-l6, l=3, setting {name}")
            if path is not None:
                rel = path.relative_to(doc_dir) if path.is_relative_to(doc_dir) else path
                lines += [f"![{kind} {name}]({rel.as_posix()})", ""]
        for mechanism in NOISE_MECHANISMS:
            table = eta_table(rows, mechanism, ds)
            if table:
                lines += [f"### Table III shape: `{mechanism}` per eta (vader-movie, l=3)", "", *table, ""]
        lines += ["### The paper's Table III next to ours (trend only: different model, data and eta unit)", ""]
        lines += paper_table(rows, ds) + [""]
        for title, table in (
            ("Table IV shape: split depth (privtune, eta %g)", split_table(rows, ds, "privtune", _ref_eta(rows))),
            ("Table V shape: OPT-3 hop count (privtune, eta %g)", hops_table(rows, ds, _ref_eta(rows))),
            ("Table V shape: mechanism ablation (eta %g)", ablation_table(rows, ds, _ref_eta(rows))),
            ("Variants: non-default options next to the default (vader-movie, l=3)%s", variants_table(rows, ds)),
        ):
            if table:
                lines += ["### " + (title % _ref_eta(rows) if "%g" in title else title % ""), "", *table, ""]
    for ds in datasets:
        if ds == "vader-movie":
            continue
        table = attribute_table(rows, ds)
        if table:
            lines += [f"### Attribute inference on `{ds}` (private attribute: domain), l=3", "", *table, ""]
    lines += ["### Time per experiment", ""]
    lines += _table(
        ["experiment", "dataset", "fit s", "train s", "eval s", "attacks s", "total s"],
        [[r["label"], r["config"]["dataset"], *(f"{r['timing'].get(k, 0):.0f}" for k in
          ("fit_s", "train_s", "eval_s", "attack_s", "total_s"))] for r in rows],
    )  # fmt: skip
    return lines + [""]


def _coverage(rows: list[dict[str, Any]]) -> list[str]:
    """A line saying how much of the matching quick / full grid these rows cover (empty if neither)."""
    from evaluation.sweep import grid

    for quick, name in ((True, "quick"), (False, "full")):
        configs = grid(quick=quick)
        if setting_of({"config": configs[0].to_dict()}) != setting_of(rows[0]):
            continue
        done = {r["key"] for r in rows}
        missing = [c for c in configs if c.key() not in done]
        line = f"These rows cover {len(configs) - len(missing)} of the {len(configs)} configs of the {name} grid."
        if missing:
            line += " Not (yet) run: " + ", ".join(f"{c.dataset} {c.label()}" for c in missing) + "."
        return [line, ""]
    return []


def _ref_eta(rows: list[dict[str, Any]]) -> float:
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


def render(rows: list[dict[str, Any]], out: Path, plots_dir: Path | None = None, sources: Sequence[str] = ()) -> str:
    """Write the results document for ``rows`` to ``out`` (plots as PNG files in ``plots_dir``, default
    ``out``'s folder); returns the Markdown. Settings are rendered in order of their first row."""
    plots_dir = plots_dir or out.parent
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(setting_of(r), []).append(r)
    machines = {json.dumps(r.get("machine", {}), sort_keys=True) for r in rows}
    dates = sorted(r.get("finished_at", "") for r in rows)
    lines = [
        "# Privacy-utility results",
        "",
        f"Generated by `python -m evaluation.report {' '.join(sources)}` from {len(rows)} experiment rows "
        f"finished between {dates[0][:16] if dates else '?'} and {dates[-1][:16] if dates else '?'} (UTC).",
        "Machine(s): " + "; ".join(
            f"{m.get('cpu')} ({m.get('nproc')} cores, {m.get('torch_threads')} torch threads, torch {m.get('torch')})"
            for m in map(json.loads, sorted(machines))),
        "",
        "Reproduce: `privtune eval --quick --report` (reduced grid, ~15 min on 2 CPU cores) or "
        "`privtune eval --report` (the full grid; hours; resumable: re-run the same command; `--shard 0/2` and "
        "`--shard 1/2` run it in two processes); the `defaults` setting: `privtune eval --grids defaults`. The "
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
    ]  # fmt: skip
    for group in groups.values():
        lines += _setting_lines(group, plots_dir, out.parent)
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.report RESULTS.jsonl [...] [--out docs/RESULTS.md]``."""

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="JSONL files written by the sweep")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--plots-dir", type=Path, default=None, help="where the PNG plots go (default: --out's folder)")
    args = parser.parse_args(argv)
    rows = load_rows(args.results)
    if not rows:
        parser.error("no finished rows in " + ", ".join(args.results))
    render(rows, args.out, args.plots_dir, sources=args.results)
    print(f"wrote {args.out} from {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
