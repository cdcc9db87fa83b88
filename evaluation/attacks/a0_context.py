"""A0-context: a context decoder over the whole sequence of received states (method.md section 9).

A layer-l state carries its neighbours' identity, and the exposed (least noisy) positions of a text
say a lot about the buried ones; a per-token decoder cannot use that. This attack trains a small
sequence model (a 2-layer transformer encoder, width ``width``) on public text passed through the
mechanism with *fresh noise every epoch* (``AttackKit.sample_public``: the noiseless output plus new
noise at each position's scale), and predicts every position's token.

Per position the model sees: the state whitened by the Bayes decoder's per-level variance, the log of
the detected noise scale (the precision feature), and the Bayes decoder's posterior over the output
classes (as a soft token embedding); its logits are the Bayes log-posterior (``LevelBayesDecoder``,
restricted to the output classes) plus a learned correction that starts at zero, so training starts
at the Bayes decoder and only moves away where context helps. Output classes: the ``max_classes``
most frequent public tokens seen at least twice, plus "other"; a position predicted "other" falls back
to the full-vocabulary Bayes decoder. ``holdout`` (10%, at most ``max_holdout``) of the public texts,
under fresh noise, pick the best checkpoint (checked ten times over ``max_epochs``, and at the time cap)
and then decide between it and the plain Bayes decoder (``details["selected"]``, ties to Bayes: the
attacker's own choice on public data).

Naive: trained on the clean public states with no noise feature. Cost is capped by ``max_seconds``
of training per threat model (and ``max_epochs``, ``max_steps``); ``details`` report epochs, steps and seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from client_sdk.audit import LevelBayesDecoder, average_views, distinct_views

from ._levels import bayes_decode, decode_likelihood
from .base import THREAT_MODELS, AttackResult, Observation, check_threat_models, default_generator, token_result
from .kit import AttackKit

__all__ = ["ContextDecoder", "a0_context"]


class ContextDecoder(nn.Module):
    """Per-position token logits over ``classes + 1`` outputs (the last is "other").

    Inputs per position: the whitened state (B, T, d), the Bayes posterior as sparse candidates (output
    class ``index`` and ``logp`` (B, T, k), every other class at ``_FLOOR``), a noise-level feature
    (B, T, 1). The model adds each position's soft token (its posterior's mean class embedding), the
    text's mean soft token (a bag of its words) and a learned position; a 2-layer transformer mixes the
    sequence. Logits = ``mix`` x the Bayes log-posterior + a correction that starts at zero, so at
    initialisation the model is the Bayes decoder."""

    def __init__(
        self, dim: int, classes: int, max_len: int, width: int = 128, layers: int = 2, heads: int = 4,
        dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.classes = classes
        self.state = nn.Linear(dim, width)
        self.soft = nn.Embedding(classes + 1, width)
        self.bag = nn.Linear(width, width, bias=False)
        self.level = nn.Linear(1, width)
        self.position = nn.Embedding(max_len, width)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, classes + 1)
        nn.init.normal_(self.soft.weight, std=width**-0.5)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.mix = nn.Parameter(torch.ones(()))

    def forward(
        self, whitened: torch.Tensor, index: torch.Tensor, logp: torch.Tensor, level: torch.Tensor, pad: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, C + 1) logits; ``pad`` (B, T) True at padding."""
        t = whitened.shape[1]
        real = (~pad).unsqueeze(-1).to(whitened.dtype)  # (b, t, 1)
        soft = (self.soft(index) * logp.exp().unsqueeze(-1)).sum(dim=-2) * real  # (b, t, w)
        bag = soft.sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True).clamp_min(1.0)  # (b, 1, w)
        h = self.state(whitened) + soft + self.bag(bag) + self.level(level) + self.position.weight[:t]
        h = self.encoder(self.drop(h), src_key_padding_mask=pad)  # (b, t, w)
        bayes = torch.full((*index.shape[:2], self.classes + 1), _FLOOR, dtype=logp.dtype).scatter(-1, index, logp)
        return self.mix * bayes + self.out(self.norm(h))


_FLOOR = -30.0  # log-posterior of the output classes outside a position's candidates


