"""OPT-3: the per-token optimal perturbation direction (method.md section 3, eqs. 15-18).

For a token t with representation h and neighbour prototypes p_u (u in N_k(t)), p_v (v in H_n(t)):

    minimise   G(delta) + lambda * L_AIA(delta)
    G(delta)  = mean_u s(h + delta, p_u) - mean_v s(h + delta, p_v),   s = Pearson + cos
    L_AIA     = -||h + delta - c||_2                (aia_sign = -1, "away"; +1 is the "toward" reading)
    s.t.        ||delta||_2 <= eps_local             (eq. 18)
                ||h + delta - mu||_2 <= R_eff        (eq. 14; R_eff = max(R, ||h - mu||) so delta = 0 is feasible)

Because cos(x, p) = <x/||x||, p/||p||> and Pearson(x, p) = cos(x - mean x, p - mean p), the neighbour
means collapse into two fixed direction vectors per token (``neighbour_directions``):
G(delta) = <unit(x), a_t> + <centred_unit(x), b_t> with x = h + delta. They cost O(N (k + m) d) once
per batch; each of the T steps then costs O(N d). The solver is projected gradient descent from
delta = 0, all tokens at once: a step of length ``step_size * eps_local`` along -g/||g|| ("normalized")
or ``-step_size * eps_local * g`` ("raw"), then projection onto the eps_local ball, then onto the
mu ball (projection onto a convex set containing 0 does not increase ||delta||, so both constraints
hold after every step). The best iterate seen is returned, so the objective never ends above its
value at delta = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidChoiceError

__all__ = ["Opt3Result", "centred_unit", "neighbour_directions", "opt3_delta", "opt3_objective", "similarity", "unit"]

_EPS = 1e-12


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last axis (zero vectors stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def centred_unit(x: torch.Tensor) -> torch.Tensor:
    """(x - mean x) / ||x - mean x|| along the last axis: Pearson(a, b) = <centred_unit(a), centred_unit(b)>."""
    return unit(x - x.mean(dim=-1, keepdim=True))


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "pearson+cos") -> torch.Tensor:
    """s(a, b) along the last axis (broadcasting): 'pearson+cos', 'cos' or 'pearson'."""
    out = torch.zeros(torch.broadcast_shapes(a.shape, b.shape)[:-1], dtype=a.dtype, device=a.device)
    if kind in ("pearson+cos", "cos"):
        out = out + (unit(a) * unit(b)).sum(dim=-1)
    if kind in ("pearson+cos", "pearson"):
        out = out + (centred_unit(a) * centred_unit(b)).sum(dim=-1)
    return out


def _bag_mean(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Mean of ``table`` rows listed in ``rows`` (U, w) with -1 pads; empty rows give 0. (U, d)."""
    valid = rows >= 0
    weights = valid.to(table.dtype) / valid.sum(dim=1, keepdim=True).clamp_min(1).to(table.dtype)
    return F.embedding_bag(rows.clamp_min(0), table, mode="sum", per_sample_weights=weights)


