"""Neighbour structure over the vocabulary (method.md section 2): cosine kNN graph and exact n-hop sets.

- ``cosine_knn``: the k most cosine-similar other rows of a (|V|, d) matrix, by blocked float32
  matrix products + ``topk`` (never an O(|V|^2) Python loop; memory O(block * |V|)).
- ``exact_hop_sets``: H_n(t) = tokens at shortest-path distance exactly n from t in the kNN graph,
  read as a DIRECTED graph with out-edges t -> N_k(t) (kNN is not symmetric; "t's neighbours'
  neighbours"). Computed by breadth-first frontier expansion for all tokens at once on padded
  integer tensors (sort-based de-duplication per row), in row chunks. Each set is capped at
  ``max_hop_set`` members, chosen deterministically by a hash of (token, member), so OPT-3 stays
  O(N (k + m)).
- ``NeighbourIndex``: both tables plus their key, saved to / loaded from a safetensors cache (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import NeighbourCacheError, PrivacyConfigError

__all__ = ["NeighbourIndex", "cosine_knn", "exact_hop_sets", "matrix_fingerprint"]

_CHUNK_ELEMENTS = 1 << 23  # int64 elements per row chunk in the hop expansion (64 MiB)
_HASH_P = 2_147_483_647  # prime modulus of the deterministic sampling hash
_HASH_A, _HASH_B = 1_103_515_245, 2_654_435_761 % _HASH_P


def cosine_knn(matrix: torch.Tensor, k: int, block_size: int = 4096) -> torch.Tensor:
    """Indices (|V|, k) int64 of each row's k most cosine-similar OTHER rows, most similar first."""
    n = matrix.shape[0]
    if not 1 <= k < n:
        raise PrivacyConfigError("k", f">= 1 and < the number of rows ({n})", k)
    unit = matrix.float()
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (v, d)
    out = torch.empty(n, k, dtype=torch.int64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = unit[start:stop] @ unit.T  # (b, v)
        rows = torch.arange(stop - start)
        sims[rows, rows + start] = float("-inf")  # exclude self
        out[start:stop] = sims.topk(k, dim=1).indices.cpu()
    return out


def _new_members(visited: torch.Tensor, cand: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Per row: distinct entries of ``cand`` not in ``visited``; padded with -1, compacted left."""
    big = 2 * n_nodes + 2
    vals = torch.cat([visited, cand], dim=1)  # (r, wv + wc)
    tags = torch.cat([torch.zeros_like(visited), torch.ones_like(cand)], dim=1)
    keys = torch.where(vals < 0, torch.full_like(vals, big), vals * 2 + tags).sort(dim=1).values
    value, tag = keys // 2, keys % 2
    prev = torch.cat([torch.full_like(value[:, :1], -1), value[:, :-1]], dim=1)
    keep = (tag == 1) & (value != prev) & (keys != big)
    width = int(keep.sum(dim=1).max()) if keep.numel() else 0
    compact = torch.where(keep, value, torch.full_like(value, big)).sort(dim=1).values[:, :width]
    return torch.where(compact == big, torch.full_like(compact, -1), compact)


def _sample_cap(members: torch.Tensor, row_ids: torch.Tensor, cap: int) -> torch.Tensor:
    """Keep at most ``cap`` members per row, chosen by a deterministic hash of (row, member)."""
    if members.shape[1] <= cap:
        return members
    prio = (members * _HASH_A + row_ids.unsqueeze(1) * _HASH_B) % _HASH_P
    prio = torch.where(members < 0, torch.full_like(prio, _HASH_P), prio)
    chosen = members.gather(1, prio.topk(cap, dim=1, largest=False).indices)  # (r, cap)
    big = torch.iinfo(torch.int64).max
    chosen = torch.where(chosen < 0, torch.full_like(chosen, big), chosen).sort(dim=1).values
    return torch.where(chosen == big, torch.full_like(chosen, -1), chosen)


def exact_hop_sets(knn: torch.Tensor, hops: int, max_hop_set: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Members of H_n(t) for every token t: (padded (|V|, m) int64 with -1 pads, lengths (|V|,) int64).

    ``knn`` is the (|V|, k) out-edge table. m = min(max_hop_set, largest set); an empty set has length 0.
    """
    if hops < 1:
        raise PrivacyConfigError("hops", ">= 1", hops)
    if max_hop_set < 1:
        raise PrivacyConfigError("max_hop_set", ">= 1", max_hop_set)
    n_nodes, k = knn.shape
    edges = torch.cat([knn.long(), torch.full((1, k), -1, dtype=torch.int64)])  # (v + 1, k); row v = pad
    levels = [torch.arange(n_nodes).unsqueeze(1)]  # level 0: the token itself
    for depth in range(1, hops + 1):
        frontier = levels[-1]
        width = frontier.shape[1] * k + sum(level.shape[1] for level in levels)
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(width, 1))
        parts = []
        for start in range(0, n_nodes, rows_per_chunk):
            rows = slice(start, min(start + rows_per_chunk, n_nodes))
            f = frontier[rows]
            cand = edges[torch.where(f < 0, n_nodes, f)].flatten(1)  # (r, w * k)
            visited = torch.cat([level[rows] for level in levels], dim=1)
            members = _new_members(visited, cand, n_nodes)
            if depth == hops:
                members = _sample_cap(members, torch.arange(rows.start, rows.stop), max_hop_set)
            parts.append(members)
        width = max(p.shape[1] for p in parts)
        levels.append(torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=-1) for p in parts]))
    hop = levels[-1]
    return hop, (hop >= 0).sum(dim=1)