class _Features:
    """The decoder-derived inputs of the context model: whitened states and the Bayes posterior over the
    output classes as sparse candidates: the top ``k`` of the decoder restricted to them (Laplace
    re-ranked for Laplace noise) plus "other" at its prior, renormalised."""

    def __init__(
        self, decoder: LevelBayesDecoder, class_index: torch.Tensor, other_log_prior: float, form: str, k: int = 16
    ) -> None:
        self.decoder = decoder
        self.sub = decoder.subset(class_index)  # the output classes only
        self.classes = int(class_index.numel())
        self.other, self.form, self.k = other_log_prior, form, min(k, self.classes)

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor, scale: torch.Tensor | None, views=1) -> tuple[torch.Tensor, ...]:
        """(whitened (m, d), index (m, k + 1), logp (m, k + 1)) for ``rows`` (m, d) at ``scale`` (m,) or None."""
        nv = self.decoder.row_variance(rows.shape[0], scale, views)  # (m,)
        whitened = self.decoder.rotate(rows) / torch.sqrt(self.decoder.pooled + nv.unsqueeze(1))  # (m, d)
        index, logp = self.sub.top_candidates(rows, scale, views=views, k=self.k, likelihood=self.form)  # (m, k)
        other = torch.full((rows.shape[0], 1), self.other)
        logp = torch.cat([logp + math.log1p(-math.exp(self.other)), other], dim=1).log_softmax(dim=1)
        index = torch.cat([index, torch.full((rows.shape[0], 1), self.classes, dtype=torch.long)], dim=1)
        return whitened, index, logp


@dataclass
class _Inputs:
    """The context model's inputs for texts (n, t): ``whitened`` (n, t, d), sparse Bayes candidates
    ``index`` / ``logp`` (n, t, k + 1), ``level`` (n, t, 1); ``scale`` (m,): the detected noise scale of
    the real positions (None without one)."""

    whitened: torch.Tensor
    index: torch.Tensor
    logp: torch.Tensor
    level: torch.Tensor
    scale: torch.Tensor | None

    def batch(self, rows, t: int) -> tuple[torch.Tensor, ...]:
        return self.whitened[rows, :t], self.index[rows, :t], self.logp[rows, :t], self.level[rows, :t]


def _level_feature(scale: torch.Tensor | None, n: int, centre: float) -> torch.Tensor:
    """(n, 1) log noise scale relative to ``centre``, over 4 (zeros without a scale)."""
    if scale is None:
        return torch.zeros(n, 1)
    return (torch.log(scale.float().clamp_min(1e-12)) - centre).unsqueeze(1) / 4.0


@torch.no_grad()
def _inputs(
    hidden: torch.Tensor, mask: torch.Tensor, kit: AttackKit, model: str, features: _Features, centre: float, views=1
) -> _Inputs:
    """The context model's inputs for texts ``hidden`` (n, t, d) with ``mask`` (n, t)."""
    real = mask.bool()
    rows = hidden[real].float()  # (m, d)
    scale = None
    if model == "adaptive" and kit.known.noise != "none":
        scale = kit.exposure_detector().predict_scale(rows).cpu()
    whitened_rows, index_rows, logp_rows = features(rows, scale, views)
    n, t, d = hidden.shape
    k = index_rows.shape[1]
    out = _Inputs(
        torch.zeros(n, t, d), torch.full((n, t, k), features.classes, dtype=torch.long), torch.zeros(n, t, k),
        torch.zeros(n, t, 1), scale,
    )  # fmt: skip
    out.logp[..., :-1] = _FLOOR
    out.whitened[real], out.index[real], out.logp[real] = whitened_rows, index_rows, logp_rows
    out.level[real] = _level_feature(scale, rows.shape[0], centre)
    return out


