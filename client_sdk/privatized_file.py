"""The privatized training file of upload mode: one definition of its format, used by the SDK that
writes it (``client_sdk.upload``), the gateway that accepts it (header only, no torch) and the worker
that trains from it.

A file is one safetensors payload of kind ``privatized_batch``::

    hidden          (n, t, d) float     the perturbed split-layer states, exactly what Privatizer.privatize gives
    attention_mask  (n, t)    integer   1 = real token (optional: all ones)
    labels          (n,)      integer   class indices 0..num_labels-1
    __metadata__    the wire header plus the :class:`Manifest` (model, split layer, labels, mechanism)

Never text or token ids: a file with any other tensor is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_sdk import wire

__all__ = ["HIDDEN", "KIND", "LABELS", "MASK", "Manifest", "PrivatizedData", "check", "load"]

KIND = "privatized_batch"
HIDDEN, MASK, LABELS = "hidden", "attention_mask", "labels"
FLOAT_DTYPES = frozenset(wire.FLOAT_DTYPES - {"F64"})  # F32, F16, BF16 and Q8 (int8 + block scales)
LABEL_DTYPES = frozenset({"I64", "I32", "I16", "I8", "U8"})
MASK_DTYPES = frozenset({"U8", "BOOL", "I32", "I64"})
TENSORS = (HIDDEN, MASK, LABELS)


@dataclass(frozen=True)
class Manifest:
    """What a privatized file says about itself (its header's metadata, all strings on the wire)."""

    model: str
    split_layer: int
    num_labels: int
    label_names: tuple[str, ...]
    mechanism: str
    mechanism_config: dict[str, Any]

    def to_metadata(self) -> dict[str, str]:
        """The header's extra metadata (safetensors metadata is string -> string)."""
        return {
            "model": self.model,
            "split_layer": str(self.split_layer),
            "num_labels": str(self.num_labels),
            "label_names": json.dumps(list(self.label_names)),
            "mechanism": self.mechanism,
            "mechanism_config": json.dumps(self.mechanism_config),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Manifest:
        """Parse the header's extra metadata (or a stored copy of it); ``wire.SchemaError`` names the field."""
        try:
            manifest = cls(
                model=str(meta["model"]),
                split_layer=int(meta["split_layer"]),
                num_labels=int(meta["num_labels"]),
                label_names=tuple(
                    str(n)
                    for n in wire.load_json(
                        meta.get("label_names") or "[]", error=wire.SchemaError, param="label_names", max_depth=1
                    )
                ),
                mechanism=str(meta.get("mechanism") or "none"),
                mechanism_config=dict(
                    wire.load_json(
                        meta.get("mechanism_config") or "{}",
                        error=wire.SchemaError,
                        param="mechanism_config",
                        max_depth=2,
                    )
                ),
            )
        except wire.SchemaError:
            raise  # already names its field
        except KeyError as exc:
            raise wire.SchemaError(f"the file's manifest lacks {exc.args[0]!r}", param=str(exc.args[0])) from None
        except (TypeError, ValueError) as exc:
            raise wire.SchemaError(f"the file's manifest is malformed: {exc}", param="manifest") from None
        if manifest.num_labels < 2 or manifest.split_layer < 1:
            raise wire.SchemaError("the file's manifest needs num_labels >= 2 and split_layer >= 1", param="manifest")
        return manifest

    from_stored = from_metadata  # the gateway stores the parsed header metadata with the file's row

    def declared_privacy(self) -> dict[str, Any]:
        """The mechanism as a job declares it (``client_sdk.jobspec.DeclaredPrivacy``)."""
        return {**self.mechanism_config, "mechanism": self.mechanism}


def check(header: wire.WireHeader, infos: Mapping[str, wire.TensorInfo]) -> tuple[Manifest, int, int, int]:
    """Check a file's header and declared tensors (no data read); returns ``(manifest, n, t, d)``.

    Raises ``wire.SchemaError`` for another kind or a bad manifest, ``wire.ShapeRejected`` /
    ``wire.DtypeRejected`` (``param`` = the tensor) for tensors that are not a privatized batch."""
    if header.kind != KIND:
        raise wire.SchemaError(f"the file has kind {header.kind!r}; a privatized file has kind {KIND!r}", param="kind")
    unexpected = sorted(set(infos) - set(TENSORS))
    if unexpected:
        raise wire.ShapeRejected(f"unexpected tensors {unexpected}; allowed: {list(TENSORS)}", param=unexpected[0])
    hidden, labels, mask = infos.get(HIDDEN), infos.get(LABELS), infos.get(MASK)
    if hidden is None or len(hidden.shape) != 3:
        raise wire.ShapeRejected("a privatized file needs a 'hidden' tensor of shape (n, t, d)", param=HIDDEN)
    if hidden.dtype not in FLOAT_DTYPES:
        raise wire.DtypeRejected(f"'hidden' must be floating, got {hidden.dtype}", param=HIDDEN)
    n, t, d = hidden.shape
    if labels is None or labels.shape != (n,):
        raise wire.ShapeRejected(f"a privatized file needs an integer 'labels' tensor of shape ({n},)", param=LABELS)
    if labels.dtype not in LABEL_DTYPES:
        raise wire.DtypeRejected(f"'labels' must be integers, got {labels.dtype}", param=LABELS)
    if mask is not None and (mask.shape != (n, t) or mask.dtype not in MASK_DTYPES):
        raise wire.ShapeRejected(f"'attention_mask' must be an integer ({n}, {t}) tensor matching 'hidden'", param=MASK)
    return Manifest.from_metadata(header.extra), n, t, d


@dataclass(frozen=True)
class PrivatizedData:
    """A privatized file in memory: hidden (n, t, d) float32, attention_mask (n, t) int64, labels (n,) int64."""

    manifest: Manifest
    hidden: Any
    attention_mask: Any
    labels: Any

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load(path: str | Path, max_bytes: int, hidden_size: int) -> PrivatizedData:
    """Read, check and decode a privatized file (needs torch). Raises ``wire.WireError`` with the reason:
    the same checks as at upload, plus the model's hidden size, finite values and labels in range."""
    import torch

    data = Path(path).read_bytes()
    header, infos = wire.inspect(data, wire.WireLimits(max_payload_bytes=max_bytes))
    manifest, n, t, d = check(header, infos)
    if d != hidden_size:
        raise wire.ShapeRejected(f"'hidden' has size {d}; the model's is {hidden_size}", param=HIDDEN)
    _, tensors = wire.decode(data, wire.WireLimits(max_payload_bytes=max_bytes))
    mask = tensors.get(MASK)
    mask = torch.ones((n, t), dtype=torch.int64) if mask is None else mask.long()
    labels = tensors[LABELS].long()
    if n == 0 or int(labels.min()) < 0 or int(labels.max()) >= manifest.num_labels:
        raise wire.ShapeRejected(f"labels must lie in 0..{manifest.num_labels - 1}", param=LABELS)
    return PrivatizedData(manifest, tensors[HIDDEN], mask, labels)