def matrix_fingerprint(matrix: torch.Tensor) -> str:
    """A sha256 hex digest of the matrix's float32 bytes and shape (cache key when no model id is known)."""
    data = matrix.detach().float().contiguous().cpu()
    digest = hashlib.sha256(json.dumps(list(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class NeighbourIndex:
    """The kNN table ``knn`` (|V|, k), the capped exact hop sets ``hop`` (|V|, m) (-1 pads) with
    ``hop_lengths`` (|V|,), and the key they were built for."""

    knn: torch.Tensor
    hop: torch.Tensor
    hop_lengths: torch.Tensor
    k: int
    hops: int
    max_hop_set: int
    model_id: str
    split_layer: int
    source: str = "embeddings"

    @classmethod
    def build(
        cls,
        matrix: torch.Tensor,
        *,
        k: int,
        hops: int,
        max_hop_set: int = 64,
        model_id: str | None = None,
        split_layer: int = 0,
        source: str = "embeddings",
        block_size: int = 4096,
    ) -> NeighbourIndex:
        """Compute the index of ``matrix`` (|V|, d). ``model_id`` defaults to the matrix fingerprint."""
        knn = cosine_knn(matrix, k, block_size=block_size)
        hop, lengths = exact_hop_sets(knn, hops, max_hop_set)
        model_id = model_id or matrix_fingerprint(matrix)
        return cls(knn, hop, lengths, k, hops, max_hop_set, model_id, split_layer, source)

    @property
    def key(self) -> dict[str, str]:
        """The cache key as strings (stored in the safetensors metadata)."""
        fields = ("model_id", "split_layer", "source", "k", "hops", "max_hop_set")
        return {name: str(getattr(self, name)) for name in fields}

    @staticmethod
    def cache_path(
        cache_dir: str | Path, model_id: str, split_layer: int, source: str, k: int, hops: int, max_hop_set: int
    ) -> Path:
        """Where the index for this key lives inside ``cache_dir``."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[:48]
        tag = hashlib.sha256(model_id.encode()).hexdigest()[:8]
        name = f"neighbours-{slug}-{tag}-l{split_layer}-{source}-k{k}-n{hops}-m{max_hop_set}.safetensors"
        return Path(cache_dir) / name

    def save(self, cache_dir: str | Path) -> Path:
        """Write the index to its cache path in ``cache_dir`` (created if needed); returns the path."""
        path = self.cache_path(
            cache_dir, self.model_id, self.split_layer, self.source, self.k, self.hops, self.max_hop_set
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"knn": self.knn.to(torch.int32), "hop": self.hop.to(torch.int32)}
        tmp = path.with_suffix(".tmp")
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata=self.key)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, expect: dict[str, str] | None = None) -> NeighbourIndex:
        """Read an index written by ``save``; raises ``NeighbourCacheError`` if unreadable or not ``expect``."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
            knn, hop = tensors["knn"].long(), tensors["hop"].long()
            index = cls(knn, hop, (hop >= 0).sum(dim=1), int(meta["k"]), int(meta["hops"]), int(meta["max_hop_set"]),
                        meta["model_id"], int(meta["split_layer"]), meta["source"])  # fmt: skip
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise NeighbourCacheError(f"cannot read neighbour cache {path}: {exc}") from exc
        n = knn.shape[0]
        if knn.shape[1] != index.k or hop.shape[0] != n or knn.min() < 0 or knn.max() >= n or hop.max() >= n:
            raise NeighbourCacheError(f"neighbour cache {path} is inconsistent with its metadata")
        if expect is not None and any(index.key[name] != str(value) for name, value in expect.items()):
            raise NeighbourCacheError(f"neighbour cache {path} was built for {index.key}, expected {expect}")
        return index

    @classmethod
    def load_or_build(
        cls,
        matrix: torch.Tensor,
        cache_dir: str | Path | None,
        *,
        k: int,
        hops: int,
        max_hop_set: int = 64,
        model_id: str | None = None,
        split_layer: int = 0,
        source: str = "embeddings",
    ) -> NeighbourIndex:
        """The cached index for this key if ``cache_dir`` holds a valid one, else build (and cache) it."""
        model_id = model_id or matrix_fingerprint(matrix)
        if cache_dir is not None:
            path = cls.cache_path(cache_dir, model_id, split_layer, source, k, hops, max_hop_set)
            key = {"model_id": model_id, "split_layer": split_layer, "source": source, "k": k, "hops": hops}
            if path.exists():
                try:
                    index = cls.load(path, expect={**key, "max_hop_set": max_hop_set})
                    if index.knn.shape[0] == matrix.shape[0]:
                        return index
                except NeighbourCacheError:
                    pass  # stale or corrupt: rebuild and overwrite
        index = cls.build(matrix, k=k, hops=hops, max_hop_set=max_hop_set, model_id=model_id,
                          split_layer=split_layer, source=source)  # fmt: skip
        if cache_dir is not None:
            index.save(cache_dir)
        return index
