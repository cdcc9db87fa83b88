"""Frozen, validated configuration dataclasses, one per mechanism of method.md section 6.

Every field carries help text (``dataclasses.field(metadata={"help": ...})``) and its constraints;
``__post_init__`` checks them and raises a :class:`PrivacyConfigError` naming the field and what is
allowed. Every [R] (reconstructed) choice of method.md is a named option here, defaulting to the
choice method.md gives. Configs round-trip through JSON-able dicts::

    cfg = PrivTuneConfig(eta=20.0)
    assert PrivTuneConfig.from_dict(cfg.to_dict()) == cfg

The shared option groups (``ClipOptions``, ``DChiOptions``, ``ImportanceOptions``, ``Opt3Options``)
are mixins; a mechanism's config is the union of the groups it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config_base import MechanismConfig, option

__all__ = [
    "ClipOptions",
    "DChiConfig",
    "DChiImportanceConfig",
    "DChiOptions",
    "GaussianConfig",
    "ImportanceOptions",
    "MechanismConfig",
    "NoneConfig",
    "Opt3Config",
    "Opt3ImportanceConfig",
    "Opt3Options",
    "PrivTuneConfig",
]


# ---------------------------------------------------------------- option groups

VIEW_NOISE = option(
    "per_text",
    "How repeated sends of one text are noised. 'per_text': the noise of each position is derived from a "
    "device-held secret and the text (for causal models, its prefix up to the position), so every re-send "
    "(each epoch, validation, inference) is the identical view and repeated views reveal nothing more than "
    "one. 'fresh': new noise on every send (the paper's form): K views of a text can be averaged, which "
    "divides the noise variance by K.",
    choices=("per_text", "fresh"),
)


@dataclass(frozen=True)
class ClipOptions(MechanismConfig):
    """How the sensitivity Delta is obtained (method.md section 4, [R])."""

    sensitivity: str = option(
        "clip",
        "'clip': clip every representation to L2 norm clip_norm, Delta = 2 * clip_norm (a bound). "
        "'diameter': no clipping, Delta = the largest pairwise L2 distance in the fitting sample "
        "(empirical, not a bound for unseen inputs). For opt3/opt3_importance this only decides whether "
        "representations are clipped before the shift (so opt3 is privtune without noise).",
        choices=("clip", "diameter"),
    )
    clip_norm: float | None = option(
        None,
        "Clip norm C (sensitivity='clip'). None: the median L2 norm of the fitting sample's representations.",
        gt=0.0,
        optional=True,
    )


@dataclass(frozen=True)
class DChiOptions(MechanismConfig):
    """d_chi-privacy noise (method.md eqs. 19-20)."""

    adds_noise: ClassVar[bool] = True

    view_noise: str = VIEW_NOISE
    eta: float = option(10.0, "Privacy parameter eta (> 0); the noise scale is Delta / (eta * w).", gt=0.0)
    metric: str = option(
        "l1",
        "'l1': per-coordinate Laplace(0, Delta/eta), E||z||_2 ~ sqrt(2d) Delta/eta. 'l2': density "
        "exp(-eta ||z||_2 / Delta), E||z||_2 = d Delta/eta. Default 'l1' (method.md: the l2 noise norm "
        "grows with d and destroys utility at the paper's eta range); which metric reproduces the paper's "
        "Table III trend is measured by the evaluation and this default revisited there.",
        choices=("l1", "l2"),
    )


@dataclass(frozen=True)
class ImportanceOptions(MechanismConfig):
    """Token importance I^ -> noise-scale factor w (method.md section 4, [R]).

    Defaults (measured against the best-response attacker, docs/RESULTS.md and docs/PRIVACY.md): the
    data-independent 'token_class' score (function words and punctuation less noised, content words and
    special tokens more) with the 'top_fraction' map's two levels w_max = 16 / w_min = 0.25, every token
    raised to the noise floor (noise/signal >= 1). The label-informed 'information' score (the
    pre-issue-10 default, which exposes the most label-informative words: the sensitive ones) and
    method.md's reconstruction (eq. 21 log-ratio, w = 2 sigmoid(I^)) stay available by name.
    """

    uses_importance: ClassVar[bool] = True

    importance_score: str = option(
        "token_class",
        "Classification importance (method.md eq. 21, [R] form): 'log_ratio' = the class log-ratio weighted "
        "by p_c(t) (grows with token frequency); 'log_odds_z' = weighted log-odds z-score (Monroe et al. "
        "2008), high for frequent class-skewed words, low for neutral and rare ones; 'information' = the class "
        "information per occurrence, KL(p(c|t) || p(c)) with p(c|t) shrunk to the prior by 10 pseudo-counts "
        "(per-occurrence value, not total significance: ranks 'great' above 'and'). All Z-normalised. "
        "'token_class': data-independent, from the tokenizer alone (client_sdk.privacy.token_classes): function "
        "words and punctuation are the important class, content words and special tokens the noisier one; "
        "nothing about the user's data shapes the map, and exposure reveals only a token's public class.",
        choices=("log_ratio", "log_odds_z", "information", "token_class"),
    )
    importance_to_scale: str = option(
        "top_fraction",
        "'sigmoid': w = 2 * sigmoid(I^) in (0, 2). 'linear': w = clip(1 + beta * I^, w_min, w_max). "
        "'top_fraction': the most important tokens, covering top_fraction of the token occurrences of the "
        "fitting data (generation: of each sequence), get w_max, all others w_min. "
        "Noise scale is divided by w: important tokens get less noise.",
        choices=("sigmoid", "linear", "top_fraction"),
    )
    beta: float = option(0.5, "Slope of the 'linear' importance-to-scale map (> 0).", gt=0.0)
    w_min: float = option(
        0.25,
        "Lower clip of the 'linear' map, the factor of the other tokens for 'top_fraction' (> 0, < w_max).",
        gt=0.0,
        lt_field="w_max",
    )
    w_max: float = option(
        16.0, "Upper clip of the 'linear' map, the factor of the top tokens for 'top_fraction' (> w_min).", gt=0.0
    )
    top_fraction: float = option(
        0.08, "'top_fraction' map: share of token occurrences that get w_max (0 < q < 1).", gt=0.0, le=1.0
    )
    noise_floor: float = option(
        1.0,
        "The least noise any token gets, as the expected noise-to-signal ratio E||z||_2 / C (C the clip "
        "norm): w is capped so that no class of tokens is sent near clean. 0 turns the floor off (the "
        "paper's form, where the top tokens travel at noise/signal ~0.35).",
        ge=0.0,
    )
    sensitive_terms: tuple[str, ...] = option(
        (),
        "Words or phrases whose tokens always get the most noise (w_min), whatever the importance map says, "
        "e.g. names, diagnoses, account terms. Matched by token id (each term tokenised with and without a "
        "leading space, and lower-cased): every piece of a term is buried wherever it occurs.",
        strings=True,
    )


@dataclass(frozen=True)
class Opt3Options(MechanismConfig):
    """OPT-3 noise direction (method.md section 3, eqs. 15-18)."""

    uses_opt3: ClassVar[bool] = True

    k: int = option(10, "Neighbours per token in the cosine kNN graph (N_k), >= 1.", integer=True, ge=1)
    hops: int = option(
        3, "n: H_n(t) = tokens at shortest-path distance exactly n (out-edges), >= 1.", integer=True, ge=1
    )
    max_hop_set: int = option(
        64, "Cap m on |H_n(t)|, sampled deterministically, so OPT-3 costs O(N (k + m)); >= 1.", integer=True, ge=1
    )
    neighbour_source: str = option(
        "embeddings",
        "Matrix the kNN graph is built on: 'embeddings' (input embedding matrix E, method.md section 2) "
        "or 'prototypes' (split-layer token prototypes).",
        choices=("embeddings", "prototypes"),
    )
    similarity: str = option(
        "pearson+cos",
        "s(a, b) in the EIA term: 'pearson+cos' (method.md: plain sum), 'cos' or 'pearson'.",
        choices=("pearson+cos", "cos", "pearson"),
    )
    lam: float = option(0.5, "lambda, weight of the AIA term in G + lambda * L_AIA (>= 0).", ge=0.0)
    aia_direction: str = option(
        "away",
        "'away': L_AIA = -||h + delta - c|| (method.md eq. 16, push away from the centroid). "
        "'toward': +||h + delta - c|| (the 'literal' pull reading of method.md section 8).",
        choices=("away", "toward"),
    )
    centroid_mode: str = option(
        "pseudo",
        "Centroid c in L_AIA. 'pseudo': label-free, the nearest of num_centroids k-means centroids of the "
        "fitting sample (default: method.md section 8, the true label's centroid leaks the label). "
        "'label': the centroid of the sequence's true class (needs labels at perturb time; leaks the label).",
        choices=("pseudo", "label"),
    )
    num_centroids: int = option(
        8, "K for the 'pseudo' centroids (k-means on the fitting sample), >= 1.", integer=True, ge=1
    )
    steps: int = option(20, "T, projected-gradient steps (>= 1).", integer=True, ge=1)
    step_size: float = option(
        0.1, "alpha as a fraction of eps_local: each step moves delta by alpha * eps_local * direction (> 0).", gt=0.0
    )
    step_rule: str = option(
        "normalized",
        "'normalized': direction = g / ||g|| per token (scale-free, default). 'raw': direction = g.",
        choices=("normalized", "raw"),
    )
    eps_local_ratio: float = option(
        0.15,
        "epsilon_local = ratio * median ||h|| of the fitting sample (constraint ||delta||_2 <= eps_local).",
        gt=0.0,
    )
    radius_quantile: float = option(
        1.0,
        "R = this quantile of ||h - mu|| over the fitting sample (1.0 = the max observed radius, method.md). "
        "A token already outside the ball keeps its own radius, so delta = 0 stays feasible.",
        gt=0.0,
        le=1.0,
    )


# ---------------------------------------------------------------- mechanism configs


@dataclass(frozen=True)
class NoneConfig(MechanismConfig):
    """``none``: plain split learning, the representation is sent unchanged."""

    name: ClassVar[str] = "none"


@dataclass(frozen=True)
class GaussianConfig(ClipOptions):
    """``gaussian``: clip, then add N(0, (noise_multiplier * Delta)^2 I) (DP-Forward-like baseline)."""

    name: ClassVar[str] = "gaussian"
    adds_noise: ClassVar[bool] = True
    view_noise: str = VIEW_NOISE
    noise_multiplier: float = option(1.0, "sigma / Delta: per-coordinate std = noise_multiplier * Delta (> 0).", gt=0.0)


@dataclass(frozen=True)
class DChiConfig(DChiOptions, ClipOptions):
    """``dchi``: isotropic d_chi noise, no OPT-3, no importance (SAP-like baseline)."""

    name: ClassVar[str] = "dchi"


@dataclass(frozen=True)
class DChiImportanceConfig(ImportanceOptions, DChiConfig):
    """``dchi_importance``: d_chi noise with scale Delta / (eta * w_i) (Table V ablation)."""

    name: ClassVar[str] = "dchi_importance"


@dataclass(frozen=True)
class Opt3Config(Opt3Options, ClipOptions):
    """``opt3``: the deterministic OPT-3 shift delta* only (ablation, no formal guarantee)."""

    name: ClassVar[str] = "opt3"


@dataclass(frozen=True)
class Opt3ImportanceConfig(ImportanceOptions, Opt3Config):
    """``opt3_importance``: OPT-3 with a per-token budget eps_local / w_i (important tokens move less)."""

    name: ClassVar[str] = "opt3_importance"


@dataclass(frozen=True)
class PrivTuneConfig(Opt3Options, ImportanceOptions, DChiOptions, ClipOptions):
    """``privtune``: clip -> OPT-3 delta* -> z = delta* + d_chi noise of scale Delta / (eta * w_i) (eq. 26)."""

    name: ClassVar[str] = "privtune"