def _predict(net: ContextDecoder, inputs: _Inputs, mask: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(n, t) argmax output class per position (eval mode, batched)."""
    net.eval()
    out = torch.zeros(mask.shape, dtype=torch.long)
    with torch.no_grad():
        for s in range(0, mask.shape[0], batch):
            rows = slice(s, s + batch)
            t = max(int(mask[rows].sum(dim=1).max()), 1)
            out[rows, :t] = net(*inputs.batch(rows, t), ~mask[rows, :t].bool()).argmax(dim=-1)
    return out


def a0_context(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    max_seconds: float = 45.0,
    max_epochs: int = 100,
    max_steps: int | None = None,
    max_classes: int = 2048,
    width: int = 128,
    layers: int = 2,
    batch_size: int = 32,
    lr: float = 3e-3,
    holdout: float = 0.1,
    max_holdout: int = 96,
    use_views: bool = False,
) -> list[AttackResult]:
    """A0-context on every scored token of ``observation``; one result per threat model.

    ``generator`` (default seed 0) draws the split, the initialisation and the training noise.
    ``max_seconds``: the training budget per threat model (the held-out checks and the final decode
    come on top); a time cap makes the result depend on the machine's speed, so ``max_steps`` (with a
    generous ``max_seconds``) gives a reproducible budget instead. ``use_views``: decode the average of ``observation.views`` (noise variance / the
    number of distinct views) instead of view 0."""
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    scored = observation.scored  # (n, t)
    truth = observation.input_ids[scored]
    target = _Target(observation.hidden, observation.attention_mask, scored, 1)
    if use_views and observation.views is not None:
        count = distinct_views(observation.views)  # (n,)
        views = count.unsqueeze(1).expand(scored.shape)  # (n, t)
        target = _Target(average_views(observation.views, dedupe=True), observation.attention_mask, scored, views)
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            predicted, details = _run(
                target, observation.input_ids, kit, model, seed, max_seconds=max_seconds, max_epochs=max_epochs,
                max_steps=max_steps,
                max_classes=max_classes, width=width, layers=layers, batch_size=batch_size, lr=lr, holdout=holdout,
                max_holdout=max_holdout,
            )  # fmt: skip
        classes = details.pop("_classes")
        details["coverage"] = float(torch.isin(truth, classes).float().mean()) if truth.numel() else 0.0
        details["seconds"] = round(time.perf_counter() - started, 3)
        results.append(token_result("A0-context", model, predicted, observation, details))
    return results


class _Target:
    """Texts to decode: states ``hidden`` (n, t, d), ``mask`` (n, t), the scored ``positions`` (n, t) and
    the number of distinct views averaged per position (an int or (n, t))."""

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, views) -> None:
        self.hidden, self.mask, self.positions, self.views = hidden, mask, positions, views

    def real_views(self):
        return self.views[self.mask.bool()].float() if torch.is_tensor(self.views) else self.views


class _Prepared:
    """A ``_Target`` with its context-model inputs and its full-vocabulary Bayes guesses (computed once)."""

    def __init__(self, target: _Target, kit: AttackKit, model: str, features: _Features, centre: float) -> None:
        self.target = target
        self.inputs = _inputs(target.hidden, target.mask, kit, model, features, centre, target.real_views())
        real, positions = target.mask.bool(), target.positions
        rows = target.hidden[positions].float()  # (m, d)
        scale = None
        if self.inputs.scale is not None:
            full = torch.zeros(real.shape)
            full[real] = self.inputs.scale
            scale = full[positions]
        views = target.views[positions].float() if torch.is_tensor(target.views) else target.views
        self.bayes = bayes_decode(kit, model, rows, scale, views=views)[0]  # (m,)

    def context_ids(self, net: ContextDecoder, classes: torch.Tensor) -> torch.Tensor:
        """(m,) the context model's token ids at the scored positions ("other" -> the Bayes guess)."""
        return _to_tokens(_predict(net, self.inputs, self.target.mask), classes, self.bayes, self.target.positions)


