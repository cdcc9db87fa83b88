"""Token importance (method.md section 5) and the importance -> noise-scale map (section 4).

- ``classification_importance``: from the user's own token ids and labels, a (|V|,) table Z-normalised
  over the tokens seen (unseen/ignored tokens: 0). ``score="log_ratio"``: eq. 21, the class log-ratio
  with add-one smoothing, weighted by p_c(t) (grows with token frequency). ``score="log_odds_z"``: the
  weighted log-odds z-score of Monroe, Colaresi and Quinn (2008, "Fightin' words"), max over classes of
  |z| for class c against the rest: high for words that are both frequent and class-skewed ("great",
  "bad"), low for frequent neutral words ("the") and for rare words (large variance).
  ``score="information"``: the class information one occurrence of t carries, KL(p(c | t) || p(c)),
  with p(c | t) shrunk towards the class prior by 10 pseudo-counts: high for "great" / "dull", low
  for "and" (frequent but barely skewed) and for words seen once or twice.
- ``generation_importance``: eqs. 22-25 from the bottom model's attention maps; per-sequence
  Z-normalisation over the real (non-pad, non-excluded) tokens; excluded positions get 0.
- ``importance_to_scale``: w = 2 sigmoid(I^) or clip(1 + beta I^, w_min, w_max).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import InvalidChoiceError, PrivacyConfigError

IMPORTANCE_SCORES = ("log_ratio", "log_odds_z", "information")
INFORMATION_PRIOR = 10.0  # pseudo-counts of the class prior in the 'information' score

__all__ = [
    "classification_importance",
    "generation_importance",
    "generation_threshold",
    "importance_to_scale",
    "top_fraction_threshold",
]


def classification_importance(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    vocab_size: int,
    *,
    ignore_ids: Sequence[int] = (),
    score: str = "log_ratio",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Z-normalised token importance for every vocabulary id: a (vocab_size,) float32 table.

    p_c(t) = (count_c(t) + 1) / (N_c + |V|);  IS(t) = sum_c sum_{c' != c} p_c(t) log(p_c(t) / p_c'(t)).
    Counts come from ``input_ids`` (B, T) where ``attention_mask`` is 1, with sequence labels (B,).
    Tokens never seen (or in ``ignore_ids``, e.g. special tokens) get 0 and do not enter the mean/std.
    Labels are re-indexed, so any integer labels work; a single class gives an all-zero table.
    ``score="log_odds_z"``: z_c(t) = delta_c(t) / sqrt(1/(y_ct + 1) + 1/(y_rt + 1)) with
    delta_c(t) = logit((y_ct + 1) / (N_c + |V|)) - logit((y_rt + 1) / (N_r + |V|)) (r: the other classes),
    IS(t) = max_c |z_c(t)|. ``score="information"``: IS(t) = sum_c p(c|t) log(p(c|t) / p(c)) with
    p(c|t) = (count_c(t) + 10 p(c)) / (count(t) + 10), p(c) the class share of the token occurrences.
    """
    if score not in IMPORTANCE_SCORES:
        raise InvalidChoiceError("importance_score", IMPORTANCE_SCORES, score)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.shape[0] != input_ids.shape[0]:
        raise PrivacyConfigError("labels", f"one label per sequence ({input_ids.shape[0]})", tuple(labels.shape))
    _, cls = torch.unique(labels, return_inverse=True)  # (b,) in 0..c-1
    n_cls = int(cls.max()) + 1 if cls.numel() else 0
    valid = attention_mask.bool()
    if ignore_ids:
        valid &= ~torch.isin(input_ids, torch.as_tensor(list(ignore_ids), dtype=input_ids.dtype))
    ids = input_ids[valid].long()  # (n,)
    tok_cls = cls.unsqueeze(1).expand_as(input_ids)[valid]  # (n,)
    counts = torch.bincount(tok_cls * vocab_size + ids, minlength=n_cls * vocab_size)
    counts = counts.reshape(n_cls, vocab_size).double()  # (c, v)
    seen = counts.sum(dim=0) > 0  # (v,)
    if n_cls < 2 or not seen.any():
        return torch.zeros(vocab_size)
    if score == "log_odds_z":
        return _znorm_where(_log_odds_z(counts, vocab_size), seen, eps).float()
    if score == "information":
        return _znorm_where(_class_information(counts), seen, eps).float()
    p = (counts + 1.0) / (counts.sum(dim=1, keepdim=True) + vocab_size)  # (c, v)
    logp = p.log()
    # sum_{c' != c} log(p_c / p_c') = C log p_c - sum_c' log p_c'
    values = (p * (n_cls * logp - logp.sum(dim=0, keepdim=True))).sum(dim=0)  # (v,)
    return _znorm_where(values, seen, eps).float()


def _class_information(counts: torch.Tensor, prior_strength: float = INFORMATION_PRIOR) -> torch.Tensor:
    """KL(p(c | t) || p(c)) per token, p(c | t) shrunk towards p(c) with ``prior_strength`` pseudo-counts."""
    prior = counts.sum(dim=1, keepdim=True) / counts.sum().clamp_min(1.0)  # (c, 1)
    posterior = (counts + prior_strength * prior) / (counts.sum(dim=0, keepdim=True) + prior_strength)  # (c, v)
    return torch.xlogy(posterior, posterior / prior.clamp_min(1e-12)).sum(dim=0)


