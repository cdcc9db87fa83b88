"""Tensors (torch or numpy) to payload bytes and back: :func:`encode`, :func:`decode` (torch on use)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import DtypeRejected, NonFiniteTensor
from .header import DEFAULT_LIMITS, TensorSpec, WireHeader, WireLimits, check_specs, inspect

_WIRE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def encode(tensors: Mapping[str, Any], header: WireHeader, *, float_dtype: str = "float16") -> bytes:
    """Serialise named tensors (torch or numpy) and a header to safetensors bytes.

    Floating tensors are cast to ``float_dtype`` (float32, float16 or bfloat16); other dtypes
    travel as they are. Tensor order in the buffer follows the mapping's order.
    """
    if float_dtype not in _WIRE_DTYPES:
        raise ValueError(f"float_dtype must be one of {sorted(_WIRE_DTYPES)}, got {float_dtype!r}")
    entries: dict[str, Any] = {"__metadata__": header.to_metadata()}
    chunks: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        code, shape, raw = _tensor_bytes(tensor, _WIRE_DTYPES[float_dtype])
        entries[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
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
        t = t.contiguous().cpu()
        return code, tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()
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

    ``specs`` adds name/dtype/shape checks; ``check_finite`` rejects NaN/Inf in floating tensors;
    ``float_dtype`` casts floating tensors after decoding (``None`` keeps the wire dtype).
    """
    import torch

    header, infos = inspect(data, limits)
    if specs is not None:
        check_specs(infos, specs)
    view = memoryview(data)
    base = 8 + struct.unpack("<Q", view[:8])[0]
    out: dict[str, Any] = {}
    for name, info in infos.items():
        dtype = getattr(torch, _TORCH_NAMES[info.dtype])
        raw = bytearray(view[base + info.start : base + info.end])  # own the memory
        tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensor = tensor.reshape(info.shape)
        if tensor.is_floating_point():
            if check_finite and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteTensor(f"tensor {name!r} contains NaN or Inf", param=name)
            if float_dtype is not None:
                tensor = tensor.to(getattr(torch, float_dtype))
        out[name] = tensor
    return header, out


_TORCH_NAMES = {code: name for name, code in _TORCH_CODES.items()}
