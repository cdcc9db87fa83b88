"""Tensors (torch or numpy) to payload bytes and back: :func:`encode`, :func:`decode` (torch on use),
and the q8 block quantisation (:mod:`.q8` describes the layout)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from . import q8
from .errors import DtypeRejected, NonFiniteTensor, ShapeRejected
from .header import DEFAULT_LIMITS, TensorInfo, TensorSpec, WireHeader, WireLimits, check_specs, inspect

_WIRE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "q8": q8.Q8}


def encode(tensors: Mapping[str, Any], header: WireHeader, *, float_dtype: str = "float16") -> bytes:
    """Serialise named tensors (torch or numpy) and a header to safetensors bytes.

    Floating tensors are cast to ``float_dtype`` (float32, float16 or bfloat16); other dtypes
    travel as they are. Tensor order in the buffer follows the mapping's order.

    ``float_dtype="q8"``: every floating tensor with at least one dimension travels as int8 codes
    plus one float16 scale per block of 64 values along its last dimension (about 1.03 bytes per value;
    decode returns float32; error <= block absmax / 254). 0-d floating tensors travel as float16.
    Raises ``NonFiniteTensor`` (``param`` = the tensor) for NaN / Inf or values beyond +-65504.
    Names ending in ``.__q8_scale`` are reserved (``ShapeRejected``), whatever ``float_dtype``.
    """
    if float_dtype not in _WIRE_DTYPES:
        raise ValueError(f"float_dtype must be one of {sorted(_WIRE_DTYPES)}, got {float_dtype!r}")
    entries: dict[str, Any] = {"__metadata__": header.to_metadata()}
    chunks: list[bytes] = []
    blocks: dict[str, int] = {}  # q8 tensors -> block size, recorded in the metadata
    offset = 0
    for name, tensor in tensors.items():
        if name.endswith(q8.SCALE_SUFFIX):
            raise ShapeRejected(f"tensor name {name!r}: the suffix {q8.SCALE_SUFFIX!r} is reserved", param=name)
        if float_dtype == "q8" and _is_q8_candidate(tensor):
            (codes, shape), (scales, scale_shape) = _q8_bytes(name, tensor)
            parts = [(name, q8.CODE_DTYPE, shape, codes), (q8.scale_name(name), q8.SCALE_DTYPE, scale_shape, scales)]
            blocks[name] = q8.BLOCK
        else:
            code, shape, raw = _tensor_bytes(tensor, "F16" if float_dtype == "q8" else _WIRE_DTYPES[float_dtype])
            parts = [(name, code, shape, raw)]
        for entry, code, shape, raw in parts:
            entries[entry] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
            chunks.append(raw)
            offset += len(raw)
    if blocks:
        entries["__metadata__"][q8.META_KEY] = json.dumps(blocks, separators=(",", ":"))
    head = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # safetensors aligns the data buffer to 8 bytes
    return b"".join([struct.pack("<Q", len(head)), head, *chunks])


def _tensor_bytes(tensor: Any, float_code: str) -> tuple[str, tuple[int, ...], bytes]:
    module = type(tensor).__module__
    if module.startswith("torch"):
        import torch

        t = tensor.detach()
        if t.is_floating_point():
            t = t.to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[float_code])
        code = _TORCH_CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise DtypeRejected(f"cannot send torch dtype {t.dtype}")
        return code, tuple(t.shape), _torch_bytes(t)
    import numpy as np

    arr = np.ascontiguousarray(tensor)
    if arr.dtype.kind == "f":
        if float_code == "BF16":
            raise DtypeRejected("numpy has no bfloat16; pass a torch tensor or use float16/float32")
        arr = arr.astype(np.float32 if float_code == "F32" else np.float16)
    code = _NUMPY_CODES.get(arr.dtype.name)
    if code is None:
        raise DtypeRejected(f"cannot send numpy dtype {arr.dtype}")
    return code, tuple(arr.shape), arr.tobytes()


def _torch_bytes(t: Any) -> bytes:
    import torch

    return t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _is_q8_candidate(tensor: Any) -> bool:
    """A floating tensor with at least one dimension: what ``float_dtype="q8"`` quantises."""
    if type(tensor).__module__.startswith("torch"):
        return bool(tensor.is_floating_point()) and tensor.dim() >= 1
    import numpy as np

    arr = np.asarray(tensor)
    return arr.dtype.kind == "f" and arr.ndim >= 1


def _q8_bytes(name: str, tensor: Any) -> tuple[tuple[bytes, tuple[int, ...]], tuple[bytes, tuple[int, ...]]]:
    """The (bytes, shape) of a floating tensor's q8 codes and of its scales."""
    import numpy as np
    import torch

    if isinstance(tensor, torch.Tensor):
        x = tensor.detach().float()  # (*lead, d), on its device
    else:
        x = torch.from_numpy(np.array(tensor, dtype=np.float32))  # an owned, writable copy
    peak = float(x.abs().amax()) if x.numel() else 0.0  # NaN if any value is NaN
    if not math.isfinite(peak):
        raise NonFiniteTensor(f"tensor {name!r} contains NaN or Inf", param=name)
    if peak > q8.F16_MAX:
        raise NonFiniteTensor(
            f"tensor {name!r} has |values| up to {peak:g}; q8 carries at most {q8.F16_MAX:g}", param=name
        )
    codes, maxima = _quantize(x, q8.BLOCK)
    return (_torch_bytes(codes), tuple(codes.shape)), (_torch_bytes(maxima), tuple(maxima.shape))


