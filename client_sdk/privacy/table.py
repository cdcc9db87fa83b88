"""The mechanisms by name, torch-free: what each one does and which config class validates it.

This is the one list of mechanism names. The gateway imports it (no torch) to validate a job's
declared privacy with the mechanism's real config dataclass; the SDK's registry
(``client_sdk.privacy.registry``) maps the same names to their implementations::

    from client_sdk.privacy.table import MECHANISMS, mechanism_info, config_from_dict

    mechanism_info("privtune").adds_noise               # True
    config_from_dict({"mechanism": "dchi", "eta": 20})  # a validated DChiConfig

The flags come from the config classes (``MechanismConfig.adds_noise`` ...), which the mechanism
classes read too, so the table and the implementations cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from . import config as cfg
from .errors import UnknownMechanismError, UnknownParameterError

__all__ = [
    "ETA_MECHANISMS",
    "MECHANISMS",
    "MECHANISM_TABLE",
    "NOISE_MECHANISMS",
    "MechanismInfo",
    "config_from_dict",
    "get_config",
    "mechanism_info",
]


@dataclass(frozen=True)
class MechanismInfo:
    """One registered mechanism: its name, its config class and what it does."""

    name: str
    config_class: type[cfg.MechanismConfig]

    @property
    def adds_noise(self) -> bool:
        """Random noise is added (d_chi or Gaussian); the others are deterministic."""
        return self.config_class.adds_noise

    @property
    def uses_importance(self) -> bool:
        """The noise scale (or OPT-3 budget) depends on each token's importance."""
        return self.config_class.uses_importance

    @property
    def uses_opt3(self) -> bool:
        """The OPT-3 shift delta* is applied."""
        return self.config_class.uses_opt3

    @property
    def has_eta(self) -> bool:
        """The privacy parameter eta exists (d_chi mechanisms), so an eta search applies."""
        return issubclass(self.config_class, cfg.DChiOptions)

    def parameters(self) -> tuple[str, ...]:
        """The names of the config's fields (the parameters a job may declare)."""
        return tuple(f.name for f in fields(self.config_class))


_CONFIGS: tuple[type[cfg.MechanismConfig], ...] = (
    cfg.NoneConfig,
    cfg.GaussianConfig,
    cfg.DChiConfig,
    cfg.DChiImportanceConfig,
    cfg.Opt3Config,
    cfg.Opt3ImportanceConfig,
    cfg.PrivTuneConfig,
)

MECHANISM_TABLE: dict[str, MechanismInfo] = {c.name: MechanismInfo(c.name, c) for c in _CONFIGS}
"""Name -> :class:`MechanismInfo`, in method.md section 6 order."""

MECHANISMS: tuple[str, ...] = tuple(MECHANISM_TABLE)
"""The registered mechanism names, in method.md section 6 order."""

NOISE_MECHANISMS: tuple[str, ...] = tuple(n for n, m in MECHANISM_TABLE.items() if m.adds_noise)
"""The mechanisms that add random noise (what the noise-aware top model is for)."""

ETA_MECHANISMS: tuple[str, ...] = tuple(n for n, m in MECHANISM_TABLE.items() if m.has_eta)
"""The mechanisms with an eta (``PrivacyConfig(target_asr=...)`` searches it)."""


def mechanism_info(name: Any) -> MechanismInfo:
    """The table entry of ``name``; ``UnknownMechanismError`` (param ``mechanism``) lists the known names."""
    try:
        return MECHANISM_TABLE[name]
    except (KeyError, TypeError):
        raise UnknownMechanismError(name, MECHANISMS) from None


def get_config(name: str, **params: Any) -> cfg.MechanismConfig:
    """The validated config of mechanism ``name`` with ``params`` overriding its defaults."""
    info = mechanism_info(name)
    known = info.parameters()
    for key in params:
        if key not in known:
            raise UnknownParameterError(name, key, known)
    return info.config_class(**params)


def config_from_dict(data: dict[str, Any]) -> cfg.MechanismConfig:
    """Inverse of ``MechanismConfig.to_dict``: dispatches on the dict's ``"mechanism"`` entry."""
    if "mechanism" not in data:
        raise UnknownMechanismError(None, MECHANISMS)
    return mechanism_info(data["mechanism"]).config_class.from_dict(data)
