"""d_chi-privacy noise and clipping: pure functions, the random generator is always an argument.

- ``sample_l2``: z = r v, v uniform on the unit sphere (g / ||g||, g ~ N(0, I_d)),
  r ~ Gamma(shape=d, scale); density proportional to exp(-||z||_2 / scale) (Feyisetan et al.),
  E||z||_2 = d * scale. With scale = Delta / eta this is eta-d_chi-private for the L2 metric scaled
  by 1/Delta.
- ``sample_l1``: z_j ~ Laplace(0, scale) independently; Var z_j = 2 scale^2.
- ``sample_gaussian``: z_j ~ N(0, std^2).

``torch.distributions.Gamma`` cannot take a generator, so Gamma(d, 1) with integer d is sampled as
a sum of d Exp(1) draws, Exp(1) = -log(1 - U) with U = torch.rand(generator=...): O(d) per token.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import torch

__all__ = [
    "clip_by_norm",
    "dchi_privacy_statement",
    "sample_exponential",
    "sample_gaussian",
    "sample_l1",
    "sample_l2",
    "secure_generator",
]

ScaleLike = float | torch.Tensor


def secure_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator seeded from the OS entropy source (``secrets``), for production use.

    The stream itself is torch's PRNG; only the seed is unpredictable.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def sample_exponential(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Exp(1) draws of ``shape`` (float32, finite, >= 0) on the generator's device."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)  # [0, 1)
    return -torch.log1p(-u)


def _scale_tensor(scale: ScaleLike, shape_prefix: tuple[int, ...], device: torch.device) -> torch.Tensor:
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=device)
    return scale_t.expand(shape_prefix)


def sample_l2(shape_prefix: Sequence[int], d: int, scale: ScaleLike, generator: torch.Generator) -> torch.Tensor:
    """Draw ``shape_prefix + (d,)`` l2 d_chi noise vectors with radius ~ Gamma(d, scale).

    ``scale`` (= Delta / eta, or Delta / (eta * w)) is a float or a tensor broadcastable to
    ``shape_prefix`` (one scale per token). Returns float32 on the generator's device.
    """
    prefix = tuple(shape_prefix)
    g = torch.randn(prefix + (d,), generator=generator, device=generator.device)  # (..., d)
    direction = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radius = sample_exponential(prefix + (d,), generator).sum(dim=-1)  # (...,) ~ Gamma(d, 1)
    radius = radius * _scale_tensor(scale, prefix, generator.device)
    return direction * radius.unsqueeze(-1)


def sample_l1(shape_prefix: Sequence[int], d: int, scale: ScaleLike, generator: torch.Generator) -> torch.Tensor:
    """Draw ``shape_prefix + (d,)`` i.i.d. Laplace(0, scale) coordinates (scale per token allowed).

    Laplace = difference of two Exp(1) draws, times the scale; always finite.
    """
    prefix = tuple(shape_prefix)
    e = sample_exponential((2,) + prefix + (d,), generator)  # (2, ..., d)
    scale_t = _scale_tensor(scale, prefix, generator.device).unsqueeze(-1)
    return (e[0] - e[1]) * scale_t


def sample_gaussian(shape_prefix: Sequence[int], d: int, std: ScaleLike, generator: torch.Generator) -> torch.Tensor:
    """Draw ``shape_prefix + (d,)`` i.i.d. N(0, std^2) coordinates (std per token allowed)."""
    prefix = tuple(shape_prefix)
    g = torch.randn(prefix + (d,), generator=generator, device=generator.device)
    return g * _scale_tensor(std, prefix, generator.device).unsqueeze(-1)


def clip_by_norm(hidden: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each vector along the last axis down to L2 norm <= ``clip_norm`` (shorter ones unchanged)."""
    norms = hidden.norm(dim=-1, keepdim=True)  # (..., 1)
    factor = (clip_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    return hidden * factor


def _summary(values: torch.Tensor | float) -> dict[str, float]:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    return {"min": float(t.min()), "max": float(t.max())}


def dchi_privacy_statement(
    *,
    eta: float,
    delta_sensitivity: float,
    metric: str,
    dim: int | None,
    eps_local: float = 0.0,
    scale_factors: torch.Tensor | float = 1.0,
    sensitivity_mode: str = "clip",
) -> dict:
    """The honest per-token privacy record of a (centred) d_chi mechanism (method.md section 4).

    For a token with importance factor w and a deterministic shift ||delta*||_2 <= eps_local, the
    privacy loss between representations h, h' is at most
    ``(eta * w / Delta) * (dist(h, h') + 2 * eps_local')``: d_chi-privacy with per-token budget
    ``eta * w`` (distance measured in units of Delta) plus the additive slack
    ``(eta * w / Delta) * 2 * eps_local'``. For ``metric='l2'`` dist is the L2 distance and
    eps_local' = eps_local; for ``'l1'`` dist is the L1 distance and eps_local' = sqrt(d) * eps_local
    (an L2 ball of radius e lies in an L1 ball of radius sqrt(d) e). Nothing more is claimed.
    ``scale_factors`` are the w_i used, or the bounds of the importance map (a tensor or 1.0); the
    record gives the min and max of the budget, the slack and the worst-case loss over them.
    """
    w = torch.as_tensor(scale_factors, dtype=torch.float64)
    budget = eta * w
    root_d = float("nan") if dim is None else math.sqrt(dim)
    shift = eps_local * (root_d if metric == "l1" and eps_local > 0 else 1.0)
    slack = budget / delta_sensitivity * 2.0 * shift
    if metric == "l2":
        diameter = delta_sensitivity
        dist = "||h - h'||_2"
    else:
        diameter = root_d * delta_sensitivity if sensitivity_mode == "clip" else float("nan")
        dist = "||h - h'||_1"
    worst = budget / delta_sensitivity * diameter + slack
    notes = [
        "per token; a sequence of T tokens composes to the sum of the per-token losses",
        "w_i is computed from the token's own importance and is not itself privatised",
    ]
    if sensitivity_mode == "diameter":
        notes.append("Delta is the empirical diameter of the fitting sample, not a bound for unseen inputs")
    if metric == "l1" and sensitivity_mode == "clip":
        notes.append("clipping bounds the L2 norm; the L1 diameter of the clipped set is sqrt(d) * Delta")
    return {
        "definition": f"Pr[M(h)=y] <= exp(eta_i / Delta * ({dist} + 2 * eps_shift)) Pr[M(h')=y]",
        "metric": metric,
        "eta": float(eta),
        "sensitivity_mode": sensitivity_mode,
        "Delta": float(delta_sensitivity),
        "eps_local": float(eps_local),
        "eps_shift": float(shift),
        "per_token_budget": _summary(budget),
        "additive_slack": _summary(slack) if math.isfinite(shift) else None,
        "worst_case_loss_per_token": _summary(worst) if math.isfinite(diameter) else None,
        "notes": notes,
    }