def neighbour_directions(
    token_ids: torch.Tensor,
    unit_protos: torch.Tensor | None,
    centred_protos: torch.Tensor | None,
    knn: torch.Tensor,
    hop: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-token directions (a_t, b_t), each (N, d) or None when its table is None.

    a_t = mean_{u in N_k(t)} unit(p_u) - mean_{v in H_n(t)} unit(p_v); b_t the same with centred units.
    ``token_ids`` (N,); ``knn`` (|V|, k); ``hop`` (|V|, m) with -1 pads (an empty H_n contributes 0).
    """
    uniq, inverse = torch.unique(token_ids, return_inverse=True)  # (u,), (n,)
    near_rows, far_rows = knn[uniq], hop[uniq]  # (u, k), (u, m)
    out = []
    for table in (unit_protos, centred_protos):
        if table is None:
            out.append(None)
            continue
        direction = _bag_mean(near_rows, table) - _bag_mean(far_rows, table)  # (u, d)
        out.append(direction[inverse])
    return out[0], out[1]


def opt3_objective(
    x: torch.Tensor,
    dir_cos: torch.Tensor | None,
    dir_pearson: torch.Tensor | None,
    centroid: torch.Tensor,
    lam: float,
    aia_sign: float = -1.0,
) -> torch.Tensor:
    """G(x) + lam * aia_sign * ||x - c|| per token, x (N, d) -> (N,)."""
    value = lam * aia_sign * torch.sqrt(((x - centroid) ** 2).sum(dim=-1) + _EPS)
    if dir_cos is not None:
        value = value + (unit(x) * dir_cos).sum(dim=-1)
    if dir_pearson is not None:
        value = value + (centred_unit(x) * dir_pearson).sum(dim=-1)
    return value


def _unit_term_grad(x: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Value <unit(x), a> and its gradient (a - <u, a> u) / ||x|| (closed form, no autograd)."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(_EPS)  # (n, 1)
    u = x / norm
    value = (u * direction).sum(dim=-1)  # (n,)
    return value, (direction - value.unsqueeze(-1) * u) / norm


def opt3_value_and_grad(
    x: torch.Tensor,
    dir_cos: torch.Tensor | None,
    dir_pearson: torch.Tensor | None,
    centroid: torch.Tensor,
    lam: float,
    aia_sign: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`opt3_objective` (N,) and its gradient (N, d) in closed form (same values as autograd)."""
    diff = x - centroid
    dist = torch.sqrt((diff**2).sum(dim=-1) + _EPS)  # (n,)
    value = lam * aia_sign * dist
    grad = (lam * aia_sign / dist).unsqueeze(-1) * diff
    if dir_cos is not None:
        v, g = _unit_term_grad(x, dir_cos)
        value, grad = value + v, grad + g
    if dir_pearson is not None:
        v, g = _unit_term_grad(x - x.mean(dim=-1, keepdim=True), dir_pearson)
        value, grad = value + v, grad + (g - g.mean(dim=-1, keepdim=True))  # through the centring
    return value, grad


@dataclass(frozen=True)
class Opt3Result:
    """``delta`` (N, d): the best feasible iterate; objective per token at delta = 0 and at ``delta``."""

    delta: torch.Tensor
    objective_start: torch.Tensor
    objective_end: torch.Tensor


def _project(
    delta: torch.Tensor, h: torch.Tensor, mu: torch.Tensor, eps: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    delta = delta * (eps / delta.norm(dim=-1).clamp_min(_EPS)).clamp(max=1.0).unsqueeze(-1)  # ||delta|| <= eps
    y = h + delta - mu  # (n, d)
    y = y * (radius / y.norm(dim=-1).clamp_min(_EPS)).clamp(max=1.0).unsqueeze(-1)  # ||h + delta - mu|| <= R
    return mu + y - h


def opt3_delta(
    h: torch.Tensor,
    dir_cos: torch.Tensor | None,
    dir_pearson: torch.Tensor | None,
    centroid: torch.Tensor,
    mu: torch.Tensor,
    radius: float | torch.Tensor,
    eps_local: float | torch.Tensor,
    *,
    lam: float = 0.5,
    aia_sign: float = -1.0,
    steps: int = 20,
    step_size: float = 0.1,
    step_rule: str = "normalized",
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> Opt3Result:
    """Solve eq. 17 for N tokens at once by projected gradient descent (see the module docstring).

    ``h``, ``centroid``, ``dir_*`` are (N, d); ``mu`` (d,); ``radius``/``eps_local`` floats or (N,).
    ``callback(step, delta)`` sees every projected iterate (for audits and tests). The result satisfies
    ||delta|| <= eps_local and ||h + delta - mu|| <= max(R, ||h - mu||) for every token.
    """
    if step_rule not in ("normalized", "raw"):
        raise InvalidChoiceError("step_rule", ("normalized", "raw"), step_rule)
    h = h.detach().float()
    n = h.shape[0]
    eps = torch.as_tensor(eps_local, dtype=h.dtype, device=h.device).expand(n)
    radius = torch.maximum(torch.as_tensor(radius, dtype=h.dtype, device=h.device).expand(n), (h - mu).norm(dim=-1))
    delta = torch.zeros_like(h)  # (n, d)
    best_delta, best_value, start_value = delta, None, None
    for step in range(steps + 1):
        value, grad = opt3_value_and_grad(h + delta, dir_cos, dir_pearson, centroid, lam, aia_sign)  # (n,), (n, d)
        if best_value is None:
            start_value = best_value = value
        else:
            better = value < best_value
            best_value = torch.where(better, value, best_value)
            best_delta = torch.where(better.unsqueeze(-1), delta, best_delta)
        if step == steps:
            break
        if step_rule == "normalized":
            grad = grad / grad.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        delta = _project(delta - step_size * eps.unsqueeze(-1) * grad, h, mu, eps, radius)
        if callback is not None:
            callback(step, delta)
    return Opt3Result(best_delta, start_value, best_value)
