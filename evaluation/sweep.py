"""Grids of experiments, run resumably into a JSON-lines file (one row per finished experiment).

    from evaluation.sweep import ResultStore, Runner, grid
    runner = Runner(ResultStore("results.jsonl"), Resources(Path(".privtune/eval-cache")))
    runner.run_all(grid(quick=True))

Every row carries its config's ``key`` (a hash of the config and the harness version); a re-run
skips every config whose key is already in the file, so an interrupted sweep resumes where it
stopped. Before a defended experiment the runner makes sure the undefended baseline (the same
config with mechanism ``none``) has a row, and copies its ASRs into the defended row.

Grids (``grid(quick)`` concatenates them, shared configs run once; ``quick`` keeps only the eta grid
at three etas and the attribute check on privtune, so that it finishes in under 20 minutes on 2 CPU
cores (17-18 estimated with the best-response attacks at the quick attack budget, see
``evaluation.config.ATTACK_BUDGETS``); the other grids are full-sweep only):
    eta        quick: privtune at 5 / ETA_REF / 80, dchi at ETAS_QUICK; full: privtune, dchi and
               gaussian at ETAS_QUICK and ETA_REF (+ the ``none`` row = the paper's "None" column;
               ``opt3`` = privtune's eta -> infinity limit)
    ablation   all seven mechanisms at ETA_REF (Table V shape); full grid: and two variants of
               privtune, with method.md's importance form and with a plain (not noise-aware) top
    split      none and privtune at ETA_REF for split layers 3 / 4 / 5 (Table IV shape)
    hops       privtune at ETA_REF for hops 3 / 4 / 5 (Table V hop rows)
    attribute  vader-mixed and multiemo (domain attribute): none, dchi and privtune at two etas
    eta-fine   privtune and dchi at ETAS_FINE (full grid only: the paper's other etas and 5 / 320)
    eta-extra  gaussian and dchi_importance over the other etas (full grid only; last: the least informative)
    headline   the headline rows over seeds: every entry of HEADLINE_MECHANISMS (``none`` and the default
               ``privtune`` at ETA_REF; the list to extend with the best alternatives) on vader-movie,
               l=3, seeds HEADLINE_SEEDS (0, 1, 2; seed 0 is shared with the eta grid); the report's
               "Over seeds" table gives their means and 95% t-intervals
    medicine   ``multiemo-medicine`` (the victim's texts are multiemo's medicine reviews, the attacker's
               public texts the other domains', see ``evaluation.data``): ``none`` and ``privtune`` at
               ETA_REF

``grid(quick=True)`` without names leaves out the full-only defaults (FULL_ONLY_GRIDS: headline,
medicine), so ``privtune eval --quick`` stays within its budget; named explicitly
(``privtune eval --quick --grids headline``) they run on the quick base.

Not in the default list: ``defaults`` (``grid(names=["defaults"])``, ``privtune eval --grids defaults``),
the harness runs behind the shipped importance defaults (docs/PRIVACY.md), on their own smaller base
``DEFAULTS_BASE`` (2,000 texts, 3 epochs, 500 test texts, 128 attacked, quick attack budget).
``labels`` (``privtune eval --quick --grids labels``): ``none`` and ``privtune`` at ETA_REF only, the
two rows of the label attack's figure (both are also in the eta grid). ``choice``: the candidates for
the default (CHOICE_CANDIDATES: the paper-form default, per-text noise, noise floors 1 / 3 / 6, the
data-independent map, isotropic d_chi); ``label-dp``: the default with label DP at LABEL_EPSILONS.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from client_sdk.privacy.table import MECHANISMS  # method.md order: none, gaussian, dchi, ..., privtune
from evaluation.config import NOISELESS, ExperimentConfig
from evaluation.harness import Resources, run_experiment
from evaluation.rows import ResultRow

ETAS_QUICK = (5.0, 20.0, 80.0)  # isotropic noise/signal ~ 11, 2.8, 0.7: private / leaky / near-clean
ETA_REF = 10.0  # the shipped default eta (privtune is run at it as well as at ETAS_QUICK)
ETAS_FINE = (40.0, 2.5, 160.0, 30.0, 60.0)  # the full grid's other etas, in run order (tables sort)
ETAS_FULL = tuple(sorted({*ETAS_QUICK, ETA_REF, *ETAS_FINE}))
#: the same mechanism with method.md's reconstructed importance (eq. 21 log-ratio, w = 2 sigmoid(I^))
METHOD_MD_IMPORTANCE = (("importance_score", "log_ratio"), ("importance_to_scale", "sigmoid"))

FULL_BASE = ExperimentConfig(n_train=2000, n_public=1000, n_test=1000, n_attack=256, epochs=3, attack_budget="full")
QUICK_BASE = ExperimentConfig(n_train=1024, n_public=500, n_test=200, n_attack=64, epochs=1, attack_budget="quick")


#: the headline rows run over HEADLINE_SEEDS: (mechanism, eta, params); extend with the best alternatives
HEADLINE_MECHANISMS: tuple[tuple[str, float | None, tuple[tuple[str, object], ...]], ...] = (
    ("none", None, ()),
    ("privtune", ETA_REF, (("importance_score", "token_class"),)),  # the shipped default (DEFAULT_PARAMS)
    ("privtune", ETA_REF, (("importance_score", "information"), ("noise_floor", 0.0), ("view_noise", "fresh"))),
)
HEADLINE_SEEDS = (0, 1, 2)
#: grids of the default list that the quick grid leaves out unless they are named (its time budget)
FULL_ONLY_GRIDS = ("headline", "medicine")

DEFAULTS_BASE = ExperimentConfig(n_train=2000, n_public=1000, n_test=500, n_attack=128, epochs=3, attack_budget="quick")
_TOP10 = (("importance_to_scale", "top_fraction"), ("top_fraction", 0.1), ("w_min", 0.25))


def _noise(mechanism: str, eta: float | None) -> float | None:
    return None if mechanism in NOISELESS else eta


def grid(quick: bool = False, names: Iterable[str] | None = None) -> list[ExperimentConfig]:
    """The configs of the named grids (default: ``DEFAULT_GRIDS``) in run order, without duplicates."""
    base = QUICK_BASE if quick else FULL_BASE
    etas = ETAS_QUICK
    chosen = tuple(names or (g for g in DEFAULT_GRIDS if not (quick and g in FULL_ONLY_GRIDS)))
    unknown = set(chosen) - set(GRIDS)
    if unknown:
        raise ValueError(f"unknown grid(s) {sorted(unknown)}; known: {list(GRIDS)}")
    configs: list[ExperimentConfig] = []
    for name in chosen:
        configs += GRIDS[name](base, etas, quick)
    seen: set[str] = set()
    return [c for c in configs if not (c.key() in seen or seen.add(c.key()))]


def _eta_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    out = [replace(base, mechanism="none"), replace(base, mechanism="opt3")]
    for mechanism in ("privtune", "dchi") if quick else ("privtune", "dchi", "gaussian"):
        if not quick:  # every mechanism at ETAS_QUICK and the default
            mech_etas = tuple(sorted({*etas, ETA_REF}))
        else:  # privtune at its default instead of the middle eta: ~12 minutes in all
            mech_etas = (etas[0], ETA_REF, etas[-1]) if mechanism == "privtune" else etas
        out += [replace(base, mechanism=mechanism, eta=eta) for eta in mech_etas]
    return out


def _eta_fine_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    if quick:
        return []
    return [replace(base, mechanism=m, eta=eta) for eta in ETAS_FINE for m in ("privtune", "dchi")]


def _eta_extra_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    if quick:
        return []
    return [
        replace(base, mechanism=m, eta=eta)
        for m in ("gaussian", "dchi_importance")
        for eta in ETAS_FULL
        if not (m == "gaussian" and eta in (*ETAS_QUICK, ETA_REF))  # those are in the eta grid
    ]


def _ablation_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    if quick:
        return []
    out = [replace(base, mechanism=m, eta=_noise(m, ETA_REF)) for m in MECHANISMS]
    for eta in (ETA_REF, 40.0):
        out.append(replace(base, mechanism="privtune", eta=eta, params=METHOD_MD_IMPORTANCE))
    return out + [replace(base, mechanism="privtune", eta=ETA_REF, noise_aware=False)]


def _split_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    if quick:
        return []
    out = []
    for layer in (3, 4, 5):
        out += [replace(base, mechanism="none", split_layer=layer)]
        out += [replace(base, mechanism="privtune", eta=ETA_REF, split_layer=layer)]
    return out


def _hops_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    if quick:
        return []
    # 3 is the default: hops=None, the same row as the other grids
    return [replace(base, mechanism="privtune", eta=ETA_REF, hops=None if n == 3 else n) for n in (3, 4, 5)]


def _attribute_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    if quick:  # the attribute attacks once, on the defended default
        return [replace(base, dataset="vader-mixed", mechanism=m, eta=_noise(m, ETA_REF)) for m in ("none", "privtune")]
    at = {d: replace(base, dataset=d) for d in ("vader-mixed", "multiemo")}
    out = []
    for mechanism, eta in (
        ("none", None),
        ("privtune", ETA_REF),
        ("dchi", ETA_REF),
        ("privtune", 5.0),
        ("dchi", 5.0),
    ):
        out += [replace(c, mechanism=mechanism, eta=eta) for c in at.values()]
    return out


def _defaults_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    """How the importance defaults were chosen: score, map, w_max, OPT-3 and the top model at eta 20."""
    b = replace(DEFAULTS_BASE, mechanism="dchi_importance", eta=20.0)
    info, z = ("importance_score", "information"), ("importance_score", "log_odds_z")
    return [
        replace(DEFAULTS_BASE, mechanism="none"),
        replace(b, params=(z, *_TOP10, ("w_max", 4.0)), noise_aware=False),  # frequency-ranked, plain top
        replace(b, params=(info, *_TOP10, ("w_max", 4.0))),  # label information, noise-aware top
        replace(b, params=(info, *_TOP10, ("w_max", 16.0))),  # cleaner top tokens
        replace(b, mechanism="privtune", params=(info, *_TOP10, ("w_max", 4.0))),  # + OPT-3
    ]


def _labels_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    """The label attack's figure (docs/RESULTS.md): undefended and the default mechanism (rows shared
    with the eta grid)."""
    return [replace(base, mechanism="none"), replace(base, mechanism="privtune", eta=ETA_REF)]


#: the shipped default's importance, named explicitly so that rows keep their meaning if defaults move
DEFAULT_PARAMS: tuple[tuple[str, object], ...] = (("importance_score", "token_class"),)
#: before issue 10: label-informative words exposed nearly clean, fresh noise on every send
PAPER_FORM_PARAMS: tuple[tuple[str, object], ...] = (
    ("importance_score", "information"),
    ("noise_floor", 0.0),
    ("view_noise", "fresh"),
)
#: the candidates for the default (issue 10), under every attack and over every view
CHOICE_CANDIDATES: tuple[tuple[str, float | None, tuple[tuple[str, object], ...]], ...] = (
    ("none", None, ()),
    ("privtune", ETA_REF, PAPER_FORM_PARAMS),
    ("privtune", ETA_REF, (("importance_score", "information"), ("noise_floor", 0.0))),  # per-text noise alone
    ("privtune", ETA_REF, (("importance_score", "information"),)),  # + the floor (1)
    ("privtune", ETA_REF, (("importance_score", "information"), ("noise_floor", 3.0))),
    ("privtune", ETA_REF, (("importance_score", "information"), ("noise_floor", 6.0))),
    ("privtune", ETA_REF, DEFAULT_PARAMS),  # the data-independent map (floor 1)
    ("dchi", 5.0, ()),
)
#: the full-setting subset (DEFAULTS_BASE: 2,000 texts, 3 epochs) of CHOICE_CANDIDATES, plus eta 20
CHOICE_FULL: tuple[tuple[str, float | None, tuple[tuple[str, object], ...]], ...] = (
    CHOICE_CANDIDATES[0],
    CHOICE_CANDIDATES[1],
    CHOICE_CANDIDATES[3],
    CHOICE_CANDIDATES[6],
    ("privtune", 20.0, DEFAULT_PARAMS),
    CHOICE_CANDIDATES[7],
)
LABEL_EPSILONS = (1.0, 3.0)


def _choice_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    """The default chosen by measurement: CHOICE_CANDIDATES on the quick base, CHOICE_FULL on
    DEFAULTS_BASE, vader-movie, l=3, under every attack."""
    at = replace(base if quick else DEFAULTS_BASE, dataset="vader-movie", split_layer=3)
    candidates = CHOICE_CANDIDATES if quick else CHOICE_FULL
    return [replace(at, mechanism=m, eta=_noise(m, eta), params=params) for m, eta, params in candidates]


def _label_dp_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    """Accuracy against label-attack success: the default mechanism with label DP at LABEL_EPSILONS."""
    at = replace(base if quick else DEFAULTS_BASE, dataset="vader-movie", split_layer=3, mechanism="privtune",
                 eta=ETA_REF, params=DEFAULT_PARAMS)  # fmt: skip
    return [at, *(replace(at, label_epsilon=eps) for eps in LABEL_EPSILONS)]


def _headline_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    """The headline rows (HEADLINE_MECHANISMS) on vader-movie, l=3, for every seed of HEADLINE_SEEDS
    (full grid: on DEFAULTS_BASE, 2,000 texts and 3 epochs with the quick attack budget)."""
    at = replace(base if quick else DEFAULTS_BASE, dataset="vader-movie", split_layer=3)
    return [
        replace(at, mechanism=m, eta=_noise(m, eta), params=params, seed=seed)
        for seed in HEADLINE_SEEDS
        for m, eta, params in HEADLINE_MECHANISMS
    ]


def _medicine_grid(base: ExperimentConfig, etas: tuple[float, ...], quick: bool) -> list[ExperimentConfig]:
    """``multiemo-medicine``: the victim's medical reviews, the attacker's public text from other domains."""
    at = replace(base if quick else DEFAULTS_BASE, dataset="multiemo-medicine")
    return [replace(at, mechanism="none"), replace(at, mechanism="privtune", eta=ETA_REF, params=DEFAULT_PARAMS)]


GRIDS: dict[str, Callable[[ExperimentConfig, tuple[float, ...], bool], list[ExperimentConfig]]] = {
    "eta": _eta_grid,
    "ablation": _ablation_grid,
    "split": _split_grid,
    "hops": _hops_grid,
    "attribute": _attribute_grid,
    "eta-fine": _eta_fine_grid,
    "eta-extra": _eta_extra_grid,
    "headline": _headline_grid,
    "medicine": _medicine_grid,
    "defaults": _defaults_grid,
    "labels": _labels_grid,
    "choice": _choice_grid,
    "label-dp": _label_dp_grid,
}
DEFAULT_GRIDS = tuple(name for name in GRIDS if name not in ("defaults", "labels", "choice", "label-dp"))


class ResultStore:
    """Append-only JSON-lines file of result rows (``ResultRow``), indexed by ``key``.

    A truncated last line (a crash mid-write) is ignored on reading, and so is a line that is not a
    row this version can read; rows are flushed and fsynced one at a time, so a finished experiment
    is never lost. On disk each line is ``ResultRow.to_dict()`` as JSON with sorted keys.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.refresh()

    def refresh(self) -> None:
        """(Re-)read the file: picks up rows another process (another shard) appended meanwhile."""
        self._rows: dict[str, ResultRow] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    data = json.loads(line)
                    row = ResultRow.from_dict(data) if isinstance(data, dict) and "key" in data else None
                except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                    continue
                if row is not None:
                    self._rows[row.key] = row

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def get(self, key: str) -> ResultRow | None:
        """The row with ``key``, or None."""
        return self._rows.get(key)

    def rows(self) -> list[ResultRow]:
        """All rows, in file order (later duplicates replace earlier ones)."""
        return list(self._rows.values())

    def append(self, row: ResultRow) -> None:
        """Write one row durably and index it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row.to_dict(), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._rows[row.key] = row


def attach_undefended(row: ResultRow, baseline: ResultRow) -> ResultRow:
    """``row`` with the baseline's ASR of the same attack and threat model on each attack entry (None
    where the baseline lacks it), the baseline's key and its accuracy (``undefended_accuracy``)."""
    base = {(a.name, a.threat_model): a.asr for a in baseline.attacks}
    attacks = tuple(a.with_undefended(base.get((a.name, a.threat_model))) for a in row.attacks)
    utility = replace(row.utility, undefended_accuracy=baseline.utility.accuracy)
    return replace(row, attacks=attacks, utility=utility, undefended_key=baseline.key)


