"""The attacks' math, shared by the on-device audit and the evaluation: pure functions on tensors.

Promises: ``majority_rate`` is the chance level of a majority guesser; ``prototype_shortlist`` and
``nearest_prototype`` rank the vocabulary by cosine similarity to split-layer prototypes (A2);
``TokenDiscriminant`` is the learned inversion (A0): a linear discriminant over token classes with one
shared, shrunk covariance. Nothing here draws random numbers or knows about mechanisms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TokenDiscriminant", "majority_rate", "nearest_prototype", "prototype_shortlist"]


def majority_rate(values: torch.Tensor) -> float:
    """Chance level of a majority guesser: the frequency of the most common value in ``values`` (0 if empty)."""
    values = values.reshape(-1)
    if values.numel() == 0:
        return 0.0
    return float(torch.unique(values, return_counts=True)[1].max()) / values.numel()


def prototype_shortlist(
    hidden: torch.Tensor, prototypes: torch.Tensor, k: int, *, block_size: int = 4096
) -> torch.Tensor:
    """The ``k`` token ids whose prototypes are most cosine-similar to each row of ``hidden`` (n, d): (n, k), best first."""
    protos = F.normalize(prototypes.detach().float(), dim=-1).to(hidden.device)  # (V, d)
    k = min(k, protos.shape[0])
    out = []
    for start in range(0, hidden.shape[0], block_size):
        rows = F.normalize(hidden[start : start + block_size].detach().float(), dim=-1)  # (b, d)
        out.append((rows @ protos.T).topk(k, dim=1).indices)  # (b, k)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long, device=hidden.device)


def nearest_prototype(hidden: torch.Tensor, prototypes: torch.Tensor, *, block_size: int = 4096) -> torch.Tensor:
    """A2: argmax_v cos(h_i, p_v) for each row of ``hidden`` (n, d) over ``prototypes`` (V, d): token ids (n,)."""
    return prototype_shortlist(hidden, prototypes, 1, block_size=block_size)[:, 0]


@dataclass(frozen=True)
class TokenDiscriminant:
    """Learned inversion model: a linear discriminant over token classes.

    Each token class c is a Gaussian N(mu_c, S) with one pooled within-class covariance S, shrunk
    toward a scaled identity: S' = (1 - shrinkage) S + shrinkage * (tr S / d) I. Prediction is the
    maximum posterior class: argmax_c x^T S'^-1 mu_c - mu_c^T S'^-1 mu_c / 2 + log prior_c.
    ``classes`` (C,) token ids, ``weight`` (d, C), ``bias`` (C,); ``trained`` (C,) bool: the class was
    seen in training (the others are fallback classes).
    """

    classes: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    trained: torch.Tensor
    shrinkage: float

    @classmethod
    def fit(
        cls,
        hidden: torch.Tensor,
        token_ids: torch.Tensor,
        *,
        mean_hidden: torch.Tensor | None = None,
        fallback_ids: torch.Tensor | None = None,
        fallback_means: torch.Tensor | None = None,
        fallback_count: float = 0.5,
        shrinkage: float = 0.1,
        prior: str = "empirical",
    ) -> TokenDiscriminant:
        """Fit on representations ``hidden`` (n, d) labelled with their ``token_ids`` (n,).

        ``mean_hidden`` (n, d), aligned with ``hidden``: take the class means from these rows instead
        (e.g. the mechanism's noiseless output, when the attacker can compute it) and the covariance
        from ``hidden`` around them. ``fallback_ids`` (m,) with ``fallback_means`` (m, d): extra classes
        for tokens absent from ``token_ids`` (e.g. every vocabulary token, with its prototype as mean),
        each with prior weight ``fallback_count`` samples. ``prior``: 'empirical' (class frequencies:
        the Bayes classifier under the model) or 'uniform'.
        """
        if hidden.shape[0] == 0 or hidden.shape[0] != token_ids.shape[0]:
            raise ValueError(
                f"need n >= 1 rows with one token id each, got {tuple(hidden.shape)} and {tuple(token_ids.shape)}"
            )
        if not 0.0 <= shrinkage <= 1.0 or prior not in ("empirical", "uniform"):
            raise ValueError(
                f"shrinkage must be in [0, 1] and prior 'empirical' or 'uniform', got {shrinkage}, {prior!r}"
            )
        x = hidden.detach().double()  # (n, d)
        source = x if mean_hidden is None else mean_hidden.detach().double().to(x.device)  # (n, d)
        classes, inverse, counts = torch.unique(
            token_ids.reshape(-1).to(x.device), return_inverse=True, return_counts=True
        )
        means = torch.zeros(classes.shape[0], x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, source)
        means = means / counts.unsqueeze(1)  # (C, d)
        centred = x - means[inverse]  # (n, d)
        cov = centred.T @ centred / x.shape[0]  # (d, d) pooled within-class
        counts = counts.double()
        trained = torch.ones(classes.shape[0], dtype=torch.bool, device=x.device)
        if fallback_ids is not None:
            extra = ~torch.isin(fallback_ids.to(x.device), classes)  # (m,)
            classes = torch.cat([classes, fallback_ids.to(x.device)[extra]])
            means = torch.cat([means, fallback_means.detach().double().to(x.device)[extra]])
            counts = torch.cat(
                [counts, torch.full((int(extra.sum()),), float(fallback_count), dtype=x.dtype, device=x.device)]
            )
            trained = torch.cat([trained, torch.zeros(int(extra.sum()), dtype=torch.bool, device=x.device)])
        scale = float(torch.trace(cov)) / x.shape[1]
        scale = scale if scale > 0 else float(x.pow(2).mean()) or 1.0  # all classes singletons: isotropic
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        cov = (1.0 - shrinkage) * cov + (shrinkage * scale) * eye + 1e-6 * scale * eye
        weight = torch.cholesky_solve(means.T, torch.linalg.cholesky(cov))  # (d, C) = S'^-1 mu_c
        log_prior = torch.log(counts / counts.sum()) if prior == "empirical" else torch.zeros_like(counts)
        bias = -0.5 * (means.T * weight).sum(dim=0) + log_prior  # (C,)
        return cls(classes, weight.float(), bias.float(), trained, float(shrinkage))

    def predict(self, hidden: torch.Tensor, *, block_size: int = 4096) -> torch.Tensor:
        """The most probable token id for each row of ``hidden`` (n, d): (n,)."""
        weight, bias = self.weight.to(hidden.device), self.bias.to(hidden.device)
        out = [
            self.classes.to(hidden.device)[(hidden[s : s + block_size].float() @ weight + bias).argmax(dim=1)]
            for s in range(0, hidden.shape[0], block_size)
        ]  # each (b,)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=hidden.device)

    def coverage(self, token_ids: torch.Tensor) -> float:
        """Fraction of ``token_ids`` that were classes seen in training (fallback classes excluded)."""
        if token_ids.numel() == 0:
            return 0.0
        seen = self.classes[self.trained].to(token_ids.device)
        return float(torch.isin(token_ids.reshape(-1), seen).float().mean())
