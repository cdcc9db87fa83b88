"""The best-response token attacker's math (method.md section 9): pure functions on tensors.

Promises:

- ``noise_variance(scale, noise, dim)``: the per-coordinate variance of the mechanism's noise at
  per-coordinate scale ``scale``: 2 b^2 (Laplace, d_chi l1), b^2 (Gaussian std), (d + 1) b^2 (d_chi l2),
  0 ('none').
- ``average_views`` / ``distinct_views``: the mean of K linked views of the same texts (equal noise
  levels per position, so the precision-weighted mean is the plain mean; the noise variance falls by
  the number of *distinct* views averaged: identical re-sends add nothing).
- ``ExposureDetector``: each position's noise level read from what was received: a 1-D (or 2-D)
  Gaussian per known level on log ||h~|| (and optionally the log distance to the nearest reference
  row), fitted on public observations whose true levels are known; the most probable level wins.
- ``LevelBayesDecoder``: per-token class means of the mechanism's noiseless output, a pooled (or
  per-class) within-class spread, and at each position the noise variance of that position's level:
  Gaussian log-likelihood + log-frequency prior, argmax over the classes, with the posterior max
  probability as confidence; optionally re-ranked with a Laplace likelihood. Blockwise over classes
  and rows, so memory stays bounded for |V| ~ 30k.

Nothing here draws random numbers or runs a model; the callers (the evaluation's attacks, an audit)
supply the representations and the noise scales (``Privatizer.token_noise_scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "NOISE_KINDS",
    "ExposureDetector",
    "LevelBayesDecoder",
    "average_views",
    "distinct_views",
    "noise_kind",
    "noise_variance",
]

NOISE_KINDS = ("none", "gaussian", "laplace", "l2")
_TINY = 1e-30


def noise_kind(mechanism: Any) -> str:
    """The kind of noise a ``client_sdk.privacy`` mechanism adds, as ``noise_variance`` takes it:
    'none', 'gaussian', 'laplace' (d_chi, metric l1) or 'l2' (d_chi, metric l2)."""
    if not mechanism.uses_noise:
        return "none"
    if mechanism.name == "gaussian":
        return "gaussian"
    return "laplace" if mechanism.config.metric == "l1" else "l2"


def noise_variance(scale: torch.Tensor | float, noise: str, dim: int) -> torch.Tensor:
    """Per-coordinate noise variance for per-coordinate scale ``scale`` (any shape, float32, same shape).

    ``noise``: 'laplace' (d_chi l1: Laplace(0, b), 2 b^2), 'gaussian' (std b: b^2), 'l2' (d_chi l2 of
    scale b in ``dim`` dimensions: radius ~ Gamma(d, b), E||z||^2 = d (d + 1) b^2, so (d + 1) b^2 per
    coordinate) or 'none' (0)."""
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if noise == "none":
        return torch.zeros_like(scale)
    factor = {"gaussian": 1.0, "laplace": 2.0, "l2": float(dim) + 1.0}[noise]
    return factor * scale.pow(2)


def _distinct_mask(views: torch.Tensor, atol: float) -> torch.Tensor:
    """(K, N) bool: view k of text n differs from every earlier view of that text (view 0 always True)."""
    k, n = views.shape[:2]
    keep = torch.ones(k, n, dtype=torch.bool, device=views.device)
    for j in range(1, k):
        for i in range(j):
            same = (views[j] - views[i]).abs().flatten(1).amax(dim=1) <= atol  # (n,)
            keep[j] &= ~(same & keep[i])
    return keep


def distinct_views(views: torch.Tensor, *, atol: float = 0.0) -> torch.Tensor:
    """(N,) int64: how many of the K views (K, N, T, d) of each text differ (max abs difference > ``atol``)
    from all earlier ones. Per-text noise ('per_text': every re-send identical) gives 1."""
    if views.dim() != 4:
        raise ValueError(f"views must be (K, N, T, d), got {tuple(views.shape)}")
    return _distinct_mask(views, atol).sum(dim=0)


def average_views(views: torch.Tensor, *, dedupe: bool = False, atol: float = 0.0) -> torch.Tensor:
    """The mean of linked views: (K, N, T, d) -> (N, T, d) float32.

    Every view of a position has the same noise level, so the precision-weighted mean is the plain
    mean and its noise variance is the single-view variance / K (K distinct views). ``dedupe``: average
    only the views that differ from all earlier ones of the same text (a re-sent identical view would
    otherwise count twice without reducing the noise)."""
    if views.dim() != 4:
        raise ValueError(f"views must be (K, N, T, d), got {tuple(views.shape)}")
    views = views.float()
    if not dedupe:
        return views.mean(dim=0)
    weight = _distinct_mask(views, atol).to(views.dtype)[..., None, None]  # (k, n, 1, 1)
    return (views * weight).sum(dim=0) / weight.sum(dim=0)


# ---------------------------------------------------------------- noise levels


def _level_values(scale: torch.Tensor, tolerance: float, max_levels: int) -> torch.Tensor:
    """The distinct noise levels among ``scale`` (n,): values within relative ``tolerance`` are one level;
    more than ``max_levels`` distinct values are binned by quantiles of log-scale (geometric means)."""
    key = torch.log(scale.double().clamp_min(_TINY))  # (n,)
    values = torch.unique(key)  # sorted
    gap = math.log1p(tolerance)
    starts = torch.cat([torch.ones(1, dtype=torch.bool), values[1:] - values[:-1] > gap])
    group = torch.cumsum(starts.long(), 0) - 1  # (u,)
    if int(group[-1]) + 1 > max_levels:
        edges = torch.quantile(key, torch.linspace(0, 1, max_levels + 1, dtype=key.dtype)[1:-1])
        group = torch.unique(torch.bucketize(key, edges), return_inverse=True)[1]
        values = key
    count = int(group.max()) + 1
    sums = torch.zeros(count, dtype=key.dtype).index_add_(0, group, values)
    levels = torch.exp(sums / torch.bincount(group, minlength=count).to(key.dtype))
    return torch.where(levels <= _TINY * 10, torch.zeros_like(levels), levels).float()


def _nearest_level(scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(n,) index of the level nearest to each scale in log-space (0 is its own level)."""
    key = torch.log(scale.double().clamp_min(_TINY)).unsqueeze(1)  # (n, 1)
    ref = torch.log(levels.double().clamp_min(_TINY)).to(key.device).unsqueeze(0)  # (1, L)
    return (key - ref).abs().argmin(dim=1)