def shard(configs: list[ExperimentConfig], index: int, count: int) -> list[ExperimentConfig]:
    """Every ``count``-th config starting at ``index`` (0-based): run ``count`` processes on one file."""
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    return configs[index::count]


class Runner:
    """Runs configs into a ``ResultStore``, skipping finished keys and running baselines first."""

    def __init__(
        self,
        store: ResultStore,
        resources: Resources,
        log: Callable[[str], None] | None = None,
        experiment: Callable[[ExperimentConfig, Resources], ResultRow] = run_experiment,
    ):
        self.store, self.resources, self.experiment = store, resources, experiment
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.trained = 0  # experiments actually run (not skipped) by this runner

    def run(self, config: ExperimentConfig) -> ResultRow:
        """The row of ``config``: from the store if finished, else run (baseline first) and stored."""
        row = self.store.get(config.key())
        if row is not None:
            return row
        baseline = self.run(config.baseline()) if config.mechanism != "none" else None
        started = time.perf_counter()
        self.log(f"[eval] running {config.dataset} {config.label()} ({config.key()})")
        row = self.experiment(config, self.resources)
        self.trained += 1
        row = attach_undefended(row, baseline if baseline is not None else row)
        self.store.append(row)
        self.log(f"[eval] done in {time.perf_counter() - started:.0f} s: accuracy {row.utility.accuracy:.3f}")
        return row

    def run_all(self, configs: Iterable[ExperimentConfig], budget_s: float | None = None) -> dict[str, int]:
        """Run every config (finished ones are skipped); a failing config is logged and left for a re-run.

        ``budget_s``: stop starting new experiments after this many seconds. Returns counts of
        ``done`` (already in the store), ``ran``, ``failed`` and ``left`` (not started: budget).
        """
        counts = {"done": 0, "ran": 0, "failed": 0, "left": 0}
        started = time.perf_counter()
        for config in configs:
            self.store.refresh()  # cheap; another shard may have finished this config or its baseline
            if config.key() in self.store:
                counts["done"] += 1
                continue
            if budget_s is not None and time.perf_counter() - started > budget_s:
                counts["left"] += 1
                continue
            before = self.trained
            try:
                self.run(config)
            except Exception:  # one broken config must not stop a long sweep
                counts["failed"] += 1
                self.log(f"[eval] FAILED {config.label()} ({config.key()}):\n{traceback.format_exc()}")
            finally:
                counts["ran"] += self.trained - before  # a baseline that ran before a failure counts
        return counts
