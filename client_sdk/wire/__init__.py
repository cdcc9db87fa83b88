"""The bytes that travel between device and cloud: named tensors plus a versioned header.

Format: plain safetensors (8-byte little-endian header length, a JSON header, one data buffer),
so any safetensors reader can open a payload and nothing is ever unpickled. The header's
``__metadata__`` carries the schema version, the job id, the step number and the payload kind.

Four small modules, re-exported here:
- ``header``: :func:`inspect` parses and checks the header only. It needs no torch (the gateway uses
  it) and rejects truncated bytes, pickles, unknown dtypes, inconsistent offsets and declared shapes
  beyond the size limits before any tensor is touched; :func:`check_specs` checks declared tensors.
- ``codec``: :func:`encode` / :func:`decode` turn tensors (torch or numpy) into bytes and back;
  ``encode(..., float_dtype="q8")`` sends floating tensors as int8 codes plus float16 block scales.
- ``q8``: that layout (two safetensors entries per tensor, metadata key ``q8``) and its header checks;
  :func:`inspect` reports a q8 tensor once, with its logical shape and the logical dtype ``"Q8"``.
- ``bounded_json``: :func:`load_json`, JSON from a peer with depth and integer-length limits (a
  ``WireError``, never ``RecursionError`` or a bare ``ValueError``).
- ``errors``: the ``WireError`` tree (a ``ValueError``; each error names its ``param`` and has a ``code``).
"""

from __future__ import annotations

from .bounded_json import load_json
from .codec import decode, encode
from .errors import (
    DtypeRejected,
    NonFiniteTensor,
    NotSafetensors,
    SchemaError,
    ShapeRejected,
    SizeLimitExceeded,
    TruncatedPayload,
    WireError,
)
from .header import (
    DEFAULT_LIMITS,
    DTYPE_SIZES,
    FLOAT_DTYPES,
    KINDS,
    LOGICAL_DTYPES,
    SCHEMA,
    SCHEMA_VERSION,
    TensorInfo,
    TensorSpec,
    WireHeader,
    WireLimits,
    check_specs,
    inspect,
)
from .q8 import BLOCK as Q8_BLOCK
from .q8 import Q8
from .q8 import SCALE_SUFFIX as Q8_SCALE_SUFFIX

__all__ = [
    "load_json",
    "DEFAULT_LIMITS",
    "DTYPE_SIZES",
    "FLOAT_DTYPES",
    "KINDS",
    "LOGICAL_DTYPES",
    "Q8",
    "Q8_BLOCK",
    "Q8_SCALE_SUFFIX",
    "SCHEMA",
    "SCHEMA_VERSION",
    "DtypeRejected",
    "NonFiniteTensor",
    "NotSafetensors",
    "SchemaError",
    "ShapeRejected",
    "SizeLimitExceeded",
    "TensorInfo",
    "TensorSpec",
    "TruncatedPayload",
    "WireError",
    "WireHeader",
    "WireLimits",
    "check_specs",
    "decode",
    "encode",
    "inspect",
]
