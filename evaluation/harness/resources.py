"""Per-process caches of the harness: the bottom model with its token prototypes, datasets, attack-kit entries.

Promises: ``Resources.bottom`` / ``Resources.prototypes`` give the split model and its token prototypes
(computed once, then read from ``cache_dir``); ``data`` gives the dataset parts of a config (cached);
``kit_entries`` / ``keep_kit_entries`` share the noise-independent attack-kit entries between
experiments by fingerprint. Nothing but the prototype cache is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evaluation.config import ExperimentConfig
from evaluation.data import EvalData, load_eval_data

__all__ = ["Resources", "model_id"]


@dataclass
class Resources:
    """Per-process caches: bottom + tokenizer and token prototypes per (model, l), datasets.

    Prototypes are also cached on disk under ``cache_dir`` (with the neighbour index), so a resumed
    sweep does not recompute them. ``data_dir`` is passed to ``evaluation.data``.
    """

    cache_dir: Path
    data_dir: str | None = None
    _bottoms: dict[tuple[str, int], tuple[Any, Any, torch.Tensor]] = field(default_factory=dict)
    _data: dict[tuple, EvalData] = field(default_factory=dict)
    _kit_entries: dict[str, Any] = field(default_factory=dict)  # attack-kit entries shared across experiments

    def bottom(self, model: str, split_layer: int) -> tuple[Any, Any]:
        """(bottom, tokenizer) for ``model`` cut after ``split_layer`` (one model is kept at a time)."""
        bottom, tokenizer, _ = self._split_model(model, split_layer)
        return bottom, tokenizer

    def prototypes(self, model: str, split_layer: int) -> torch.Tensor:
        """The bottom's token prototypes (|V|, d), float32 on the CPU (pass them to ``Privatizer.fit``
        and ``AttackKit.from_privatizer`` instead of recomputing them)."""
        return self._split_model(model, split_layer)[2]

    def _split_model(self, model: str, split_layer: int) -> tuple[Any, Any, torch.Tensor]:
        key = (model, split_layer)
        if key not in self._bottoms:
            from worker.models import build_bottom

            bottom, tokenizer = build_bottom(model, split_layer)
            prototypes = self._cached_prototypes(bottom, model, split_layer)
            self._bottoms = {key: (bottom, tokenizer, prototypes)}  # keep one bottom at a time (memory)
        return self._bottoms[key]

    def _cached_prototypes(self, bottom: Any, model: str, split_layer: int) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        name = hashlib.sha256(f"{model}:{split_layer}".encode()).hexdigest()[:12]
        path = self.cache_dir / f"prototypes-{name}.safetensors"
        if path.exists():
            return load_file(str(path))["prototypes"]
        prototypes = bottom.token_prototypes().detach().float().cpu().contiguous()  # (|V|, d)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"prototypes": prototypes}, str(path))
        return prototypes

    def kit_entries(self, keys: dict[str, str]) -> dict[str, Any]:
        """Cached attack-kit entries for ``{entry name: fingerprint}`` (those present)."""
        return {name: self._kit_entries[fp] for name, fp in keys.items() if fp in self._kit_entries}

    def keep_kit_entries(self, keys: dict[str, str], entries: dict[str, Any], limit: int = 6) -> None:
        """Remember ``entries`` under their fingerprints (the ``limit`` most recent are kept: memory)."""
        for name, fp in keys.items():
            if name in entries:
                self._kit_entries.pop(fp, None)
                self._kit_entries[fp] = entries[name]
        while len(self._kit_entries) > limit:
            self._kit_entries.pop(next(iter(self._kit_entries)))

    def data(self, config: ExperimentConfig) -> EvalData:
        """The dataset parts for ``config`` (cached per dataset, sizes and seed)."""
        key = (config.dataset, config.n_train, config.n_public, config.n_test, config.seed)
        if key not in self._data:
            self._data[key] = load_eval_data(*key[:4], seed=config.seed, data_dir=self.data_dir)
        return self._data[key]


def model_id(model: str, split_layer: int) -> str:
    """The id the neighbour cache is keyed by (a path is reduced to a short hash)."""
    return model if "/" not in model else "path-" + hashlib.sha256(model.encode()).hexdigest()[:12]