@dataclass(frozen=True)
class ExposureDetector:
    """The noise level of each received position, from its norm.

    ``levels`` (L,) the distinct noise scales, ascending (level 0 is the least noisy: "exposed" when
    L > 1); per level a diagonal Gaussian on the features (``mean``, ``var`` (L, f)) and a log prior
    (L,) from the public level frequencies. Features: log ||h~||, and with ``reference`` (m, d) also the
    log distance to its nearest row (e.g. the noiseless class means), which separates levels when the
    signal norm dominates the noise.
    """

    levels: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    log_prior: torch.Tensor
    reference: torch.Tensor | None = None

    @classmethod
    def fit(
        cls,
        hidden: torch.Tensor,
        scale: torch.Tensor,
        *,
        reference: torch.Tensor | None = None,
        tolerance: float = 0.05,
        max_levels: int = 8,
    ) -> ExposureDetector:
        """Fit on observed rows ``hidden`` (n, d) whose true noise ``scale`` (n,) is known (public text
        through the same mechanism). Scales within relative ``tolerance`` are one level."""
        if hidden.dim() != 2 or scale.shape != hidden.shape[:1] or hidden.shape[0] == 0:
            raise ValueError(
                f"need hidden (n, d) and scale (n,), n >= 1; got {tuple(hidden.shape)}, {tuple(scale.shape)}"
            )
        scale = scale.detach().float().cpu()
        levels = _level_values(scale, tolerance, max_levels)  # (L,)
        ref = None if reference is None else reference.detach().float().cpu()
        probe = cls(levels, torch.zeros(1), torch.ones(1), torch.zeros(1), ref)
        feats = probe.features(hidden.detach().float().cpu()).double()  # (n, f)
        level = _nearest_level(scale, levels)  # (n,)
        count = levels.shape[0]
        counts = torch.bincount(level, minlength=count).double()  # (L,)
        sums = torch.zeros(count, feats.shape[1], dtype=feats.dtype).index_add_(0, level, feats)
        mean = sums / counts.clamp_min(1).unsqueeze(1)  # (L, f)
        sq = torch.zeros_like(sums).index_add_(0, level, (feats - mean[level]).pow(2))
        floor = 1e-4 * feats.var(dim=0, unbiased=False).clamp_min(1e-8) + 1e-8  # (f,)
        var = torch.where(
            counts.unsqueeze(1) > 1, sq / counts.clamp_min(1).unsqueeze(1), feats.var(dim=0, unbiased=False)
        )
        var = var.clamp_min(floor)
        log_prior = torch.log((counts + 0.5) / (counts.sum() + 0.5 * count))
        return cls(levels, mean.float(), var.float(), log_prior.float(), ref)

    def features(self, hidden: torch.Tensor, block_size: int = 4096) -> torch.Tensor:
        """(n, f) features of rows ``hidden`` (n, d): log norm [, log distance to the nearest reference row]."""
        x = hidden.float()
        parts = [torch.log(x.norm(dim=-1) + 1e-12)]  # (n,)
        if self.reference is not None:
            ref = self.reference.to(x.device)
            nearest = torch.cat(
                [torch.cdist(x[s : s + block_size], ref).min(dim=1).values for s in range(0, x.shape[0], block_size)]
            ) if x.shape[0] else x.new_zeros(0)  # fmt: skip
            parts.append(torch.log(nearest + 1e-12))
        return torch.stack(parts, dim=-1)

    def log_likelihood(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, L) log p(level | rows): ``hidden`` (n, d), or (K, n, d) for K views of the same positions
        (the level is shared, so the per-view likelihoods add), up to a per-row constant."""
        views = hidden.unsqueeze(0) if hidden.dim() == 2 else hidden  # (k, n, d)
        k, n, d = views.shape
        feats = self.features(views.reshape(k * n, d)).reshape(k, n, -1).to(self.mean.dtype)  # (k, n, f)
        mean, var = self.mean.to(feats.device), self.var.to(feats.device)  # (L, f)
        diff = feats.unsqueeze(2) - mean  # (k, n, L, f)
        ll = -0.5 * (diff.pow(2) / var + torch.log(var)).sum(dim=-1).sum(dim=0)  # (n, L)
        return ll + self.log_prior.to(ll.device)

    def predict_level(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n,) the most probable level index of each row (``hidden`` (n, d) or (K, n, d))."""
        n = hidden.shape[-2]
        if self.levels.shape[0] == 1:
            return torch.zeros(n, dtype=torch.long, device=hidden.device)
        return self.log_likelihood(hidden).argmax(dim=1)

    def predict_scale(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n,) the detected noise scale of each row (the scale of its most probable level)."""
        return self.levels.to(hidden.device)[self.predict_level(hidden)]

    def level_of(self, scale: torch.Tensor) -> torch.Tensor:
        """(n,) the level index nearest to each true ``scale`` (n,)."""
        return _nearest_level(scale.detach().float().cpu(), self.levels).to(scale.device)

    def accuracy(self, hidden: torch.Tensor, scale: torch.Tensor) -> float:
        """Fraction of rows whose detected level is the level of their true ``scale`` (0 if empty)."""
        if scale.numel() == 0:
            return 0.0
        return float((self.predict_level(hidden).cpu() == self.level_of(scale).cpu()).float().mean())

    @property
    def exposed_level(self) -> int | None:
        """Index of the least noisy level when there are several (the "exposed" positions), else None."""
        return 0 if self.levels.shape[0] > 1 else None


# ---------------------------------------------------------------- the per-level Bayes decoder


def _row_groups(noise_var: torch.Tensor, max_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group rows by their noise variance: (group values (G,), group index of each row (n,)); more than
    ``max_groups`` distinct values are binned by quantiles of log-variance (geometric means)."""
    values, index = torch.unique(noise_var, return_inverse=True)
    if values.shape[0] <= max_groups:
        return values, index
    key = torch.log(noise_var.double().clamp_min(_TINY))
    edges = torch.quantile(key, torch.linspace(0, 1, max_groups + 1, dtype=key.dtype)[1:-1])
    index = torch.unique(torch.bucketize(key, edges), return_inverse=True)[1]
    count = int(index.max()) + 1
    sums = torch.zeros(count, dtype=key.dtype).index_add_(0, index, key)
    values = torch.exp(sums / torch.bincount(index, minlength=count).to(key.dtype)).float()
    return values, index


