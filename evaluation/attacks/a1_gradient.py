"""A1, gradient inversion (DLG-style) from the returned gradients.

What the server observes on the head-on-device protocol: the perturbed h~ (N, T, d), the attention
mask, and for each text the row of dL/d(representation) (d,) the device returns through its private
head. From these it computes its own LoRA parameter gradients J_theta(h~)^T dL/d(representation)
(per text, or summed over a step's batch). Everything a gradient inversion can use is therefore a
function of (h~, the rows); it cannot beat an attack on h~ plus the rows. What the rows add beyond
h~ is the label partition (``a1_label``: they cluster by label); the old label attack (argmin of a
dL/d(logits) row) no longer applies, since no logits or head cross the wire.

A1 proper reconstructs the tokens from the per-text gradients of the server's trainable parameters
(LoRA; ``params="all"``: every top parameter, which the server can also compute): relax the tokens
to softmax(Z / temperature) over a candidate vocabulary, run bottom (adaptive: + the mechanism's
deterministic part, the OPT-3 shift straight-through) + top, and match the per-text parameter
gradients <top(x), g_i> to the observed ones with Adam, the loss being the sum over parameter
tensors and texts of 1 - cosine similarity (one tensor cannot drown the others). The candidate
vocabulary is the tokens of the public text plus the special tokens (``vocabulary="public"``) or all
of |V|. Per-text gradients use ``torch.func`` (vmap of grad), with the top run in eval mode and
eager attention (double backward through it). Cost is bounded by ``max_sequences`` and ``steps``.
``details["final_loss"]`` is the mean 1 - cosine per tensor and text at the end: a low loss with a
low ASR means the gradients are matched by a wrong (relaxed) input, i.e. they do not pin the tokens.

Measured on the old protocol (server-side head; no noise, untrained top, LoRA r=8): tiny random BERT
(|V| = 64) ~0.9 of tokens in 100 steps; minilm-l6 split at 3 (3,123 public-text candidates)
~0.01-0.03 in 100-300 steps with final loss ~0.05: at LoRA initialisation B = 0, so only the B
gradients carry signal, and they are matched by wrong mixtures. The server's stronger channel is
h~ itself (A0, A2).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .base import (
    THREAT_MODELS,
    AttackResult,
    AttackUnavailable,
    Observation,
    check_threat_models,
    default_generator,
    token_result,
)
from .gradients import top_mode
from .kit import AttackKit

__all__ = ["a1_gradient_inversion"]


def _vocabulary(kit: AttackKit, vocabulary: str) -> torch.Tensor:
    """Candidate token ids (K,): 'public' (tokens of the public texts + special ids) or 'all'."""
    v = kit.embeddings.shape[0]
    if vocabulary == "all":
        return torch.arange(v)
    if vocabulary != "public":
        raise ValueError(f"vocabulary must be 'public' or 'all', got {vocabulary!r}")
    if not kit.public_texts:
        raise AttackUnavailable("vocabulary='public' needs public texts in the kit")
    ids, mask = kit.encode(list(kit.public_texts))
    return torch.unique(torch.cat([ids[mask.bool()], torch.tensor(kit.special_ids, dtype=torch.long)]))


def _per_sample_grads(top: torch.nn.Module, params: dict[str, torch.Tensor]):
    """f(params, hidden (b, t, d), mask (b, t), g (b, d_out)) -> {name: (b, *shape)}: per-text gradients
    of <top(hidden_i), g_i> (= the text's parameter gradient given its returned row g_i = dL/d(output))."""

    def one(p, hidden, mask, g):
        out = functional_call(top, p, (hidden.unsqueeze(0), mask.unsqueeze(0)))  # (1, d_out)
        return (out[0] * g).sum()

    return vmap(grad(one), in_dims=(None, 0, 0, 0))


def _match_loss(dummy: dict[str, torch.Tensor], observed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over parameter tensors and texts of 1 - cos(dummy, observed) (tensors observed as 0 skipped)."""
    total = 0.0
    for name, obs in observed.items():
        b = obs.shape[0]
        total = total + (1 - F.cosine_similarity(dummy[name].reshape(b, -1), obs.reshape(b, -1), dim=1)).sum()
    return total


def a1_gradient_inversion(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    steps: int = 100,
    lr: float = 0.1,
    temperature: float = 1.0,
    vocabulary: str = "public",
    params: str = "trainable",
    max_sequences: int | None = 4,
    batch_size: int = 8,
) -> list[AttackResult]:
    """A1 on (a random subset of) ``observation``: top-1 token recovery from per-text parameter
    gradients; one result per threat model. Needs ``kit.top`` (the server's top, e.g.
    ``TopTrainer.model``) and ``observation.grad_output``. ``generator`` (default seed 0) picks the texts.
    """
    if kit.top is None or observation.grad_output is None:
        raise AttackUnavailable("A1 needs the server's top model in the kit and recorded grad_output")
    if params not in ("trainable", "all"):
        raise ValueError(f"params must be 'trainable' or 'all', got {params!r}")
    obs = observation.sample(max_sequences, default_generator(generator))
    device = kit.device
    vocab = _vocabulary(kit, vocabulary).to(device)  # (k,)
    emb = kit.embeddings.to(device)[vocab]  # (k, d_e)
    results = []
    with top_mode(kit.top, eager=True) as top:
        theta = {n: p.detach() for n, p in top.named_parameters() if params == "all" or p.requires_grad}
        per_sample = _per_sample_grads(top, theta)
        for model in check_threat_models(threat_models):
            started = time.perf_counter()
            predicted, final = torch.zeros_like(obs.input_ids), []
            for s in range(0, obs.n, batch_size):
                hidden = obs.hidden[s : s + batch_size].to(device).float()  # (b, t, d)
                mask = obs.attention_mask[s : s + batch_size].to(device)  # (b, t)
                g = obs.grad_output[s : s + batch_size].to(device).float()  # (b, d_out)
                observed = {n: v for n, v in per_sample(theta, hidden, mask, g).items() if v.abs().sum() > 0}
                z = torch.zeros(*mask.shape, vocab.shape[0], device=device, requires_grad=True)  # (b, t, k)
                opt = torch.optim.Adam([z], lr=lr)
                loss = torch.zeros(())
                for _ in range(steps if observed else 0):  # all-zero gradients: nothing to match
                    x = (z / temperature).softmax(dim=-1) @ emb  # (b, t, d_e)
                    out = kit.bottom(None, mask, inputs_embeds=x).hidden  # (b, t, d)
                    if model == "adaptive":
                        out = kit.known.apply(out, mask, vocab[z.detach().argmax(dim=-1)], use_attention=False)
                    loss = _match_loss(per_sample(theta, out, mask, g), observed)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                final.append(float(loss.detach()) / max(len(observed) * mask.shape[0], 1))
                predicted[s : s + batch_size] = vocab[z.detach().argmax(dim=-1)].cpu()
            coverage = float(torch.isin(obs.input_ids[obs.scored], vocab.cpu()).float().mean())
            details = {
                "steps": steps, "lr": lr, "temperature": temperature, "vocabulary": vocabulary,
                "candidates": int(vocab.numel()), "coverage": coverage, "params": params,
                "matched_tensors": len(theta), "final_loss": sum(final) / max(len(final), 1), "sequences": obs.n,
                "seconds": round(time.perf_counter() - started, 3),
            }  # fmt: skip
            results.append(token_result("A1", model, predicted, obs, details))
    return results
