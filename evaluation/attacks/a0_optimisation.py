"""A0, inversion by optimisation (method.md section 7).

Relax each token to a distribution softmax(Z_i / temperature) over candidate tokens, embed it as the
mixture of their input embeddings, run the bottom with the true attention mask, and minimise the
distance to the observed h~ with Adam; the guess is the argmax candidate.

- Naive: squared L2 between the bottom's output and h~, candidates = the ``shortlist`` (32) most
  cosine-similar prototypes, uniform start.
- Adaptive (the best response, method.md section 9): the bottom's output goes through the mechanism's
  deterministic part (clipping; the OPT-3 shift at the current argmax tokens, straight-through) and
  the distance is the noise's negative log-likelihood at each position's *own* noise scale, read from
  its norm (``likelihood='mechanism'``: L1 / b_i for Laplace / d_chi l1, L2 / b_i for d_chi l2,
  L2^2 / 2 b_i^2 for Gaussian), so near-clean positions weigh as much as their precision says. The
  candidates are the whole vocabulary (no shortlist: a token outside a shortlist is a sure miss), the
  relaxation starts at the per-level Bayes decoder's posterior (``init='bayes'``) and the objective is
  the MAP one: the noise NLL plus the relaxed tokens' expected -log frequency prior (``prior``; without
  it the optimisation drifts from the Bayes start to worse guesses: 0.33 vs 0.40 on the tiny test model).

Options: ``shortlist`` ('auto': 32 naive, None adaptive; an int caps both), ``likelihood`` ('auto':
'mechanism' adaptive, 'plain' naive: the old unweighted distance), ``init`` ('auto': 'bayes' over the
full vocabulary, else 'uniform'), ``prior`` ('auto': 'frequency' with the mechanism likelihood, else
'none'; the old form is ``shortlist=32, likelihood='plain', init='uniform'``). Bounded cost: at most ``max_sequences`` random texts (None: all),
``steps`` Adam steps, ``batch_size`` texts at a time and at most ``max_cells`` (text x position x
candidate) entries per batch (full-vocabulary batches shrink to fit); embeddings are mixed with one
matrix product, never gathered per candidate. ``details["shortlist_hit"]``: how often the truth was
among the candidates (1 without a shortlist).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import prototype_shortlist

from .base import THREAT_MODELS, AttackResult, Observation, check_threat_models, default_generator, token_result
from .kit import AttackKit

__all__ = ["a0_optimisation"]


def _candidates(
    hidden: torch.Tensor, mask: torch.Tensor, prototypes: torch.Tensor, k: int | None
) -> torch.Tensor | None:
    """(b, t, K) candidate token ids per position; None for the whole vocabulary."""
    v = prototypes.shape[0]
    if k is None or k >= v:
        return None
    cand = torch.zeros(*mask.shape, k, dtype=torch.long, device=hidden.device)  # (b, t, k)
    real = mask.bool()
    cand[real] = prototype_shortlist(hidden[real], prototypes, k)
    return cand


def _nll(kit: AttackKit, out: torch.Tensor, observed: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """(b, t) the noise's negative log-likelihood of ``observed`` given the noiseless ``out`` (b, t, d),
    at per-position ``scale`` (b, t) (None: the unweighted ``KnownMechanism.distance``)."""
    noise = kit.known.noise
    if scale is None or noise == "none":
        return kit.known.distance(out, observed)
    diff = out - observed
    if noise == "laplace":
        return diff.abs().sum(dim=-1) / scale
    if noise == "l2":
        return diff.norm(dim=-1) / scale
    return diff.pow(2).sum(dim=-1) / (2.0 * scale.pow(2))


def _invert_batch(
    hidden: torch.Tensor, mask: torch.Tensor, kit: AttackKit, adaptive: bool, cand: torch.Tensor | None,
    z0: torch.Tensor, scale: torch.Tensor | None, steps: int, lr: float, temperature: float,
    neg_log_prior: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Optimise relaxed tokens for one batch from logits ``z0`` (b, t, K); returns the argmax token ids (b, t)."""
    emb = kit.embeddings.to(hidden.device)
    pick = lambda z: z.argmax(dim=-1) if cand is None else cand.gather(-1, z.argmax(dim=-1, keepdim=True))[..., 0]
    z = z0.clone().requires_grad_(True)  # (b, t, k)
    opt = torch.optim.Adam([z], lr=lr)
    weight = mask.to(hidden.dtype)  # (b, t)
    for _ in range(steps):
        probs = (z / temperature).softmax(dim=-1)
        x = probs @ emb if cand is None else torch.einsum("btk,btkd->btd", probs, emb[cand])  # (b, t, d_e)
        out = kit.bottom(None, mask, inputs_embeds=x).hidden  # (b, t, d)
        if adaptive:
            out = kit.known.apply(out, mask, pick(z.detach()))
            dist = _nll(kit, out, hidden, scale)  # (b, t)
        else:
            dist = (out - hidden).pow(2).sum(dim=-1)  # (b, t)
        if neg_log_prior is not None:  # MAP, not ML: the expected -log prior of the relaxed tokens
            nlp = neg_log_prior if cand is None else neg_log_prior[cand]  # (V,) or (b, t, k)
            dist = dist + (probs @ nlp if cand is None else (probs * nlp).sum(dim=-1))  # (b, t)
        loss = (dist * weight).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return pick(z.detach())


