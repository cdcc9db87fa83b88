"""Payload headers and their header-only validation (no torch: the gateway runs this).

:func:`inspect` parses and checks a payload's header without reading tensor data: it rejects
truncated bytes, pickles, unknown dtypes, inconsistent offsets and declared shapes beyond the size
limits before any tensor is touched. :func:`check_specs` checks the declared tensors against what
the receiver expects. A q8 tensor (:mod:`.q8`: int8 codes plus float16 block scales, two entries) is
reported as one :class:`TensorInfo` of logical dtype ``"Q8"`` and its logical shape.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import q8
from .bounded_json import load_json
from .errors import DtypeRejected, NotSafetensors, SchemaError, ShapeRejected, SizeLimitExceeded, TruncatedPayload

SCHEMA = "privtune.wire"
SCHEMA_VERSION = 1

#: Payload kinds: a training step (device -> cloud), its reply (cloud -> device), a privatized
#: upload shard (classification upload mode) and the two inference kinds.
KINDS = frozenset({"step", "step_reply", "privatized_batch", "infer", "infer_reply"})

#: safetensors dtype code -> bytes per element.
DTYPE_SIZES: dict[str, int] = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
#: dtype names of a TensorInfo that are no safetensors dtype: a q8 tensor's (stored as I8 + F16 entries).
LOGICAL_DTYPES = frozenset({q8.Q8})
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16", "F64", q8.Q8})


@dataclass(frozen=True)
class WireLimits:
    """Bounds a receiver enforces before reading any tensor data."""

    max_payload_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_tensors: int = 16
    max_ndim: int = 4
    #: "Q8" admits q8 tensors (their I8 / F16 entries are checked as q8, not against this set)
    allowed_dtypes: frozenset[str] = frozenset({"F32", "F16", "BF16", "Q8", "I64", "I32", "U8", "BOOL"})

    def __post_init__(self) -> None:
        if self.max_payload_bytes <= 0 or self.max_header_bytes <= 0 or self.max_tensors <= 0:
            raise ValueError("WireLimits: max_payload_bytes, max_header_bytes and max_tensors must be > 0")
        unknown = set(self.allowed_dtypes) - set(DTYPE_SIZES) - LOGICAL_DTYPES
        if unknown:
            raise ValueError(
                f"WireLimits: unknown dtypes {sorted(unknown)}; known: {sorted({*DTYPE_SIZES, *LOGICAL_DTYPES})}"
            )


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True)
class WireHeader:
    """Metadata of one payload. ``extra`` holds further string pairs (e.g. the loss of the last step)."""

    job_id: str
    step: int
    kind: str
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.job_id or len(self.job_id) > 128:
            raise SchemaError("job_id must be a non-empty string of at most 128 characters", param="job_id")
        if not isinstance(self.step, int) or self.step < 0:
            raise SchemaError(f"step must be an integer >= 0, got {self.step!r}", param="step")
        if self.kind not in KINDS:
            raise SchemaError(f"kind {self.kind!r} is not one of {sorted(KINDS)}", param="kind")
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaError(
                f"schema version {self.schema_version} is not supported (this side speaks {SCHEMA_VERSION})"
            )
        for key, value in self.extra.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise SchemaError("extra metadata must map strings to strings")
            if key in _RESERVED_KEYS:
                raise SchemaError(f"extra metadata may not use the reserved key {key!r}")

    def to_metadata(self) -> dict[str, str]:
        meta = dict(self.extra)
        meta.update(
            schema=SCHEMA,
            schema_version=str(self.schema_version),
            job_id=self.job_id,
            step=str(self.step),
            kind=self.kind,
        )
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> WireHeader:
        if meta.get("schema") != SCHEMA:
            raise SchemaError(f"metadata 'schema' must be {SCHEMA!r}, got {meta.get('schema')!r}")
        try:
            version = int(meta["schema_version"])
            step = int(meta["step"])
            job_id, kind = meta["job_id"], meta["kind"]
        except KeyError as exc:
            raise SchemaError(f"metadata lacks the required key {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise SchemaError("metadata 'schema_version' and 'step' must be integers") from None
        extra = {k: v for k, v in meta.items() if k not in _RESERVED_KEYS}
        return cls(job_id=job_id, step=step, kind=kind, schema_version=version, extra=extra)


_RESERVED_KEYS = frozenset({"schema", "schema_version", "job_id", "step", "kind", q8.META_KEY})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as declared in a header: name, safetensors dtype code, shape, byte range.

    A q8 tensor has dtype ``"Q8"``, its logical shape, the byte range of its int8 codes, and ``scales``
    (the entry of its float16 block scales) and ``block``; :attr:`nbytes` counts both entries."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int
    scales: TensorInfo | None = None
    block: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored for this tensor (codes plus scales for q8)."""
        return self.end - self.start + (self.scales.nbytes if self.scales is not None else 0)


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver expects of one named tensor; ``None`` in ``shape`` matches any size."""

    name: str
    dtypes: frozenset[str]
    shape: tuple[int | None, ...]


def inspect(
    data: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS
) -> tuple[WireHeader, dict[str, TensorInfo]]:
    """Parse and check a payload's header without reading tensor data.

    Promises on success: the bytes are a well-formed safetensors payload of at most
    ``limits.max_payload_bytes``; every tensor has an allowed dtype, at most ``max_ndim`` dimensions,
    a byte range that matches its shape exactly; ranges tile the data buffer with no gap or overlap;
    the metadata is a valid :class:`WireHeader`; every q8 tensor has I8 codes and F16 scales of
    matching shapes. Returns the tensors by name (a q8 tensor once, as ``"Q8"``, not its scale entry).
    Limits apply to what is stored: the payload bytes, and each safetensors entry (``max_tensors``
    counts a q8 tensor's two entries).
    """
    view = memoryview(data)
    total = len(view)
    if total > limits.max_payload_bytes:
        raise SizeLimitExceeded(f"payload is {total} bytes; the limit is {limits.max_payload_bytes}")
    # A safetensors header length can start with the bytes of a pickle marker (a 640-byte header is
    # 80 02 ...): only a payload that is not shaped like safetensors (length, then "{") is a pickle.
    shaped = total >= 9 and 8 + struct.unpack("<Q", view[:8])[0] <= total and view[8] == 0x7B
    if not shaped and total >= 2 and view[0] == 0x80 and 2 <= view[1] <= 5:
        raise NotSafetensors("payload is a Python pickle; only safetensors payloads are accepted")
    if not shaped and bytes(view[:4]) == b"PK\x03\x04":
        raise NotSafetensors("payload is a zip archive (torch.save?); only safetensors payloads are accepted")
    if total < 8:
        raise TruncatedPayload(f"payload is {total} bytes; a safetensors payload starts with an 8-byte header length")
    (header_len,) = struct.unpack("<Q", view[:8])
    if 8 + header_len > total:  # first: garbage bytes are a broken payload, not a large one
        raise TruncatedPayload(f"header declares {header_len} bytes but only {total - 8} follow")
    if header_len > limits.max_header_bytes:
        raise SizeLimitExceeded(
            f"declared header length {header_len} exceeds the limit of {limits.max_header_bytes} bytes"
        )
    header = load_json(view[8 : 8 + header_len], what="header")  # NotSafetensors: depth, integer length
    if not isinstance(header, dict):
        raise NotSafetensors("header must be a JSON object")

    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        raise SchemaError("payload has no __metadata__ with schema, schema_version, job_id, step and kind")
    wire_header = WireHeader.from_metadata(meta)
    blocks = q8.parse_meta(meta)

    if len(header) > limits.max_tensors:
        raise SizeLimitExceeded(f"payload has {len(header)} tensors; the limit is {limits.max_tensors}")
    data_len = total - 8 - header_len
    q8_dtypes = {name: q8.stored_dtype(name, blocks) for name in header}  # first: reserved-name collisions
    infos = [_tensor_info(name, entry, limits, data_len, q8_dtypes[name]) for name, entry in header.items()]
    infos.sort(key=lambda info: info.start)
    cursor = 0
    for info in infos:
        if info.start != cursor:
            raise NotSafetensors(
                f"tensor {info.name!r} starts at byte {info.start}, expected {cursor} (gap or overlap)",
                param=q8.base_name(info.name),
            )
        cursor = info.end
    if cursor != data_len:
        if cursor > data_len:
            raise TruncatedPayload(f"tensors need {cursor} data bytes but only {data_len} are present")
        raise NotSafetensors(f"{data_len - cursor} trailing bytes after the last tensor")
    return wire_header, q8.fold(infos, blocks, limits.allowed_dtypes)


def _tensor_info(name: str, entry: Any, limits: WireLimits, data_len: int, q8_dtype: str | None) -> TensorInfo:
    """One safetensors entry, checked; ``q8_dtype`` is the dtype it must have as part of a q8 tensor.
    Errors about a scale entry name the tensor it belongs to."""
    param = q8.base_name(name)
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise NotSafetensors(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets", param=param)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise DtypeRejected(f"tensor {name!r}: unknown dtype {dtype!r}", param=param)
    if q8_dtype is not None and dtype != q8_dtype:
        raise DtypeRejected(
            f"tensor {name!r}: part of q8 tensor {param!r}, must be {q8_dtype}, got {dtype}", param=param
        )
    if q8_dtype is None and dtype not in limits.allowed_dtypes:
        raise DtypeRejected(
            f"tensor {name!r}: dtype {dtype} is not allowed; allowed: {sorted(limits.allowed_dtypes)}", param=param
        )
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ShapeRejected(f"tensor {name!r}: shape must be a list of non-negative integers", param=param)
    if len(shape) > limits.max_ndim:
        raise ShapeRejected(f"tensor {name!r}: {len(shape)} dimensions; at most {limits.max_ndim} allowed", param=param)
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]  # Python ints: a huge shape cannot overflow
    if nbytes > limits.max_payload_bytes:
        raise SizeLimitExceeded(
            f"tensor {name!r}: shape {shape} declares {nbytes} bytes; the payload limit is {limits.max_payload_bytes}",
            param=param,
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) and o >= 0 for o in offsets):
        raise NotSafetensors(f"tensor {name!r}: data_offsets must be two non-negative integers", param=param)
    start, end = offsets
    if end - start != nbytes:
        raise ShapeRejected(
            f"tensor {name!r}: shape {shape} x {dtype} needs {nbytes} bytes but offsets span {end - start}",
            param=param,
        )
    if end > data_len:
        raise TruncatedPayload(f"tensor {name!r} ends at byte {end} but the data buffer has {data_len}", param=param)
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)


def check_specs(infos: Mapping[str, TensorInfo], specs: Sequence[TensorSpec], *, allow_extra: bool = False) -> None:
    """Check declared tensors against what the receiver expects (names, dtypes, shapes)."""
    expected = {spec.name for spec in specs}
    missing = expected - set(infos)
    if missing:
        raise ShapeRejected(f"payload lacks tensor(s) {sorted(missing)}", param=sorted(missing)[0])
    unexpected = sorted(set(infos) - expected)
    if not allow_extra and unexpected:
        raise ShapeRejected(f"unexpected tensor(s) {unexpected}; expected {sorted(expected)}", param=unexpected[0])
    for spec in specs:
        info = infos[spec.name]
        if info.dtype not in spec.dtypes:
            raise DtypeRejected(
                f"tensor {spec.name!r}: dtype {info.dtype}; expected one of {sorted(spec.dtypes)}", param=spec.name
            )
        if len(info.shape) != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(info.shape, spec.shape, strict=True)
        ):
            pattern = tuple("*" if s is None else s for s in spec.shape)
            raise ShapeRejected(
                f"tensor {spec.name!r}: shape {list(info.shape)}; expected {list(pattern)}", param=spec.name
            )
