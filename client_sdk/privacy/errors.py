"""Errors raised by the privacy mechanisms.

Every error names what the user can change::

    PrivacyError
    ├── PrivacyConfigError (ValueError)        a setting is out of range; .parameter, .allowed, .got
    │   ├── InvalidChoiceError                 a string option is not one of the allowed values
    │   ├── UnknownParameterError              a keyword the mechanism's config does not define
    │   └── UnknownMechanismError              a mechanism name that is not registered
    ├── PrivacyStateError (RuntimeError)       a mechanism was called without what it needs
    │                                          (prepared state, importance, token ids, labels)
    └── NeighbourCacheError                    a neighbour cache file is unreadable or for other inputs
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidChoiceError",
    "NeighbourCacheError",
    "PrivacyConfigError",
    "PrivacyError",
    "PrivacyStateError",
    "UnknownMechanismError",
    "UnknownParameterError",
]


class PrivacyError(Exception):
    """Base class of every error raised by ``client_sdk.privacy``."""


class PrivacyConfigError(PrivacyError, ValueError):
    """A privacy setting is invalid.

    ``parameter`` names the setting, ``allowed`` says what is allowed, ``got`` is the rejected value.
    """

    def __init__(self, parameter: str, allowed: str, got: Any = None, *, message: str | None = None) -> None:
        self.parameter = parameter
        self.allowed = allowed
        self.got = got
        super().__init__(message or f"{parameter} must be {allowed} (got {got!r})")


class InvalidChoiceError(PrivacyConfigError):
    """A string option (metric, sensitivity mode, ...) is not one of its allowed values."""

    def __init__(self, parameter: str, choices: tuple[str, ...], got: Any) -> None:
        self.choices = tuple(choices)
        allowed = "one of " + ", ".join(repr(c) for c in self.choices)
        super().__init__(parameter, allowed, got)


class UnknownParameterError(PrivacyConfigError):
    """A keyword was passed that the mechanism's configuration does not define."""

    def __init__(self, mechanism: str, parameter: str, known: tuple[str, ...]) -> None:
        self.mechanism = mechanism
        self.known = tuple(known)
        allowed = ", ".join(self.known) if self.known else "(no parameters)"
        super().__init__(
            parameter,
            allowed,
            None,
            message=f"mechanism {mechanism!r} has no parameter {parameter!r}; its parameters are: {allowed}",
        )


class UnknownMechanismError(PrivacyConfigError):
    """The mechanism name is not registered; ``known`` lists the registered names."""

    def __init__(self, name: Any, known: tuple[str, ...]) -> None:
        self.known = tuple(known)
        super().__init__(
            "mechanism",
            "one of " + ", ".join(repr(k) for k in self.known),
            name,
            message=f"unknown privacy mechanism {name!r}; known mechanisms: {', '.join(self.known)}",
        )


class PrivacyStateError(PrivacyError, RuntimeError):
    """A mechanism needs something that was not provided (prepared state, importance, token ids, ...)."""


class NeighbourCacheError(PrivacyError):
    """A neighbour-index cache file cannot be read or was built for different inputs."""
