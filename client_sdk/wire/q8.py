"""The q8 layout of a float tensor on the wire (torch-free: :func:`~client_sdk.wire.inspect` uses it).

``encode(..., float_dtype="q8")`` stores a floating tensor ``x`` of logical shape ``(*lead, d)`` as two
plain safetensors entries and one line of header metadata::

    <name>              I8   (*lead, d)    codes in -127..127, round(x / scale) of the value's block
    <name>.__q8_scale   F16  (*lead, nb)   the absmax of each block, rounded down to float16
    __metadata__["q8"]  '{"<name>": 64}'   the q8 tensors and their block size (values per block)

Blocks are ``block`` consecutive values along the last dimension; ``nb = ceil(d / block)``, so the last
block of a row is shorter when ``d`` is not a multiple of ``block`` (it is zero-padded for the absmax
and the padding is not stored). A value decodes to ``code * scale`` with ``scale = float32(absmax) / 127``
(the same float32 operation on both sides). The codes entry carries the logical shape; ``inspect``
reports the pair as one :class:`~client_sdk.wire.TensorInfo` of dtype :data:`Q8` with that shape.

The float16 value is the block's absmax rather than absmax / 127 so that the scales have the dynamic
range of float16 itself: absmax / 127 would be a float16 subnormal (a few bits of precision) for every
block below 127 * 2**-14 ~ 7.8e-3, which is common for ``grad_output``. Rounding the absmax *down*
keeps every code in range and the error of a block within ``absmax / 254`` (float16 normal range).

Names ending in :data:`SCALE_SUFFIX` are reserved for scale entries; the metadata key :data:`META_KEY`
is reserved in every header. A receiver that predates q8 refuses such a payload (its default limits
allow no I8 entry) rather than misreading it, so the schema version is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .bounded_json import load_json
from .errors import DtypeRejected, SchemaError, ShapeRejected

if TYPE_CHECKING:
    from .header import TensorInfo

__all__ = [
    "BLOCK",
    "CODE_DTYPE",
    "F16_MAX",
    "MAX_BLOCK",
    "META_KEY",
    "Q8",
    "SCALE_DTYPE",
    "SCALE_SUFFIX",
    "base_name",
    "check_allowed",
    "check_pair",
    "fold",
    "parse_meta",
    "scale_name",
    "scale_shape",
    "stored_dtype",
]

Q8 = "Q8"  #: the logical dtype name of a q8 tensor (TensorInfo.dtype; never a safetensors entry's dtype)
BLOCK = 64  #: values per block that encode uses
MAX_BLOCK = 4096  #: the largest block size a receiver accepts
META_KEY = "q8"  #: header metadata key: JSON object {tensor name: block size}
SCALE_SUFFIX = ".__q8_scale"  #: reserved name suffix of the scale entries
CODE_DTYPE, SCALE_DTYPE = "I8", "F16"
F16_MAX = 65504.0  #: the largest finite float16: larger values cannot travel (as with float16)


def scale_name(name: str) -> str:
    """The entry name of ``name``'s scales."""
    return name + SCALE_SUFFIX


def base_name(entry: str) -> str:
    """The tensor an entry belongs to: ``x`` for ``x.__q8_scale``, the name itself otherwise."""
    return entry.removesuffix(SCALE_SUFFIX)


def scale_shape(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    """Shape of the scales of a tensor of logical ``shape`` (*lead, d): (*lead, ceil(d / block))."""
    return (*shape[:-1], -(-shape[-1] // block))


def parse_meta(meta: Mapping[str, Any]) -> dict[str, int]:
    """The q8 tensors a header declares, ``{name: block}`` (empty without the key); ``SchemaError``
    (``param`` = ``"q8"``) unless it is a JSON object of tensor names to block sizes in 1..MAX_BLOCK."""
    text = meta.get(META_KEY)
    if text is None:
        return {}
    blocks = (
        load_json(text, what=f"metadata {META_KEY!r}", error=SchemaError, param=META_KEY, max_depth=1)
        if isinstance(text, str)
        else None
    )
    if not isinstance(blocks, dict) or not blocks:
        raise SchemaError(f"metadata {META_KEY!r} must be a JSON object {{tensor name: block size}}", param=META_KEY)
    for name, block in blocks.items():
        if name.endswith(SCALE_SUFFIX):
            raise SchemaError(f"metadata {META_KEY!r} names the reserved scale entry {name!r}", param=name)
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
            raise SchemaError(f"tensor {name!r}: q8 block size must be an integer in 1..{MAX_BLOCK}", param=name)
    return blocks


def stored_dtype(entry: str, blocks: Mapping[str, int]) -> str | None:
    """The dtype a safetensors entry must have as part of a q8 tensor (None: not part of one).
    ``ShapeRejected`` for a reserved-suffix entry that belongs to no declared q8 tensor."""
    if entry.endswith(SCALE_SUFFIX):
        if base_name(entry) not in blocks:
            raise ShapeRejected(
                f"tensor name {entry!r} uses the reserved suffix {SCALE_SUFFIX!r} but {base_name(entry)!r} "
                f"is not declared in metadata {META_KEY!r}",
                param=entry,
            )
        return SCALE_DTYPE
    return CODE_DTYPE if entry in blocks else None


def check_pair(name: str, codes: tuple[int, ...] | None, scales: tuple[int, ...] | None, block: int) -> None:
    """Check that a declared q8 tensor has both entries and that their shapes agree
    (``ShapeRejected``, ``param`` = the tensor's name)."""
    if codes is None:
        raise ShapeRejected(
            f"q8 tensor {name!r} is declared in metadata {META_KEY!r} but has no codes entry", param=name
        )
    if scales is None:
        raise ShapeRejected(f"q8 tensor {name!r} lacks its scale entry {scale_name(name)!r}", param=name)
    if not codes:
        raise ShapeRejected(f"q8 tensor {name!r} must have at least one dimension", param=name)
    want = scale_shape(codes, block)
    if tuple(scales) != want:
        raise ShapeRejected(
            f"q8 tensor {name!r} of shape {list(codes)} with blocks of {block} needs scales of shape "
            f"{list(want)}, got {list(scales)}",
            param=name,
        )


def check_allowed(blocks: Mapping[str, int], allowed: frozenset[str]) -> None:
    """``DtypeRejected`` if the payload has q8 tensors but the receiver does not allow :data:`Q8`."""
    if blocks and Q8 not in allowed:
        name = sorted(blocks)[0]
        raise DtypeRejected(f"tensor {name!r}: dtype {Q8} is not allowed; allowed: {sorted(allowed)}", param=name)


def fold(infos: Sequence[TensorInfo], blocks: Mapping[str, int], allowed: frozenset[str]) -> dict[str, TensorInfo]:
    """The checked entries of a payload (in buffer order) as its tensors by name: each q8 pair folded into
    one info of dtype :data:`Q8`, the logical shape, the codes' byte range, ``scales`` and ``block``."""
    check_allowed(blocks, allowed)
    by_name = {info.name: info for info in infos}
    for name, block in blocks.items():
        codes, scales = by_name.get(name), by_name.get(scale_name(name))
        check_pair(name, None if codes is None else codes.shape, None if scales is None else scales.shape, block)
    out: dict[str, TensorInfo] = {}
    for info in infos:
        if info.name in blocks:
            out[info.name] = replace(info, dtype=Q8, scales=by_name[scale_name(info.name)], block=blocks[info.name])
        elif not info.name.endswith(SCALE_SUFFIX):
            out[info.name] = info
    return out
