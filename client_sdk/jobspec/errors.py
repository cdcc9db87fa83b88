"""How the job contract says no: every refusal names the field it is about."""

from __future__ import annotations

import difflib
from typing import Any

from client_sdk.privacy.errors import PrivacyConfigError

__all__ = ["FieldError", "JobSpecError", "UnknownKeyError", "error_param", "unknown_key_message"]


class FieldError(ValueError):
    """A model-level check that is about one field: ``field`` names it (so the error's ``param`` does)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownKeyError(FieldError):
    """A key the spec does not define; the message lists the valid ones. ``field`` names the key."""

    def __init__(self, key: str, known: tuple[str, ...]) -> None:
        super().__init__(key, unknown_key_message(key, known))
        self.known = known


class JobSpecError(ValueError):
    """A job spec that a server's limits or a model's shape refuse; ``param`` names the field."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def unknown_key_message(key: str, known: tuple[str, ...]) -> str:
    """``unknown key 'epochs'; valid keys: batch_size, ... (did you mean 'n_epochs'?)``."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}; valid keys: {', '.join(known)}{hint}"


def error_param(error: dict[str, Any]) -> str | None:
    """The dotted field a pydantic error (one of ``ValidationError.errors()``) is about, its cause's
    field included (an unknown key, a mechanism parameter): ``method.privtune.privacy.eta``."""
    loc = [str(part) for part in error.get("loc", ())]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc.append(cause.field)
    elif isinstance(cause, PrivacyConfigError):
        loc.append(cause.parameter)
    return ".".join(loc) or None
