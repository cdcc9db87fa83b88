"""Answer-token attack on the gradient a generation job returns (method.md sections 1 and 9).

U-shaped generation (architecture.md, "Two training modes"): the server returns its hidden state
h ``(b, t, d)``; the device runs its private tail (the last k = ``tail_layers`` blocks with device
LoRA, the final RMSNorm and the tied LM head), takes the mean cross-entropy over the N answer
(completion) tokens and returns g = dL/dh. With z = the tail's logits ``(b, t, |V|)``, P = softmax(z),
Y the one-hot next tokens at the target positions T and A_t = dz_t/dh:

    g = (1/N) sum_{t in T} A_t^T (p_t - y_t)

The server computed h itself and knows the public base weights of the tail, so it simulates the base
tail on h, gets P and, by one VJP, A^T P; the residual r = A^T P - N g = sum_t A_t^T y_t. It is exact
while the device's tail equals the base (k = 0, or LoRA B = 0 at step 1); afterwards the device's
LoRA, unknown to the server, makes it an approximation. Each target position t is decoded as the
vocabulary item v whose direction d_{t,v} explains r_t best (cosine similarity):

* ``residual_direct``: d_{t,v} = J_t^T W_v, the direct path (J_t the Jacobian of the final RMSNorm at
  the simulated tail's last pre-norm state x_t, W the LM head); exact for k = 0. All |V| items.
* ``residual_exact`` (k > 0): candidates (the direct path's top ``top_m``, and the top ``top_m`` of the
  exact inner product r_t . d_{t,v} over a JL-sketched norm of d_{t,v}, from forward-mode JVPs through
  the tail at position t) re-ranked by the exact column d_{t,v} = d z_t[v]/dh_t of the simulated tail
  (a batched VJP); each row's targets are decoded from the last to the first, peeling each decoded
  token's whole column off r (causality: position t's residual holds only targets >= t).
* ``raw_direct``: the direct path against -g alone (no P term; robust when the device's trained tail
  is far more confident than the base, so the base's A^T P no longer cancels the device's).

``prior`` is the base model's greedy next token from the simulated tail, without g: what the server
knows without the gradient. The target positions and N are given to the attacker as an oracle (the
device does not send them), so the figures are upper bounds for this attacker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from client_sdk.models.attention import KVCache, eager_attention

__all__ = ["AnswerTokenAttack", "GradientView", "hit_rate", "view_of"]

VARIANTS = ("residual_direct", "residual_exact", "raw_direct")


@dataclass(frozen=True)
class GradientView:
    """What the server saw of one step, plus the oracle and the truth for scoring.

    ``hidden`` ``(b, t, d)``: its reply as the device decoded it (fp16 on the wire); ``grad``
    ``(b, t, d)``: the returned dL/dh; ``targets`` ``(b, t)`` bool: positions whose logits are scored
    (position j-1 predicts token j; the oracle); ``labels`` ``(b, t)``: the token each position
    predicts (for scoring only; the attack never reads it).
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    grad: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor


def view_of(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    grad: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
) -> GradientView:
    """The view of a step from the device's ``input_ids`` / ``loss_mask`` ``(b, t)`` (token j a target)."""
    targets = torch.zeros_like(loss_mask, dtype=torch.bool)  # (b, t)
    targets[:, :-1] = loss_mask[:, 1:].bool()
    labels = torch.zeros_like(input_ids)  # (b, t)
    labels[:, :-1] = input_ids[:, 1:]
    return GradientView(hidden.float(), attention_mask, grad.float(), targets, labels)


