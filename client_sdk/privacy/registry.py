"""Registry: mechanism name -> mechanism class (and through it, its config class).

``get_mechanism("privtune", eta=20.0)`` builds the validated config and the mechanism in one call;
``mechanism_from_config`` / ``config_from_dict`` do the same from a config object or its JSON dict.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .config import MechanismConfig
from .errors import UnknownMechanismError, UnknownParameterError
from .mechanisms import (
    DChiImportanceMechanism,
    DChiMechanism,
    GaussianMechanism,
    Mechanism,
    NoneMechanism,
    Opt3ImportanceMechanism,
    Opt3Mechanism,
    PrivTuneMechanism,
)

__all__ = ["MECHANISMS", "config_from_dict", "get_config", "get_mechanism", "mechanism_class", "mechanism_from_config"]

_REGISTRY: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (
        NoneMechanism,
        GaussianMechanism,
        DChiMechanism,
        DChiImportanceMechanism,
        Opt3Mechanism,
        Opt3ImportanceMechanism,
        PrivTuneMechanism,
    )
}

MECHANISMS: tuple[str, ...] = tuple(_REGISTRY)
"""The registered mechanism names, in method.md section 6 order."""


def mechanism_class(name: str) -> type[Mechanism]:
    """The mechanism class registered as ``name``; ``UnknownMechanismError`` lists the known names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownMechanismError(name, MECHANISMS) from None


def get_config(name: str, **params: Any) -> MechanismConfig:
    """The validated config of mechanism ``name`` with ``params`` overriding its defaults."""
    config_class = mechanism_class(name).config_class
    known = tuple(f.name for f in fields(config_class))
    for key in params:
        if key not in known:
            raise UnknownParameterError(name, key, known)
    return config_class(**params)


def get_mechanism(name: str, **params: Any) -> Mechanism:
    """The mechanism ``name`` configured with ``params`` (validated; unknown keywords raise)."""
    return mechanism_class(name)(get_config(name, **params))


def config_from_dict(data: dict[str, Any]) -> MechanismConfig:
    """Inverse of ``MechanismConfig.to_dict``: dispatches on the dict's ``"mechanism"`` entry."""
    if "mechanism" not in data:
        raise UnknownMechanismError(None, MECHANISMS)
    return mechanism_class(data["mechanism"]).config_class.from_dict(data)


def mechanism_from_config(config: MechanismConfig | dict[str, Any]) -> Mechanism:
    """The mechanism for a config object (or its ``to_dict`` form)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return mechanism_class(config.name)(config)
