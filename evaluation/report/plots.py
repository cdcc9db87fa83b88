"""The report's PNG plots: privacy-utility operating points and ASR / utility against eta.

Promises: each plot function writes one PNG (folders created) and returns its path, or returns None
without writing when the rows hold nothing to draw. matplotlib is imported on first use (Agg backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.report.paper import PAPER_HEADLINE, PAPER_TABLE_III
from evaluation.report.queries import (
    NOISE_MECHANISMS,
    NOISELESS,
    THREATS,
    accuracy,
    first,
    operating_points,
    pick,
    strongest,
)
from evaluation.rows import ResultRow

__all__ = ["plot_eta", "plot_privacy_utility", "save_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str) -> Path:
    """Title, lay out and write ``fig`` as a PNG at ``path`` (folders created); closes it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_privacy_utility(rows: list[ResultRow], dataset: str, path: Path, title: str) -> Path | None:
    """Utility against the strongest token ASR, one line per mechanism, one panel per threat model."""
    plt = _pyplot()
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, defaults=True)
    base = first(pick(same, mechanism="none"))
    if base is None:
        return None
    base_acc = 100 * accuracy(base)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, threat in zip(axes, THREATS, strict=True):
        for mechanism in (*NOISE_MECHANISMS, *(m for m in NOISELESS if m != "none")):
            points = operating_points(rows, dataset, mechanism, threat)
            if not points:
                continue
            xs, ys = [100 * p.asr for p in points], [100 * p.accuracy for p in points]
            ax.plot(xs, ys, "o-" if len(points) > 1 else "s", label=mechanism)
            for p, x, y in zip(points, xs, ys, strict=True):
                if p.eta is not None:
                    ax.annotate(f"{p.eta:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        entry = strongest(base, threat)
        if entry is not None:
            ax.plot([100 * entry.asr], [base_acc], "k*", markersize=14, label="none (undefended)")
        ax.axhline(100 * base.utility.chance, color="grey", ls="--", lw=1, label="chance accuracy")
        ax.axhline(base_acc - PAPER_HEADLINE["up_drop"], color="green", ls=":", lw=1, label="undefended - 3.33 pts")
        ax.axvline(PAPER_HEADLINE["asr"], color="red", ls=":", lw=1, label="ASR 10%")
        ax.axvspan(-2, PAPER_HEADLINE["asr"], ymin=0, ymax=1, color="green", alpha=0.06)
        headline = "paper's headline:\nASR <= 10%,\ndrop <= 3.33"
        ax.text(1, base_acc - PAPER_HEADLINE["up_drop"] + 0.5, headline, fontsize=7, color="green", va="bottom")
        ax.set_title(f"{threat} attacker")
        ax.set_xlabel("strongest token-inversion ASR (%)  [numbers: eta]")
        ax.set_xlim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    return save_figure(fig, path, title)


def plot_eta(rows: list[ResultRow], dataset: str, path: Path, title: str) -> Path | None:
    """ASR (both threat models) and utility against eta, with the paper's Table III for the trend."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    etas = [e for e in PAPER_TABLE_III if e is not None]
    left.plot(etas, [PAPER_TABLE_III[e][0] for e in etas], "k--", lw=1, label="paper Table III (Llama-3, SST)")
    right.plot(etas, [PAPER_TABLE_III[e][1] for e in etas], "k--", lw=1, label="paper Table III (Llama-3, SST)")
    drawn = False
    for i, mechanism in enumerate(NOISE_MECHANISMS):
        color = f"C{i}"
        for threat, style in zip(THREATS, ("o-", "s:"), strict=True):
            points = [p for p in operating_points(rows, dataset, mechanism, threat) if p.eta is not None]
            if not points:
                continue
            drawn = True
            etas_drawn = [p.eta for p in points]
            left.plot(etas_drawn, [100 * p.asr for p in points], style, color=color, label=f"{mechanism}, {threat}")
            if threat == "naive":
                right.plot(etas_drawn, [100 * p.accuracy for p in points], "o-", color=color, label=mechanism)
    if not drawn:
        plt.close(fig)
        return None
    base = first(pick(rows, dataset=dataset, split_layer=3, mechanism="none"))
    if base is not None:
        entry = strongest(base, "naive")
        if entry is not None:
            left.axhline(100 * entry.asr, color="black", lw=1, label="none (undefended)")
            left.axhline(100 * entry.chance, color="grey", ls="--", lw=1, label="chance (majority token)")
        right.axhline(100 * accuracy(base), color="black", lw=1, label="none (undefended)")
        right.axhline(100 * base.utility.chance, color="grey", ls="--", lw=1, label="chance")
    for ax, label in ((left, "strongest token-inversion ASR (%)"), (right, "test accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("eta (log scale; noise/signal ~ 57 / eta for l1 d_chi on minilm-l6)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path, title)