def _to_tokens(
    predicted: torch.Tensor, classes: torch.Tensor, fallback: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Token ids (m,) at ``positions`` (n, t) bool from output classes ``predicted`` (n, t): class c ->
    ``classes[c]``, "other" -> the full decoder's guess ``fallback`` (m,)."""
    pick = predicted[positions]  # (m,)
    other = pick == classes.shape[0]
    return torch.where(other, fallback, classes[pick.clamp(max=classes.shape[0] - 1)])


def _output_classes(public: Observation, max_classes: int) -> tuple[torch.Tensor, float]:
    """(the output token ids (c,), sorted: the ``max_classes`` most frequent seen at least twice; the
    share of public tokens outside them, the prior of "other")."""
    ids, counts = torch.unique(public.input_ids[public.scored], return_counts=True)
    order = counts.argsort(descending=True)
    keep = order[counts[order] >= 2][:max_classes]
    classes = ids[keep].sort().values
    rest = float(counts[~torch.isin(ids, classes)].sum()) / max(float(counts.sum()), 1.0)
    return classes, min(max(rest, 1e-4), 0.5)


def _run(
    target: _Target, input_ids: torch.Tensor, kit: AttackKit, model: str, seed: int, *, max_seconds: float,
    max_epochs: int, max_steps: int | None, max_classes: int, width: int, layers: int, batch_size: int, lr: float,
    holdout: float, max_holdout: int,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Train the context model for one threat model and decode ``target``: ((n, t) token ids, details)."""
    started = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    decoder = kit.bayes_decoder(model)
    public = kit.public("naive") if model == "naive" else kit.public_expected()
    classes, other = _output_classes(public, max_classes)  # (c,)
    class_index = torch.searchsorted(decoder.classes[decoder.trained], classes)  # trained classes: first, sorted
    features = _Features(decoder, class_index, math.log(other), decode_likelihood(decoder, "auto"))
    lookup = torch.full((max(int(kit.prototypes.shape[0]), int(public.input_ids.max()) + 1),), classes.shape[0])
    lookup[classes] = torch.arange(classes.shape[0])
    labels = torch.where(public.scored, lookup[public.input_ids], torch.full_like(public.input_ids, -100))  # (n_pub, t)
    noisy = model == "adaptive" and kit.known.noise != "none"
    centre = 0.0
    if noisy:
        centre = float(torch.log(kit.public_noise_scale()[public.attention_mask.bool()].clamp_min(1e-12)).mean())

    perm = torch.randperm(public.n, generator=g)
    n_val = min(max(min(32, public.n // 2), int(holdout * public.n)), max_holdout) if public.n > 1 else 0
    val, train = perm[:n_val], perm[n_val:]
    holdout_sets = []  # the public held-out texts under fresh noise: the attacker's model selection
    for _ in range(1 if n_val else 0):
        sub = (kit.sample_public(g) if noisy else public).subset(val)
        holdout_sets.append(
            (
                _Prepared(_Target(sub.hidden, sub.attention_mask, sub.scored, 1), kit, model, features, centre),
                sub.input_ids[sub.scored],
            )
        )

    max_len = max(public.input_ids.shape[1], input_ids.shape[1])
    net = ContextDecoder(public.hidden.shape[-1], classes.shape[0], max_len, width=width, layers=layers)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)

    def holdout_asr() -> float:
        hits = sum(float((prep.context_ids(net, classes) == truth).sum()) for prep, truth in holdout_sets)
        return hits / max(sum(truth.numel() for _, truth in holdout_sets), 1)

    val_bayes = None
    best_val, best_state, curve = -1.0, None, []
    if holdout_sets:
        val_bayes = sum(float((prep.bayes == truth).sum()) for prep, truth in holdout_sets) / max(
            sum(truth.numel() for _, truth in holdout_sets), 1
        )
        best_val, best_state = holdout_asr(), {k: v.clone() for k, v in net.state_dict().items()}
        curve.append(round(best_val, 4))
    epochs = steps = 0
    out_of_steps = lambda: max_steps is not None and steps >= max_steps
    budget_over = lambda: time.perf_counter() - started > max_seconds or out_of_steps()
    check_every = max(1, max_epochs // 10)
    while epochs < max_epochs and not budget_over() and train.numel():
        sample = kit.sample_public(g) if noisy else public  # fresh noise every epoch
        inputs = _inputs(sample.hidden, sample.attention_mask, kit, model, features, centre)
        net.train()
        for s in range(0, train.numel(), batch_size):
            rows = train[s : s + batch_size]
            mask = sample.attention_mask[rows]
            t = int(mask.sum(dim=1).max())
            logits = net(*inputs.batch(rows, t), ~mask[:, :t].bool())  # (b, t, c + 1)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[rows, :t].reshape(-1), ignore_index=-100
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            steps += 1
            if budget_over():
                break
        train = train[torch.randperm(train.numel(), generator=g)]
        epochs += 1
        if holdout_sets and (epochs % check_every == 0 or epochs == max_epochs or budget_over()):
            value = holdout_asr()
            curve.append(round(value, 4))
            if value > best_val:
                best_val, best_state = value, {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    selected = "context" if val_bayes is None or best_val > val_bayes else "bayes"  # a tie: the simpler model
    prepared = _Prepared(target, kit, model, features, centre)
    predicted = torch.zeros_like(input_ids)  # (n, t)
    predicted[target.positions] = prepared.context_ids(net, classes) if selected == "context" else prepared.bayes
    details = {
        "selected": selected, "holdout_asr_context": best_val if holdout_sets else None,
        "holdout_asr_bayes": val_bayes, "holdout_curve": curve, "holdout_texts": int(n_val),
        "output_classes": int(classes.numel()), "epochs": epochs, "steps": steps, "width": width, "layers": layers,
        "train_seconds": round(time.perf_counter() - started, 3), "fresh_noise": noisy, "_classes": classes,
    }  # fmt: skip
    return predicted, details
