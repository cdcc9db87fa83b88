"""A0, inversion by optimisation (method.md section 7).

Relax each token to a distribution softmax(Z_i / temperature) over candidate tokens, embed it as the
mixture of their input embeddings, run the bottom with the true attention mask, and minimise the
distance to the observed h~ with Adam; the guess is the argmax candidate.

- Naive: squared L2 between the bottom's output and h~.
- Adaptive: the bottom's output goes through the mechanism's deterministic part (clipping; the
  OPT-3 shift at the current argmax tokens, straight-through) and the distance is the noise's negative
  log-likelihood (L1 for Laplace / d_chi l1, L2 norm for d_chi l2, squared L2 for Gaussian).

Bounded cost: the candidates of each position are its ``shortlist`` most cosine-similar prototypes
(None: the whole vocabulary, |V| times more memory and time), at most ``max_sequences`` random texts
are attacked (None: all), for ``steps`` Adam steps, ``batch_size`` texts at a time. The shortlist is
the attacker's own choice from h~, so a token outside it is a miss (``details["shortlist_hit"]``
says how often the truth was among the candidates).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import prototype_shortlist

from .base import THREAT_MODELS, AttackResult, Observation, check_threat_models, default_generator, token_result
from .kit import AttackKit

__all__ = ["a0_optimisation"]


def _candidates(hidden: torch.Tensor, mask: torch.Tensor, prototypes: torch.Tensor, k: int | None) -> torch.Tensor:
    """(b, t, K) candidate token ids per position (K = |V| without a shortlist)."""
    v = prototypes.shape[0]
    if k is None or k >= v:
        return torch.arange(v, device=hidden.device).expand(*mask.shape, v)
    cand = torch.zeros(*mask.shape, k, dtype=torch.long, device=hidden.device)  # (b, t, k)
    real = mask.bool()
    cand[real] = prototype_shortlist(hidden[real], prototypes, k)
    return cand


def _invert_batch(
    hidden: torch.Tensor, mask: torch.Tensor, kit: AttackKit, adaptive: bool, cand: torch.Tensor,
    steps: int, lr: float, temperature: float,
) -> torch.Tensor:  # fmt: skip
    """Optimise relaxed tokens for one batch; returns the argmax token ids (b, t)."""
    emb = kit.embeddings.to(hidden.device)[cand]  # (b, t, k, d_e)
    z = torch.zeros(cand.shape, device=hidden.device, requires_grad=True)  # (b, t, k): uniform start
    opt = torch.optim.Adam([z], lr=lr)
    weight = mask.to(hidden.dtype)  # (b, t)
    for _ in range(steps):
        x = torch.einsum("btk,btkd->btd", (z / temperature).softmax(dim=-1), emb)  # (b, t, d_e)
        out = kit.bottom(None, mask, inputs_embeds=x).hidden  # (b, t, d)
        if adaptive:
            ids = cand.gather(-1, z.detach().argmax(dim=-1, keepdim=True))[..., 0]  # (b, t)
            dist = kit.known.distance(kit.known.apply(out, mask, ids), hidden)  # (b, t)
        else:
            dist = (out - hidden).pow(2).sum(dim=-1)  # (b, t)
        loss = (dist * weight).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cand.gather(-1, z.detach().argmax(dim=-1, keepdim=True))[..., 0]


def a0_optimisation(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    steps: int = 30,
    lr: float = 0.05,
    temperature: float = 0.05,
    shortlist: int | None = 32,
    max_sequences: int | None = 32,
    batch_size: int = 16,
) -> list[AttackResult]:
    """A0 by optimisation on (a random subset of) ``observation``; one result per threat model.

    ``generator`` (default seed 0) picks the attacked texts; the optimisation itself is deterministic.
    """
    obs = observation.sample(max_sequences, default_generator(generator))
    device = kit.device
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        protos = kit.attack_prototypes(model)
        predicted, hit = torch.zeros_like(obs.input_ids), []
        for s in range(0, obs.n, batch_size):
            hidden = obs.hidden[s : s + batch_size].to(device).float()  # (b, t, d)
            mask = obs.attention_mask[s : s + batch_size].to(device)  # (b, t)
            cand = _candidates(hidden, mask, protos, shortlist)  # (b, t, k)
            ids = _invert_batch(hidden, mask, kit, model == "adaptive", cand, steps, lr, temperature)
            predicted[s : s + batch_size] = ids.cpu()
            truth = obs.input_ids[s : s + batch_size].to(device)
            hit.append((cand == truth.unsqueeze(-1)).any(dim=-1)[obs.scored[s : s + batch_size].to(device)].cpu())
        details = {
            "steps": steps, "lr": lr, "temperature": temperature, "shortlist": shortlist,
            "sequences": obs.n, "shortlist_hit": float(torch.cat(hit).float().mean()) if hit else 0.0,
            "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        results.append(token_result("A0-opt", model, predicted, obs, details))
    return results