def _neg_log_prior(kit: AttackKit) -> torch.Tensor:
    """(|V|,) -log prior of every token: the Bayes decoder's public frequencies (unseen: its pseudo-count)."""
    decoder = kit.bayes_decoder("adaptive")
    out = torch.full((kit.embeddings.shape[0],), float(-decoder.log_prior.min()))
    out[decoder.classes] = -decoder.log_prior
    return out


@torch.no_grad()
def _bayes_start(
    kit: AttackKit, hidden: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """(b, t, |V|) initial logits: temperature x the per-level Bayes log-posterior (clamped at -30 nats)."""
    decoder = kit.bayes_decoder("adaptive")
    v = kit.embeddings.shape[0]
    z = torch.zeros(*mask.shape, v, device=hidden.device)
    real = mask.bool()
    rows = hidden[real].float().cpu()
    post = decoder.log_posterior(rows, None if scale is None else scale[real].cpu()).clamp_min(-30.0)  # (m, C)
    full = torch.full((rows.shape[0], v), -30.0)
    full[:, decoder.classes] = post
    z[real] = (temperature * full).to(hidden.device)
    return z


def a0_optimisation(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    steps: int = 30,
    lr: float = 0.05,
    temperature: float = 0.05,
    shortlist: int | None | str = "auto",
    likelihood: str = "auto",
    init: str = "auto",
    max_sequences: int | None = 32,
    batch_size: int = 16,
    max_cells: int = 2**23,
    prior: str = "auto",
) -> list[AttackResult]:
    """A0 by optimisation on (a random subset of) ``observation``; one result per threat model.

    ``generator`` (default seed 0) picks the attacked texts; the optimisation itself is deterministic."""
    if prior not in ("auto", "frequency", "none"):
        raise ValueError(f"prior must be 'auto', 'frequency' or 'none', got {prior!r}")
    if likelihood not in ("auto", "plain", "mechanism") or init not in ("auto", "uniform", "bayes"):
        raise ValueError(
            f"likelihood must be auto/plain/mechanism and init auto/uniform/bayes, got {likelihood!r}, {init!r}"
        )
    obs = observation.sample(max_sequences, default_generator(generator))
    device = kit.device
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        adaptive = model == "adaptive"
        k = (None if adaptive else 32) if shortlist == "auto" else shortlist
        form = ("mechanism" if adaptive else "plain") if likelihood == "auto" else likelihood
        protos = kit.attack_prototypes(model)
        full = k is None or k >= protos.shape[0]
        start = ("bayes" if full and adaptive else "uniform") if init == "auto" else init
        width = protos.shape[0] if full else k
        per_batch = max(1, min(batch_size, max_cells // max(1, obs.input_ids.shape[1] * width)))
        scale_all = None
        if form == "mechanism" and kit.known.noise != "none":
            real = obs.attention_mask.bool()
            scale_all = torch.zeros(obs.attention_mask.shape)
            scale_all[real] = kit.exposure_detector().predict_scale(obs.hidden[real].float()).cpu()
            floor = 1e-4 * float(obs.hidden[real].float().norm(dim=-1).median()) if bool(real.any()) else 1e-6
            scale_all = scale_all.clamp_min(max(floor, 1e-12))
        use_prior = (form == "mechanism") if prior == "auto" else prior == "frequency"
        nlp = _neg_log_prior(kit).to(device) if use_prior and form == "mechanism" else None
        predicted, hit = torch.zeros_like(obs.input_ids), []
        for s in range(0, obs.n, per_batch):
            rows = slice(s, s + per_batch)
            hidden = obs.hidden[rows].to(device).float()  # (b, t, d)
            mask = obs.attention_mask[rows].to(device)  # (b, t)
            scale = None if scale_all is None else scale_all[rows].to(device)
            cand = _candidates(hidden, mask, protos, None if full else k)  # (b, t, k) or None
            if start == "bayes":
                z0 = _bayes_start(kit, hidden, mask, scale if form == "mechanism" else None, temperature)
                if cand is not None:
                    z0 = z0.gather(-1, cand)
            else:
                z0 = torch.zeros(*mask.shape, width, device=device)
            ids = _invert_batch(hidden, mask, kit, adaptive, cand, z0, scale, steps, lr, temperature, nlp)
            predicted[rows] = ids.cpu()
            if cand is not None:
                truth = obs.input_ids[rows].to(device)
                hit.append((cand == truth.unsqueeze(-1)).any(dim=-1)[obs.scored[rows].to(device)].cpu())
        details = {
            "steps": steps, "lr": lr, "temperature": temperature, "shortlist": None if full else k,
            "likelihood": form, "init": start, "prior": nlp is not None, "sequences": obs.n,
            "shortlist_hit": float(torch.cat(hit).float().mean()) if hit else 1.0,
            "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        results.append(token_result("A0-opt", model, predicted, obs, details))
    return results