def _log_odds_z(counts: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """max_c |z_c(t)|: add-one weighted log-odds z-score of each class against the rest; counts (c, v)."""
    rest = counts.sum(dim=0, keepdim=True) - counts  # (c, v)
    n_c = counts.sum(dim=1, keepdim=True) + vocab_size  # (c, 1)
    n_r = rest.sum(dim=1, keepdim=True) + vocab_size

    def logit(y: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return torch.log(y + 1.0) - torch.log(n - y - 1.0)

    delta = logit(counts, n_c) - logit(rest, n_r)  # (c, v)
    z = delta / torch.sqrt(1.0 / (counts + 1.0) + 1.0 / (rest + 1.0))
    return z.abs().amax(dim=0)


def _znorm_where(values: torch.Tensor, where: torch.Tensor, eps: float) -> torch.Tensor:
    """(values - mean) / (std + eps) over ``where`` along the last axis; 0 elsewhere."""
    w = where.to(values.dtype)
    count = w.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = (values * w).sum(dim=-1, keepdim=True) / count
    var = (((values - mean) * w) ** 2).sum(dim=-1, keepdim=True) / count
    return torch.where(where, (values - mean) / (var.sqrt() + eps), torch.zeros_like(values))


def generation_importance(
    attentions: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    *,
    causal: bool,
    exclude_mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-token importance I^ (B, T) from bottom-layer attentions (eqs. 22-25).

    For each layer and head, A (T x T, rows = queries): b_j = mean over the queries that can attend to
    j of A_ij (with a causal mask only queries i >= j count, [R]); H_j = -sum_k A_jk log A_jk;
    s_j = b_j / (H_j + eps); I_j = mean over heads and layers; I^ = per-sequence Z-score over the real
    tokens. Pad positions and ``exclude_mask`` positions (e.g. BOS/CLS, [R]) are left out and get 0.
    """
    if not attentions:
        raise PrivacyConfigError("attentions", "a non-empty tuple of (B, H, T, T) tensors", attentions)
    valid = attention_mask.bool()  # (b, t)
    keep = valid if exclude_mask is None else valid & ~exclude_mask.bool()
    t = attention_mask.shape[1]
    reach = torch.ones(t, t, dtype=torch.bool, device=valid.device)  # (i, j): query i may attend j
    if causal:
        reach = torch.tril(reach)
    q = valid.float()  # (b, t) real queries
    n_queries = torch.einsum("bi,ij->bj", q, reach.float()).clamp_min(1.0)  # (b, t)
    total = torch.zeros(attention_mask.shape, dtype=torch.float32, device=valid.device)
    count = 0
    for layer in attentions:  # a few bottom layers; tensor code inside is batched
        a = layer.float()  # (b, h, t, t)
        base = torch.einsum("bhij,bi->bhj", a, q) / n_queries.unsqueeze(1)  # (b, h, t)
        entropy = -torch.xlogy(a, a).sum(dim=-1)  # (b, h, t)
        total = total + (base / (entropy + eps)).sum(dim=1)
        count += a.shape[1]
    score = total / count  # (b, t)
    return _znorm_where(score, keep, eps)


def top_fraction_threshold(
    table: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    fraction: float,
    *,
    ignore_ids: Sequence[int] = (),
) -> float:
    """The importance tau such that the tokens with ``table[id] > tau`` cover at most ``fraction`` of the
    real token occurrences in ``input_ids`` (B, T) (the 'top_fraction' map keeps ``table - tau``)."""
    valid = attention_mask.bool()
    if ignore_ids:
        valid &= ~torch.isin(input_ids, torch.as_tensor(list(ignore_ids), dtype=input_ids.dtype))
    ids = input_ids[valid].long()
    if ids.numel() == 0:
        return float(table.max())
    counts = torch.bincount(ids, minlength=table.shape[0]).double()
    order = torch.argsort(table, descending=True, stable=True)
    covered = counts[order].cumsum(0) / counts.sum()  # share of occurrences with importance >= table[order[i]]
    inside = int((covered <= fraction).sum())  # the longest prefix within the budget
    return float(table[order[inside]]) if inside < order.numel() else float(table.min()) - 1.0


def generation_threshold(fraction: float) -> float:
    """tau for per-sequence Z-scored (generation) importance: the standard normal (1 - fraction) quantile."""
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - fraction).clamp(1e-6, 1 - 1e-6)))


def importance_to_scale(
    importance: torch.Tensor,
    mode: str = "sigmoid",
    *,
    beta: float = 0.5,
    w_min: float = 0.5,
    w_max: float = 2.0,
) -> torch.Tensor:
    """Noise-scale factor w (noise scale is divided by w): '2 sigmoid(I^)' in (0, 2), clip(1 + beta I^),
    or 'top_fraction': w_max where I^ > 0 (the importance already shifted by its threshold), else w_min."""
    if mode == "sigmoid":
        return 2.0 * torch.sigmoid(importance)
    if mode == "linear":
        return (1.0 + beta * importance).clamp(w_min, w_max)
    if mode == "top_fraction":
        return torch.where(importance > 0, torch.full_like(importance, w_max), torch.full_like(importance, w_min))
    raise InvalidChoiceError("importance_to_scale", ("sigmoid", "linear", "top_fraction"), mode)
