"""Per-text noise: every re-send of a text is the identical view (``view_noise='per_text'``).

With fresh noise on every send, a server that links the K views of one text (each epoch, validation,
inference) averages them and divides the noise variance by K. Here the noise of a position is drawn
from a generator seeded by a keyed hash of the device's secret and the text, so the server receives
the same vector each time and K views are worth one. The key of position j is

- causal bottoms: SHA-256(secret, ids[0..j]): the state at j depends on the prefix only, so a prompt at
  inference gets the noise its positions got in training, and a longer sequence keeps its prefix's;
- bidirectional bottoms: SHA-256(secret, all ids of the text, j): the state depends on the whole text.

The secret is 32 random bytes held in the fitted state on the device; without it the seeds are
unpredictable, so the noise is as random to the server as fresh noise. What it cannot hide: two
different texts share no noise, so near-duplicate texts still give near-independent views.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

__all__ = ["keyed_noise", "position_seeds"]

Sampler = Callable[..., torch.Tensor]


def position_seeds(secret: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """(n,) int64 seeds, one per real position of ``input_ids`` (B, T), in ``attention_mask`` order."""
    key = bytes.fromhex(secret)
    seeds: list[int] = []
    ids, mask = input_ids.detach().cpu().long(), attention_mask.detach().cpu().bool()
    for row in range(ids.shape[0]):
        real = ids[row][mask[row]].to(torch.int64).tolist()  # right padding: real positions come first
        if causal:
            h = hashlib.sha256(key + b"causal")
            for token in real:
                h.update(int(token).to_bytes(8, "little", signed=True))
                seeds.append(int.from_bytes(h.copy().digest()[:8], "little") >> 1)
        else:
            base = hashlib.sha256(key + b"text" + torch.tensor(real, dtype=torch.int64).numpy().tobytes())
            for j in range(len(real)):
                h = base.copy()
                h.update(j.to_bytes(8, "little"))
                seeds.append(int.from_bytes(h.digest()[:8], "little") >> 1)
    return torch.tensor(seeds, dtype=torch.int64)


def keyed_noise(
    sampler: Sampler, seeds: torch.Tensor, d: int, scale: float | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """(n, d) noise: row i drawn by ``sampler((1,), d, scale_i, generator)`` seeded with ``seeds[i]``."""
    n = int(seeds.shape[0])
    scales = torch.as_tensor(scale, dtype=torch.float32).expand(n).tolist() if n else []
    rows = []
    g = torch.Generator()
    for seed, s in zip(seeds.tolist(), scales, strict=True):
        g.manual_seed(seed)
        rows.append(sampler((1,), d, s, g))  # (1, d)
    if not rows:
        return torch.zeros(0, d, device=device)
    return torch.cat(rows).to(device)
