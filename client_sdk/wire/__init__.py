"""The bytes that travel between device and cloud: named tensors plus a versioned header.

Format: plain safetensors (8-byte little-endian header length, a JSON header, one data buffer),
so any safetensors reader can open a payload and nothing is ever unpickled. The header's
``__metadata__`` carries the schema version, the job id, the step number and the payload kind.

Three small modules, re-exported here:
- ``header``: :func:`inspect` parses and checks the header only. It needs no torch (the gateway uses
  it) and rejects truncated bytes, pickles, unknown dtypes, inconsistent offsets and declared shapes
  beyond the size limits before any tensor is touched; :func:`check_specs` checks declared tensors.
- ``codec``: :func:`encode` / :func:`decode` turn tensors (torch or numpy) into bytes and back.
- ``errors``: the ``WireError`` tree (a ``ValueError``; each error names its ``param`` and has a ``code``).
"""

from __future__ import annotations

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
    SCHEMA,
    SCHEMA_VERSION,
    TensorInfo,
    TensorSpec,
    WireHeader,
    WireLimits,
    check_specs,
    inspect,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPE_SIZES",
    "FLOAT_DTYPES",
    "KINDS",
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
