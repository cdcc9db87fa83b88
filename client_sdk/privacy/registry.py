"""Registry: mechanism name -> implementation (the names and config classes: ``table``).

``get_mechanism("privtune", eta=20.0)`` builds the validated config and the mechanism in one call;
``mechanism_from_config`` does the same from a config object or its JSON dict. The names are those
of the torch-free ``client_sdk.privacy.table``; every entry there has exactly one class here.
"""

from __future__ import annotations

from typing import Any

from .config import MechanismConfig
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
from .table import MECHANISMS, config_from_dict, get_config, mechanism_info

__all__ = ["MECHANISMS", "config_from_dict", "get_config", "get_mechanism", "mechanism_class", "mechanism_from_config"]

_IMPLEMENTATIONS: tuple[type[Mechanism], ...] = (
    NoneMechanism,
    GaussianMechanism,
    DChiMechanism,
    DChiImportanceMechanism,
    Opt3Mechanism,
    Opt3ImportanceMechanism,
    PrivTuneMechanism,
)
_REGISTRY: dict[str, type[Mechanism]] = {cls.config_class.name: cls for cls in _IMPLEMENTATIONS}
if tuple(_REGISTRY) != MECHANISMS:  # pragma: no cover - a programming error, caught at import
    raise RuntimeError(f"mechanism implementations {tuple(_REGISTRY)} do not match the table {MECHANISMS}")


def mechanism_class(name: str) -> type[Mechanism]:
    """The mechanism class registered as ``name``; ``UnknownMechanismError`` lists the known names."""
    return _REGISTRY[mechanism_info(name).name]


def get_mechanism(name: str, **params: Any) -> Mechanism:
    """The mechanism ``name`` configured with ``params`` (validated; unknown keywords raise)."""
    return mechanism_class(name)(get_config(name, **params))


def mechanism_from_config(config: MechanismConfig | dict[str, Any]) -> Mechanism:
    """The mechanism for a config object (or its ``to_dict`` form)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return mechanism_class(config.name)(config)