def hit_rate(predicted: torch.Tensor, truth: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Fraction of ``truth`` ``(n,)`` recovered by ``predicted`` ``(n,)`` (over ``keep`` ``(n,)`` if given)."""
    hits = predicted == truth
    if keep is not None:
        hits = hits[keep]
    return float(hits.float().mean()) if hits.numel() else float("nan")


class AnswerTokenAttack:
    """The server's best response we compute, given the public base tail ``tail`` (a
    ``client_sdk.models.ends.DeviceTail`` without LoRA, e.g. ``load_tail(..., lora_r=0)``)."""

    def __init__(self, tail: torch.nn.Module, top_m: int = 16, sketch: int = 64, chunk: int = 8192) -> None:
        self.tail, self.top_m, self.sketch, self.chunk = tail.eval(), top_m, sketch, chunk
        bottom = tail.bottom
        head = bottom.lm_head.weight if bottom.lm_head is not None else bottom.input_embeddings()
        self.head = head.detach().float()  # W (|V|, d)
        self.norm_weight = bottom.norm.weight.detach().float()  # w (d,)
        self.eps = float(bottom.norm.variance_epsilon)
        self.scaled = self.head * self.norm_weight  # U = W * w (|V|, d)
        self.scaled_sq = self.scaled.pow(2).sum(-1)  # |U_v|^2 (|V|,)

    # ---- the simulated base tail ----------------------------------------------------------------
    def pre_norm(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The tail's last pre-norm state x ``(b, t, d)`` of ``hidden`` ``(b, t, d)``."""
        if not self.tail.tail_layers:
            return hidden
        return self.tail.blocks(hidden, attention_mask)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d)`` pre-norm states -> logits ``(..., |V|)``."""
        return self.tail.bottom.norm(x) @ self.head.T

    # ---- direct-path scores ---------------------------------------------------------------------
    @torch.no_grad()
    def direct(self, x: torch.Tensor, r: torch.Tensor, top: int | None = None) -> torch.Tensor:
        """Top-``top`` (default ``top_m``) items ``(n, top)`` (best first) of cos(r_i, J_i^T W_v) over the vocabulary.

        ``x``, ``r`` ``(n, d)``. With s = rms(x) and u = w * W_v, J^T W_v = u / s - x (x.u) / (d s^3), so
        r . J^T W_v = (J r) . W_v with J r = w * (r / s - x (x.r) / (d s^3)), and |J^T W_v|^2 =
        |u|^2 / s^2 - 2 (x.u)^2 / (d s^4) + (x.u)^2 |x|^2 / (d^2 s^6). Chunked over the vocabulary.
        """
        x, r, top = x.float(), r.float(), top or self.top_m
        d = x.shape[-1]
        s = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # (n, 1)
        xx = x.pow(2).sum(-1, keepdim=True)  # |x|^2 (n, 1)
        jr = self.norm_weight * (r / s - x * (x * r).sum(-1, keepdim=True) / (d * s**3))  # J r (n, d)
        best_val = torch.full((x.shape[0], 0), float("-inf"))
        best_idx = torch.zeros((x.shape[0], 0), dtype=torch.long)
        for start in range(0, self.head.shape[0], self.chunk):
            head, scaled = self.head[start : start + self.chunk], self.scaled[start : start + self.chunk]  # (c, d)
            xu = x @ scaled.T  # (n, c)
            sq = self.scaled_sq[start : start + self.chunk] / s**2 - 2 * xu**2 / (d * s**4) + xu**2 * xx / (d**2 * s**6)
            cos = (jr @ head.T) / sq.clamp_min(1e-30).sqrt()  # (n, c), up to the factor 1 / |r_i|
            vals = torch.cat([best_val, cos], dim=1)  # (n, top + c)
            idx = torch.cat([best_idx, torch.arange(start, start + cos.shape[1]).expand_as(cos)], dim=1)
            best_val, pick = vals.topk(min(top, vals.shape[1]), dim=1)  # (n, top)
            best_idx = idx.gather(1, pick)
        return best_idx

    # ---- exact columns and the peeling decoder --------------------------------------------------
    def _one_position(self, cache: KVCache, mask: torch.Tensor, pos: int, m: int):
        """x_pos as a function of h_pos ``(m, 1, d)`` -> ``(m, 1, d)``, over the row's keys and values of the
        positions < pos in ``cache`` (causal: they do not depend on h_pos, so its derivatives are exact)."""

        def f(h: torch.Tensor) -> torch.Tensor:
            past = KVCache()
            for layer in cache.keys:
                past.keys[layer] = cache.keys[layer][..., :pos, :].expand(m, -1, -1, -1)  # (m, h_kv, pos, hd)
                past.values[layer] = cache.values[layer][..., :pos, :].expand(m, -1, -1, -1)
            return self.tail.blocks(h, mask[: pos + 1].expand(m, pos + 1), cache=past)[0]

        return f

    @torch.no_grad()
    def _candidates(
        self, cache: KVCache, h: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, r: torch.Tensor, pos: int
    ):
        """``2M`` items for position ``pos`` (``h``, ``x``, ``r`` ``(d,)``): the direct path's top-M against
        r_pos, and the top-M over the vocabulary of cos(r, D^T J^T W_v) (D = dx_pos/dh_pos) estimated as
        (J D r) . W_v (exact: one JVP) over |(J^T W_v)^T D S| (S a d x m Gaussian of variance 1/m: a JL
        sketch of ``sketch`` JVPs), all JVPs in one batched forward-mode pass."""
        m, d = self.sketch, x.shape[0]
        gen = torch.Generator().manual_seed(pos)
        tangents = torch.cat([r[None], torch.randn(m, d, generator=gen) / m**0.5])  # (1 + m, d)
        f = self._one_position(cache, mask, pos, m + 1)
        with eager_attention([layer.self_attn.config for layer in self.tail.blocks.layers]):  # forward AD
            _, out = torch.func.jvp(f, (h.float().expand(m + 1, 1, -1).clone(),), (tangents[:, None],))
        dr, ds = out[0, 0], out[1:, 0].T  # D r (d,), D S (d, m)
        s = (x.pow(2).mean() + self.eps).sqrt()
        jdr = self.norm_weight * (dr / s - x * (x @ dr) / (d * s**3))  # J D r (d,)
        pds = ds / s - x[:, None] * (x @ ds)[None] / (d * s**3)  # P D S (d, m), J^T W_v = P (w * W_v)
        vals, idx = [], []
        for start in range(0, self.head.shape[0], self.chunk):
            head, scaled = self.head[start : start + self.chunk], self.scaled[start : start + self.chunk]  # (c, d)
            score = (head @ jdr) / (scaled @ pds).norm(dim=-1).clamp_min(1e-30)  # (c,)
            top = score.topk(min(self.top_m, score.shape[0]))
            vals.append(top.values), idx.append(top.indices + start)
        vals, idx = torch.cat(vals), torch.cat(idx)
        best = idx[vals.topk(self.top_m).indices]  # (M,)
        return torch.cat([self.direct(x[None], r[None])[0], best])  # (2M,)

    def _own_columns(self, cache: KVCache, h: torch.Tensor, mask: torch.Tensor, pos: int, items: torch.Tensor):
        """d z_pos[v] / dh_pos ``(M, d)`` of the simulated tail for each of ``items`` ``(M,)`` (``h`` ``(d,)``)."""
        with torch.enable_grad():
            h0 = h.float().expand(items.shape[0], 1, -1).clone().requires_grad_(True)  # (M, 1, d)
            x = self._one_position(cache, mask, pos, items.shape[0])(h0)  # (M, 1, d)
            (grad,) = torch.autograd.grad((self.tail.bottom.norm(x[:, 0]) * self.head[items]).sum(), h0)
        return grad[:, 0]  # (M, d)

    def _peel(self, hidden: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, r: torch.Tensor, positions: list[int]):
        """One row (``hidden``, ``x``, ``r`` ``(t, d)``): decode its target ``positions`` from the last,
        re-ranking candidates by the exact column and peeling each decoded token's whole column
        d z_pos[v]/dh ``(t, d)`` off r."""
        r, found = r.clone(), {}  # (t, d)
        cache = KVCache()
        with torch.no_grad():
            self.tail.blocks(hidden[None].float(), mask[None], cache=cache)  # keys/values (1, h_kv, t, hd)
        with torch.enable_grad():
            h = hidden[None].float().requires_grad_(True)  # (1, t, d)
            xs = self.tail.bottom.norm(self.pre_norm(h, mask[None]))[0]  # (t, d), after the norm
            for pos in reversed(positions):
                items = self._candidates(cache, hidden[pos], mask, x[pos], r[pos], pos)  # (2M,)
                cols = self._own_columns(cache, hidden[pos], mask, pos, items)  # (2M, d)
                best = int(torch.nn.functional.cosine_similarity(cols, r[pos][None], dim=-1).argmax())
                found[pos] = int(items[best])
                (col,) = torch.autograd.grad(xs[pos] @ self.head[found[pos]], h, retain_graph=True)  # (1, t, d)
                r -= col[0]
        return [found[p] for p in positions]

    # ---- the attack -----------------------------------------------------------------------------
    def run(self, view: GradientView, exact: bool = True) -> dict[str, torch.Tensor]:
        """Predicted tokens ``(n,)`` at the view's target positions (row-major), per variant and ``prior``,
        with ``truth`` ``(n,)``. ``exact``: also the re-ranked, peeled variant (k > 0; for k = 0 the direct
        path is already exact)."""
        mask, targets = view.attention_mask, view.targets
        with torch.enable_grad():
            h = view.hidden.float().requires_grad_(True)  # (b, t, d)
            x = self.pre_norm(h, mask)  # (b, t, d)
            z = self.logits(x)  # (b, t, |V|)
            p = z.detach().softmax(-1)  # (b, t, |V|)
            (atp,) = torch.autograd.grad((p * z)[targets].sum(), h)  # A^T P (b, t, d)
        x = x.detach()
        n = int(targets.sum())
        r = atp - n * view.grad  # A^T Y (+ the device's LoRA mismatch, the noise) (b, t, d)
        out = {
            "truth": view.labels[targets],
            "prior": z.detach()[targets].argmax(-1),
            "residual_direct": self.direct(x[targets], r[targets])[:, 0],
            "raw_direct": self.direct(x[targets], -view.grad[targets])[:, 0],
        }
        if exact and self.tail.tail_layers:
            rows = []
            for i in range(targets.shape[0]):
                positions = targets[i].nonzero().flatten().tolist()
                if positions:
                    rows += self._peel(view.hidden[i], mask[i], x[i], r[i], positions)
            out["residual_exact"] = torch.tensor(rows, dtype=torch.long)
        else:
            out["residual_exact"] = out["residual_direct"]
        return out


if __name__ == "__main__":  # python -m evaluation.answer_tokens --data-dir ... --out ...
    from evaluation.answer_tokens_run import main

    raise SystemExit(main())