@dataclass(frozen=True)
class LevelBayesDecoder:
    """Token decoder with a per-position noise level: x ~ N(mu_c, S_c + v_i I) for class (token) c at a
    position whose noise has per-coordinate variance v_i, maximum posterior with a log-frequency prior.

    Stored in the eigenbasis ``basis`` (d, d) of the pooled within-class covariance, centred at
    ``centre`` (d,): ``means`` (C, d); ``pooled`` (d,) the shrunk pooled eigenvalues; ``spread`` (C, d)
    per-class variances in that basis (None: pooled); ``offset`` (C,) extra isotropic variance per class
    (0 for classes seen in training, the lone-token fallback's bias for the others); ``log_prior`` (C,);
    ``classes`` (C,) token ids; ``trained`` (C,) bool; ``noise``: the noise kind the scales are of;
    ``raw_means`` (C, d): the means in the original coordinates (the Laplace re-rank's).
    Isotropic noise stays isotropic in the rotated basis, so every level costs one diagonal likelihood.
    """

    classes: torch.Tensor
    means: torch.Tensor
    pooled: torch.Tensor
    offset: torch.Tensor
    log_prior: torch.Tensor
    trained: torch.Tensor
    centre: torch.Tensor
    basis: torch.Tensor
    noise: str = "none"
    spread: torch.Tensor | None = None
    raw_means: torch.Tensor | None = None

    @classmethod
    def fit(
        cls,
        mean_hidden: torch.Tensor,
        token_ids: torch.Tensor,
        *,
        noise: str = "none",
        fallback_ids: torch.Tensor | None = None,
        fallback_means: torch.Tensor | None = None,
        fallback_count: float = 0.5,
        shrinkage: float = 0.1,
        spread: str = "pooled",
        class_strength: float = 8.0,
        fallback_spread: bool = True,
    ) -> LevelBayesDecoder:
        """Fit on noiseless rows ``mean_hidden`` (n, d) (the mechanism's deterministic output on public
        text; clean states for an attacker who ignores the mechanism) labelled ``token_ids`` (n,).

        Class means: mean over each token's occurrences. Within-class spread: the pooled covariance of
        the rows around their class means, shrunk toward tr/d * I by ``shrinkage``; with
        ``spread='class'`` each class also gets its own variances (in the pooled eigenbasis), shrunk
        toward the pooled ones with ``class_strength`` pseudo-occurrences. ``fallback_ids`` (m,) with
        ``fallback_means`` (m, d): classes for tokens absent from ``token_ids`` (e.g. every vocabulary
        token at its lone prototype's noiseless output), each with ``fallback_count`` pseudo-occurrences
        and extra variance = the mean squared gap between fallback and class means of the seen tokens
        (``fallback_spread=False``: no extra variance, e.g. for an attacker who models no noise, to whom
        a wider class would win every far-off row). ``noise``: the kind of the scales ``predict`` will be given (``noise_variance``).
        """
        if mean_hidden.dim() != 2 or mean_hidden.shape[0] == 0 or token_ids.shape != mean_hidden.shape[:1]:
            raise ValueError(
                f"need rows (n, d), n >= 1, and one token id each; got {tuple(mean_hidden.shape)}, {tuple(token_ids.shape)}"
            )
        if spread not in ("pooled", "class") or not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"spread must be 'pooled' or 'class' and shrinkage in [0, 1], got {spread!r}, {shrinkage}")
        noise_variance(0.0, noise, 1)  # validates the kind
        x = mean_hidden.detach().double().cpu()  # (n, d)
        d = x.shape[1]
        classes, inverse, counts = torch.unique(token_ids.reshape(-1).cpu(), return_inverse=True, return_counts=True)
        sums = torch.zeros(classes.shape[0], d, dtype=x.dtype).index_add_(0, inverse, x)
        means = sums / counts.unsqueeze(1)  # (C, d)
        centre = x.mean(dim=0)  # (d,)
        resid = x - means[inverse]  # (n, d)
        cov = resid.T @ resid / x.shape[0]  # (d, d)
        scale = float(torch.trace(cov)) / d
        scale = scale if scale > 0 else float((x - centre).pow(2).mean()) or 1.0
        eye = torch.eye(d, dtype=x.dtype)
        cov = (1.0 - shrinkage) * cov + (shrinkage + 1e-6) * scale * eye
        pooled, basis = torch.linalg.eigh(cov)  # (d,), (d, d)
        pooled = pooled.clamp_min(1e-6 * scale)
        counts_f = counts.double()
        per_class = None
        if spread == "class":
            sq = torch.zeros_like(means).index_add_(0, inverse, (resid @ basis).pow(2))  # (C, d)
            k = float(class_strength)
            per_class = (sq + k * pooled) / (counts_f.unsqueeze(1) + k)
        offset = torch.zeros(classes.shape[0], dtype=x.dtype)
        trained = torch.ones(classes.shape[0], dtype=torch.bool)
        if fallback_ids is not None and fallback_means is not None:
            ids = fallback_ids.reshape(-1).cpu()
            fmeans = fallback_means.detach().double().cpu()
            extra = ~torch.isin(ids, classes)  # (m,)
            seen = torch.isin(ids, classes)
            if not fallback_spread:
                bias = 0.0
            elif bool(seen.any()):
                gap = fmeans[seen] - means[torch.searchsorted(classes, ids[seen])]
                bias = float(gap.pow(2).mean())
            else:
                bias = scale
            m = int(extra.sum())
            classes = torch.cat([classes, ids[extra]])
            means = torch.cat([means, fmeans[extra]])
            counts_f = torch.cat([counts_f, torch.full((m,), float(fallback_count), dtype=x.dtype)])
            offset = torch.cat([offset, torch.full((m,), bias, dtype=x.dtype)])
            trained = torch.cat([trained, torch.zeros(m, dtype=torch.bool)])
            if per_class is not None:
                per_class = torch.cat([per_class, pooled.expand(m, d)])
        log_prior = torch.log(counts_f / counts_f.sum())
        return cls(
            classes=classes, means=((means - centre) @ basis).float(), pooled=pooled.float(),
            offset=offset.float(), log_prior=log_prior.float(), trained=trained, centre=centre.float(),
            basis=basis.float(), noise=noise, spread=None if per_class is None else per_class.float(),
            raw_means=means.float(),
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def subset(self, index: torch.Tensor) -> LevelBayesDecoder:
        """The decoder over the classes ``index`` (c',) only (positions into ``classes``; same basis,
        spread and priors, so scores are unchanged and the posterior renormalises over the subset)."""
        index = torch.as_tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t[index]
        return LevelBayesDecoder(
            classes=self.classes[index], means=self.means[index], pooled=self.pooled, offset=self.offset[index],
            log_prior=self.log_prior[index], trained=self.trained[index], centre=self.centre, basis=self.basis,
            noise=self.noise, spread=pick(self.spread), raw_means=pick(self.raw_means),
        )  # fmt: skip

    def class_means(self, trained_only: bool = False) -> torch.Tensor:
        """(C, d) the class means in the original coordinates (only the trained classes with ``trained_only``)."""
        if self.raw_means is not None:
            return self.raw_means[self.trained] if trained_only else self.raw_means
        means = self.means[self.trained] if trained_only else self.means
        return means @ self.basis.T + self.centre

    def rotate(self, hidden: torch.Tensor) -> torch.Tensor:
        """Rows ``hidden`` (n, d) in the decoder's centred eigenbasis: (n, d) float32."""
        return (hidden.float() - self.centre.to(hidden.device)) @ self.basis.to(hidden.device)

    def row_variance(
        self, n: int, noise_scale: torch.Tensor | float | None, views: torch.Tensor | int | float = 1, device=None
    ) -> torch.Tensor:
        """(n,) the per-coordinate noise variance at each row: ``noise_variance(scale) / views``."""
        if noise_scale is None:
            return torch.zeros(n, device=device)
        scale = torch.as_tensor(noise_scale, dtype=torch.float32, device=device).expand(n)
        k = torch.as_tensor(views, dtype=torch.float32, device=device).clamp_min(1.0).expand(n)
        return noise_variance(scale, self.noise, self.dim).to(device) / k

    def _block_scores(self, xr: torch.Tensor, v: float, lo: int, hi: int) -> torch.Tensor:
        """(n, hi - lo) log-likelihood + log prior of rotated rows ``xr`` (n, d) at noise variance ``v``
        for classes lo..hi (the terms shared by all classes are kept, so rows compare across levels)."""
        mu = self.means[lo:hi].to(xr.device)  # (c, d)
        prior = self.log_prior[lo:hi].to(xr.device)
        off = self.offset[lo:hi].to(xr.device)
        if self.spread is not None:
            var = self.spread[lo:hi].to(xr.device) + off.unsqueeze(1) + v  # (c, d)
            prec = 1.0 / var
            quad = xr.pow(2) @ prec.T - 2.0 * xr @ (mu * prec).T + (mu.pow(2) * prec).sum(dim=1)  # (n, c)
            return -0.5 * (quad + torch.log(var).sum(dim=1)) + prior
        out = torch.empty(xr.shape[0], hi - lo, device=xr.device)
        values, runs = torch.unique_consecutive(off, return_counts=True)
        start = 0
        pooled = self.pooled.to(xr.device)
        x2 = xr.pow(2)
        for value, run in zip(values.tolist(), runs.tolist(), strict=True):
            cols = slice(start, start + run)
            var = pooled + value + v  # (d,)
            prec = 1.0 / var
            m = mu[cols]
            # -0.5 (x - m)^T P (x - m) - 0.5 log|V| + prior = (x P) m^T + bias_c + row_r, one fused product
            bias = prior[cols] - 0.5 * (m.pow(2) @ prec + float(torch.log(var).sum()))  # (run,)
            block = torch.addmm(bias.unsqueeze(0), xr * prec, m.T)  # (n, run)
            block -= 0.5 * (x2 @ prec).unsqueeze(1)
            out[:, cols] = block
            start += run
        return out

    def log_posterior(
        self,
        hidden: torch.Tensor,
        noise_scale: torch.Tensor | float | None = None,
        *,
        views: torch.Tensor | int | float = 1,
        max_groups: int = 16,
    ) -> torch.Tensor:
        """(n, C) normalised log posterior over ``classes`` for rows ``hidden`` (n, d) (all classes at once:
        for a few thousand rows; ``predict`` is the bounded-memory path)."""
        xr = self.rotate(hidden)
        v = self.row_variance(xr.shape[0], noise_scale, views, xr.device)
        values, group = _row_groups(v, max_groups)
        out = torch.empty(xr.shape[0], self.classes.shape[0], device=xr.device)
        for g, value in enumerate(values.tolist()):
            rows = group == g
            out[rows] = self._block_scores(xr[rows], value, 0, self.classes.shape[0])
        return out - torch.logsumexp(out, dim=1, keepdim=True)

    @torch.no_grad()
    def top_candidates(
        self,
        hidden: torch.Tensor,
        noise_scale: torch.Tensor | float | None = None,
        *,
        views: torch.Tensor | int | float = 1,
        k: int = 32,
        likelihood: str = "gaussian",
        block_size: int = 4096,
        row_block: int = 4096,
        max_groups: int = 16,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most probable classes of each row of ``hidden`` (n, d), best first: (indices into
        ``classes`` (n, k), log posterior (n, k)).

        Gaussian: the log posterior over all classes (exact normaliser, accumulated blockwise).
        'laplace': the Gaussian top ``k`` re-scored with a per-coordinate Laplace likelihood of the same
        variance (spread + noise: the exact form when Laplace noise dominates), normalised over those k
        (the rest carry negligible mass) and re-sorted. Blockwise: ``block_size`` classes x ``row_block``
        rows, so memory is O(row_block x (block_size + k)) whatever |V|."""
        if likelihood not in ("gaussian", "laplace"):
            raise ValueError(f"likelihood must be 'gaussian' or 'laplace', got {likelihood!r}")
        n = hidden.shape[0]
        device = hidden.device
        v_all = self.row_variance(n, noise_scale, views, device)  # (n,)
        c = self.classes.shape[0]
        k = min(k, c)
        out_idx = torch.empty(n, k, dtype=torch.long, device=device)
        out_lp = torch.empty(n, k, device=device)
        for s in range(0, n, row_block):
            xr = self.rotate(hidden[s : s + row_block])  # (b, d)
            v = v_all[s : s + row_block]
            values, group = _row_groups(v, max_groups)
            best = torch.full((xr.shape[0], k), -math.inf, device=device)
            best_idx = torch.zeros(xr.shape[0], k, dtype=torch.long, device=device)
            lse = torch.full((xr.shape[0],), -math.inf, device=device)
            for g, value in enumerate(values.tolist()):
                rows = (group == g).nonzero().squeeze(1)
                b_best, b_idx, b_lse = best[rows], best_idx[rows], lse[rows]
                for lo in range(0, c, block_size):
                    hi = min(lo + block_size, c)
                    scores = self._block_scores(xr[rows], value, lo, hi)  # (r, c_b)
                    b_lse = torch.logaddexp(b_lse, torch.logsumexp(scores, dim=1))
                    top = scores.topk(min(k, hi - lo), dim=1)
                    pick = torch.cat([b_best, top.values], dim=1).topk(k, dim=1)
                    b_idx = torch.cat([b_idx, top.indices + lo], dim=1).gather(1, pick.indices)
                    b_best = pick.values
                best[rows], best_idx[rows], lse[rows] = b_best, b_idx, b_lse
            logp = best - lse.unsqueeze(1)
            if likelihood == "laplace":
                laplace = self._laplace_scores(hidden[s : s + row_block].float(), v, best_idx)  # (b, k)
                order = laplace.argsort(dim=1, descending=True)
                best_idx = best_idx.gather(1, order)
                logp = laplace.gather(1, order).log_softmax(dim=1)
            out_idx[s : s + row_block], out_lp[s : s + row_block] = best_idx, logp
        return out_idx, out_lp

    def predict(
        self,
        hidden: torch.Tensor,
        noise_scale: torch.Tensor | float | None = None,
        *,
        views: torch.Tensor | int | float = 1,
        likelihood: str = "gaussian",
        rerank: int = 32,
        block_size: int = 4096,
        row_block: int = 4096,
        max_groups: int = 16,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids (n,), confidence (n,)) for rows ``hidden`` (n, d) at per-row ``noise_scale`` (n,) or
        a float (None: noiseless), averaged over ``views`` views ((n,) or a number: divides the variance).

        Confidence: the posterior probability of the chosen token (Gaussian: over all classes;
        'laplace': over the ``rerank`` candidates it re-scored, see ``top_candidates``)."""
        k = rerank if likelihood == "laplace" else 1
        index, logp = self.top_candidates(
            hidden, noise_scale, views=views, k=k, likelihood=likelihood, block_size=block_size,
            row_block=row_block, max_groups=max_groups,
        )  # fmt: skip
        return self.classes.to(hidden.device)[index[:, 0]], logp[:, 0].exp()

    def _laplace_scores(self, x: torch.Tensor, v: torch.Tensor, cand: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """(b, k) per-coordinate Laplace log-likelihood (+ log prior) of rows ``x`` (b, d) under candidate
        classes ``cand`` (b, k), each coordinate's Laplace variance = its pooled spread + class offset +
        the row's noise variance (``chunk`` rows at a time: O(chunk x k x d) memory)."""
        device = x.device
        basis = self.basis.to(device)
        diag = basis.pow(2) @ self.pooled.to(device)  # (d,) pooled variances in the original basis
        raw = self.raw_means.to(device) if self.raw_means is not None else self.class_means().to(device)
        offset, prior = self.offset.to(device), self.log_prior.to(device)
        out = torch.empty(cand.shape, device=device)
        for s in range(0, x.shape[0], chunk):
            c = cand[s : s + chunk]  # (r, k)
            extra = offset[c] + v[s : s + chunk].to(device).unsqueeze(1)  # (r, k)
            b = torch.sqrt((diag + extra.unsqueeze(-1)) / 2.0)  # (r, k, d)
            dist = ((x[s : s + chunk].unsqueeze(1) - raw[c]).abs() / b).sum(dim=-1)  # (r, k)
            out[s : s + chunk] = -dist - torch.log(2.0 * b).sum(dim=-1) + prior[c]
        return out

    def coverage(self, token_ids: torch.Tensor) -> float:
        """Fraction of ``token_ids`` that were classes seen in training (fallback classes excluded)."""
        if token_ids.numel() == 0:
            return 0.0
        seen = self.classes[self.trained].to(token_ids.device)
        return float(torch.isin(token_ids.reshape(-1), seen).float().mean())
