"""Prepared state of a mechanism: everything fitted once on the device before perturbing.

``prepare_state(config, ...)`` turns the bottom model's token prototypes (and input embeddings) and a
sample of the user's own split-layer representations into a ``PreparedState``: clip norm C and
sensitivity Delta; for OPT-3 mechanisms also mu, R, eps_local, the AIA centroids, the neighbour
index and the normalised prototype tables. All of it stays on the device.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .config import ClipOptions, MechanismConfig, Opt3Options
from .dchi import clip_by_norm
from .errors import PrivacyConfigError, PrivacyStateError
from .neighbours import NeighbourIndex
from .opt3 import centred_unit, unit

__all__ = ["PreparedState", "diameter", "kmeans", "load_state", "prepare_state", "save_state"]


@dataclass(frozen=True)
class PreparedState:
    """Fitted, device-side state. Fields a mechanism does not use are None.

    clip_norm: C (None: representations are not clipped); sensitivity: Delta; mu (d,), radius R and
    eps_local: the OPT-3 constraints; centroids (K, d) with centroid_labels (K,) in 'label' mode;
    neighbours: the kNN / hop index; proto_unit / proto_centred (|V|, d): unit and centred-unit
    prototypes; importance_table (|V|,): classification importance I^ per token id; dim: d;
    noise_secret: the device's key for per-text noise (``view_noise='per_text'``): it decides every noise
    draw, so it stays on the device (saved with the state, left out of ``summary``).
    """

    sensitivity_mode: str = "clip"
    dim: int | None = None
    clip_norm: float | None = None
    sensitivity: float | None = None
    mu: torch.Tensor | None = None
    radius: float | None = None
    eps_local: float | None = None
    centroids: torch.Tensor | None = None
    centroid_labels: torch.Tensor | None = None
    neighbours: NeighbourIndex | None = None
    proto_unit: torch.Tensor | None = None
    proto_centred: torch.Tensor | None = None
    importance_table: torch.Tensor | None = None
    noise_secret: str | None = None  # hex; per-text noise (view_noise='per_text'); never sent, not in summary()

    def summary(self) -> dict[str, Any]:
        """JSON-able scalars of the state (for the job's privacy record; no tensors, no data)."""
        out: dict[str, Any] = {
            "sensitivity_mode": self.sensitivity_mode,
            "dim": self.dim,
            "clip_norm": self.clip_norm,
            "Delta": self.sensitivity,
            "R": self.radius,
            "eps_local": self.eps_local,
            "num_centroids": None if self.centroids is None else int(self.centroids.shape[0]),
        }
        if self.neighbours is not None:
            out["neighbours"] = dict(self.neighbours.key)
        return out


def save_state(state: PreparedState, directory: str | Path) -> None:
    """Write a fitted state to ``directory`` (``state.safetensors`` + ``state.json``): the device keeps
    it with its trained end, so inference perturbs exactly as training did."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, scalars = {}, {}
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            tensors[f.name] = value.detach().cpu().contiguous()
        elif isinstance(value, NeighbourIndex):
            index = value
            for g in fields(index):
                part = getattr(index, g.name)
                if isinstance(part, torch.Tensor):
                    tensors[f"neighbours.{g.name}"] = part.cpu().contiguous()
                else:
                    scalars[f"neighbours.{g.name}"] = part
        else:
            scalars[f.name] = value
    save_file(tensors, str(directory / "state.safetensors"))
    (directory / "state.json").write_text(json.dumps(scalars, indent=2, sort_keys=True))


def load_state(directory: str | Path) -> PreparedState:
    """The state :func:`save_state` wrote."""
    from safetensors.torch import load_file

    directory = Path(directory)
    tensors = load_file(str(directory / "state.safetensors"))
    values: dict[str, Any] = json.loads((directory / "state.json").read_text())
    values.update(tensors)
    parts = {k.split(".", 1)[1]: values.pop(k) for k in [k for k in values if k.startswith("neighbours.")]}
    if parts:
        values["neighbours"] = NeighbourIndex(**parts)
    return PreparedState(**values)


def diameter(points: torch.Tensor, block_size: int = 4096) -> float:
    """Largest pairwise L2 distance among the rows of ``points`` (N, d), by blocked ``cdist``."""
    best = torch.zeros(())
    for start in range(0, points.shape[0], block_size):
        best = torch.maximum(best, torch.cdist(points[start : start + block_size], points).max())
    return float(best)


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, iters: int = 25) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding from ``generator``: (min(k, N), d) centroids."""
    n = points.shape[0]
    k = min(k, n)
    first = torch.randint(n, (1,), generator=generator)
    centres = points[first]  # (1, d)
    for _ in range(1, k):  # k-means++: next centre with probability proportional to squared distance
        d2 = torch.cdist(points, centres).min(dim=1).values ** 2  # (n,)
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        centres = torch.cat([centres, points[torch.multinomial(probs, 1, generator=generator)]])
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(dim=1)  # (n,)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty cluster: keep
    return centres


def _label_centroids(points: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(values.shape[0], points.shape[1]).index_add_(0, inverse, points)
    return sums / torch.bincount(inverse).unsqueeze(1), values


def prepare_state(
    config: MechanismConfig,
    *,
    train_hidden: torch.Tensor | None = None,
    prototypes: torch.Tensor | None = None,
    embeddings: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    neighbours: NeighbourIndex | None = None,
    importance_table: torch.Tensor | None = None,
    cache_dir: str | Path | None = None,
    model_id: str | None = None,
    split_layer: int = 0,
    generator: torch.Generator | None = None,
    noise_secret: str | None = None,
) -> PreparedState:
    """Fit the state ``config``'s mechanism needs.

    ``train_hidden`` (N, d): a sample of real (non-pad) split-layer token representations of the
    user's data; needed unless the mechanism is ``none`` or an explicit clip_norm makes it unnecessary.
    ``prototypes`` (|V|, d): split-layer token prototypes; ``embeddings`` (|V|, d_e): input embeddings
    (kNN graph when neighbour_source='embeddings'). ``train_labels`` (N,): per-token class labels,
    only for centroid_mode='label'. ``neighbours``: a ready index (else built or read from
    ``cache_dir``, keyed by ``model_id`` and ``split_layer``). ``generator`` seeds k-means
    (default: a fixed seed, so fitting is reproducible). ``noise_secret``: the per-text noise key (hex),
    drawn from the OS entropy source when the mechanism adds per-text noise and none is given.
    """
    generator = generator or torch.Generator().manual_seed(0)
    fields: dict[str, Any] = {"importance_table": importance_table}
    if getattr(config, "view_noise", None) == "per_text":
        fields["noise_secret"] = noise_secret or secrets.token_hex(32)
    for source in (train_hidden, prototypes):
        if source is not None and "dim" not in fields:
            fields["dim"] = int(source.shape[-1])
    if not isinstance(config, ClipOptions):
        return PreparedState(**fields)
    needs_sample = isinstance(config, Opt3Options) or config.sensitivity == "diameter" or config.clip_norm is None
    if needs_sample and (train_hidden is None or train_hidden.shape[0] == 0):
        raise PrivacyStateError(f"mechanism {config.name!r} needs train_hidden, a sample of representations")
    sample = None if train_hidden is None else train_hidden.detach().float().reshape(-1, train_hidden.shape[-1])
    fields["sensitivity_mode"] = config.sensitivity
    if config.sensitivity == "clip":
        clip = config.clip_norm if config.clip_norm is not None else float(sample.norm(dim=1).median())
        if clip <= 0:
            raise PrivacyConfigError("clip_norm", "> 0 (the sample's median norm is 0)", clip)
        fields.update(clip_norm=clip, sensitivity=2.0 * clip)
        sample = None if sample is None else clip_by_norm(sample, clip)
    else:
        fields["sensitivity"] = diameter(sample)
    if not isinstance(config, Opt3Options):
        return PreparedState(**fields)

    mu = sample.mean(dim=0)  # (d,)
    fields.update(
        mu=mu,
        radius=float(torch.quantile((sample - mu).norm(dim=1), config.radius_quantile)),
        eps_local=config.eps_local_ratio * float(sample.norm(dim=1).median()),
    )
    if config.centroid_mode == "pseudo":
        fields["centroids"] = kmeans(sample, config.num_centroids, generator)
    else:
        if train_labels is None or train_labels.shape[0] != sample.shape[0]:
            raise PrivacyStateError("centroid_mode='label' needs train_labels, one label per sample row")
        fields["centroids"], fields["centroid_labels"] = _label_centroids(sample, train_labels.long())
    if prototypes is None:
        raise PrivacyStateError(f"mechanism {config.name!r} needs the bottom model's token prototypes")
    if neighbours is None:
        matrix = embeddings if config.neighbour_source == "embeddings" else prototypes
        if matrix is None:
            raise PrivacyStateError("neighbour_source='embeddings' needs the input embedding matrix")
        neighbours = NeighbourIndex.load_or_build(
            matrix.detach().float(), cache_dir, k=config.k, hops=config.hops, max_hop_set=config.max_hop_set,
            model_id=model_id, split_layer=split_layer, source=config.neighbour_source,
        )  # fmt: skip
    elif (neighbours.k, neighbours.hops) != (config.k, config.hops):
        raise PrivacyStateError(
            f"neighbour index has k={neighbours.k}, hops={neighbours.hops}; config wants k={config.k}, hops={config.hops}"
        )
    if neighbours.knn.shape[0] != prototypes.shape[0]:
        raise PrivacyStateError(
            f"neighbour index covers {neighbours.knn.shape[0]} tokens, prototypes {prototypes.shape[0]}"
        )
    protos = prototypes.detach().float()
    fields.update(
        neighbours=neighbours,
        proto_unit=unit(protos) if config.similarity in ("pearson+cos", "cos") else None,
        proto_centred=centred_unit(protos) if config.similarity in ("pearson+cos", "pearson") else None,
    )
    return PreparedState(**fields)
