"""The bytes that travel between device and cloud: named tensors plus a versioned header.

Format: plain safetensors (8-byte little-endian header length, a JSON header, one data buffer),
so any safetensors reader can open a payload and nothing is ever unpickled. The header's
``__metadata__`` carries the schema version, the job id, the step number and the payload kind.

Two halves:
- :func:`inspect` parses and checks the header only. It needs no torch (the gateway uses it) and
  rejects truncated bytes, pickles, unknown dtypes, inconsistent offsets and declared shapes beyond
  the size limits before any tensor is touched.
- :func:`encode` / :func:`decode` turn tensors (torch or numpy) into bytes and back.

Error tree (all are ``WireError``, a ``ValueError``; each names its ``param`` and has a ``code``)::

    WireError
     ├── TruncatedPayload      bytes end before the header or the data says they should
     ├── NotSafetensors        pickle / zip / anything that is not a safetensors payload
     ├── SchemaError           missing or wrong metadata (schema version, job id, step, kind)
     ├── DtypeRejected         a dtype outside the allowed set
     ├── ShapeRejected         a shape that does not match what the receiver expects
     ├── SizeLimitExceeded     payload, header, element count or tensor count beyond the limits
     └── NonFiniteTensor       NaN or Inf in a floating tensor (checked by decode)
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