def _quantize(x: Any, block: int) -> tuple[Any, Any]:
    """Blockwise absmax quantisation of finite ``x`` (*lead, d) float32 with |x| <= 65504.

    Returns codes (*lead, d) int8 in -127..127 and maxima (*lead, nb) float16, nb = ceil(d / block):
    each block's absmax rounded down to float16. With ``scale = maxima / 127`` every |x| / scale is at
    most 127 * (1 + 2**-10), so clamping to 127 costs less than rounding does, and the error is at most
    absmax / 254 (absmax in the float16 normal range, >= 2**-14). A zero block has scale 0 and codes 0 (no division by zero).
    """
    import torch

    d, nb = x.shape[-1], -(-x.shape[-1] // block)
    lead = tuple(x.shape[:-1])
    blocks = torch.nn.functional.pad(x, (0, nb * block - d)).reshape(*lead, nb, block)  # (*lead, nb, block)
    absmax = blocks.abs().amax(dim=-1)  # (*lead, nb)
    maxima = absmax.to(torch.float16)  # nearest; then one float16 step down where it rounded up
    maxima = torch.where(maxima.float() > absmax, (maxima.view(torch.int16) - 1).view(torch.float16), maxima)
    scale = (maxima.float() / 127).unsqueeze(-1)  # (*lead, nb, 1), the decoder's exact float32 value
    codes = torch.where(scale > 0, torch.round(blocks / torch.where(scale > 0, scale, 1.0)), 0.0)
    codes = codes.clamp_(-127, 127).to(torch.int8).reshape(*lead, nb * block)[..., :d]  # (*lead, d)
    return codes, maxima


def _dequantize(codes: Any, maxima: Any, block: int) -> Any:
    """codes (*lead, d) int8 and maxima (*lead, nb) float16 -> values (*lead, d) float32."""
    scale = maxima.float() / 127  # (*lead, nb)
    scale = scale.repeat_interleave(block, dim=-1)[..., : codes.shape[-1]]  # (*lead, d)
    return codes.float() * scale


_TORCH_CODES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_NUMPY_CODES = {name: code for name, code in _TORCH_CODES.items() if name != "bfloat16"}  # numpy has no bfloat16


def decode(
    data: bytes | bytearray | memoryview,
    limits: WireLimits = DEFAULT_LIMITS,
    *,
    specs: Sequence[TensorSpec] | None = None,
    check_finite: bool = True,
    float_dtype: str | None = "float32",
) -> tuple[WireHeader, dict[str, Any]]:
    """Validate a payload and return its header and torch tensors (copies, on the CPU).

    ``specs`` adds name/dtype/shape checks; ``check_finite`` rejects NaN/Inf in floating tensors (and
    in q8 scales); ``float_dtype`` casts floating tensors after decoding (``None`` keeps the wire dtype;
    a q8 tensor is dequantised to float32 first, so ``None`` gives float32).
    """
    import torch

    header, infos = inspect(data, limits)
    if specs is not None:
        check_specs(infos, specs)
    view = memoryview(data)
    base = 8 + struct.unpack("<Q", view[:8])[0]
    out: dict[str, Any] = {}
    for name, info in infos.items():
        if info.dtype == q8.Q8:
            assert info.scales is not None and info.block is not None  # inspect pairs every q8 tensor
            maxima = _read(view, base, info.scales)
            if check_finite and not bool(torch.isfinite(maxima).all()):
                raise NonFiniteTensor(f"tensor {name!r}: its q8 scales contain NaN or Inf", param=name)
            tensor = _dequantize(_read(view, base, info, q8.CODE_DTYPE), maxima, info.block)
        else:
            tensor = _read(view, base, info)
            if tensor.is_floating_point() and check_finite and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteTensor(f"tensor {name!r} contains NaN or Inf", param=name)
        if tensor.is_floating_point() and float_dtype is not None:
            tensor = tensor.to(getattr(torch, float_dtype))
        out[name] = tensor
    return header, out


def _read(view: memoryview, base: int, info: TensorInfo, code: str | None = None) -> Any:
    """One stored entry as a torch tensor of its shape (``code`` overrides the info's dtype)."""
    import torch

    dtype = getattr(torch, _TORCH_NAMES[code or info.dtype])
    raw = bytearray(view[base + info.start : base + info.end])  # own the memory
    tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    return tensor.reshape(info.shape)


_TORCH_NAMES = {code: name for name, code in _TORCH_CODES.items()}
