"""The machinery of every mechanism config: fields with help text and constraints (:func:`option`),
validation in ``__post_init__`` that names the field, and the JSON round trip (:class:`MechanismConfig`).
The configs themselves are in ``client_sdk.privacy.config``."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from .errors import InvalidChoiceError, PrivacyConfigError, UnknownParameterError

__all__ = ["MechanismConfig", "option"]


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    integer: bool = False,
    optional: bool = False,
    lt_field: str | None = None,
    strings: bool = False,
) -> Any:
    """A dataclass field with help text and the constraints ``MechanismConfig`` checks (``strings``: a
    list of non-empty strings, stored as a tuple)."""
    meta = {"help": help, "choices": choices, "gt": gt, "ge": ge, "le": le, "integer": integer}
    meta.update(optional=optional, lt_field=lt_field, strings=strings)
    return field(default=default, metadata=meta)


def _check_field(name: str, value: Any, meta: dict[str, Any]) -> Any:
    """Return the normalised value of one field or raise the error that names it."""
    if value is None and meta.get("optional"):
        return None
    if meta.get("strings"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value)
        if not ok:
            raise PrivacyConfigError(name, "a list of non-empty strings", value)
        return tuple(v.strip() for v in value)
    if meta.get("choices") is not None:
        if not isinstance(value, str) or value not in meta["choices"]:
            raise InvalidChoiceError(name, meta["choices"], value)
        return value
    if meta.get("integer"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PrivacyConfigError(name, "an integer" + _bounds_text(meta), value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrivacyConfigError(name, "a finite number" + _bounds_text(meta), value)
    else:
        value = float(value)
    ok = (
        (meta["gt"] is None or value > meta["gt"])
        and (meta["ge"] is None or value >= meta["ge"])
        and (meta["le"] is None or value <= meta["le"])
    )
    if not ok:
        raise PrivacyConfigError(name, _bounds_text(meta).strip() or "valid", value)
    return value


def _bounds_text(meta: dict[str, Any]) -> str:
    parts = [f"{op} {meta[key]}" for key, op in (("gt", ">"), ("ge", ">="), ("le", "<=")) if meta.get(key) is not None]
    text = " and ".join(parts)
    if meta.get("optional"):
        text = (text + " or None").strip()
    return (" " + text) if text else ""


@dataclass(frozen=True)
class MechanismConfig:
    """Base of every mechanism config: validation from field metadata and the JSON round trip."""

    name: ClassVar[str] = ""
    #: What the mechanism does, read by the torch-free table (``client_sdk.privacy.table``) and by the
    #: mechanism classes (``client_sdk.privacy.mechanisms``): one definition for both.
    adds_noise: ClassVar[bool] = False
    uses_importance: ClassVar[bool] = False
    uses_opt3: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = _check_field(f.name, getattr(self, f.name), f.metadata)
            object.__setattr__(self, f.name, value)
        for f in fields(self):
            other = f.metadata.get("lt_field")
            if other is not None and getattr(self, f.name) >= getattr(self, other):
                raise PrivacyConfigError(f.name, f"< {other} ({getattr(self, other)})", getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{"mechanism": name, field: value, ...}`` that ``from_dict`` inverts."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"mechanism": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MechanismConfig:
        """Build and validate a config from ``to_dict`` output; unknown keys raise ``UnknownParameterError``."""
        data = dict(data)
        mechanism = data.pop("mechanism", cls.name)
        if mechanism != cls.name:
            raise PrivacyConfigError("mechanism", repr(cls.name), mechanism)
        known = tuple(f.name for f in fields(cls))
        for key in data:
            if key not in known:
                raise UnknownParameterError(cls.name, key, known)
        return cls(**data)

    def to_json(self) -> str:
        """``to_dict`` as a JSON string (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MechanismConfig:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def describe(cls) -> dict[str, dict[str, Any]]:
        """``{field: {"default": ..., "help": ...}}`` for CLIs and docs."""
        return {
            f.name: {"default": None if f.default is MISSING else f.default, "help": f.metadata["help"]}
            for f in fields(cls)
        }
