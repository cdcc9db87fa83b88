"""The wire's error tree: every rejection names what it is about (``param``: a tensor or a header
field) and carries a stable machine-readable ``code``; the service maps each class to one HTTP
status (``service.errors.WIRE_STATUS``)::

    WireError (ValueError)
     ├── TruncatedPayload      bytes end before the header or the data says they should
     ├── NotSafetensors        pickle / zip / anything that is not a safetensors payload
     ├── SchemaError           missing or wrong metadata (schema version, job id, step, kind)
     ├── DtypeRejected         a dtype outside the allowed set
     ├── ShapeRejected         a shape that does not match what the receiver expects
     ├── SizeLimitExceeded     payload, header, element count or tensor count beyond the limits
     └── NonFiniteTensor       NaN or Inf in a floating tensor (checked by decode)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DtypeRejected",
    "NonFiniteTensor",
    "NotSafetensors",
    "SchemaError",
    "ShapeRejected",
    "SizeLimitExceeded",
    "TruncatedPayload",
    "WireError",
]


class WireError(ValueError):
    """A payload that cannot be accepted. The message says what is wrong and what is allowed;
    ``param`` names the tensor or header field concerned (None when the payload as a whole is at fault)."""

    code: ClassVar[str] = "invalid_payload"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class TruncatedPayload(WireError):
    code = "truncated_payload"


class NotSafetensors(WireError):
    code = "not_safetensors"


class SchemaError(WireError):
    code = "invalid_header"


class DtypeRejected(WireError):
    code = "dtype_rejected"


class ShapeRejected(WireError):
    code = "shape_rejected"


class SizeLimitExceeded(WireError):
    code = "size_limit_exceeded"


class NonFiniteTensor(WireError):
    code = "non_finite_tensor"
