"""Result rows: one typed record per finished experiment, shared by the harness, the sweep and the report.

One line of a results file (``docs/results/*.jsonl``) is one ``ResultRow``::

    ResultRow     key, label, harness_version, status, finished_at, undefended_key
      config      ExperimentConfig (keys it does not know: config_extra)
      utility     Utility             accuracy, accuracy_unperturbed_inference, chance, n_test, ...
      noise       NoiseSummary        ratio (noise/signal of what was sent), privacy (the mechanism's record)
      attacks     AttackEntry, ...    name, threat_model, asr, chance, n, details, skipped, undefended_asr
      observation ObservationSummary  texts, attribute_values, views, view_sources, exposed_share
      data        DataSummary         dataset, private, public, test, private_attributes, public_attributes
      timing      Timing              fit_s, train_s, eval_s, attack_s, total_s
      machine     Machine             cpu, nproc, torch_threads, torch

Promises: ``from_dict`` and ``to_dict`` are inverse: ``ResultRow.from_dict(d).to_dict() == d`` for the
rows the harness writes. Optional keys a row lacks stay absent, keys a record does not know are kept
in its ``extra`` (the config's in ``config_extra``) and written back, so rows of other harness
versions survive a read-write cycle (config fields a row lacks, added since it was written, read as
their defaults and stay absent when it is written back). Values are not converted (an int stays an int). A row missing a
required key raises ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, TypeVar

from evaluation.config import ExperimentConfig, config_fields

__all__ = [
    "AttackEntry",
    "DataSummary",
    "Machine",
    "NoiseSummary",
    "ObservationSummary",
    "Record",
    "ResultRow",
    "Timing",
    "Utility",
]

R = TypeVar("R", bound="Record")

_NOT_IN_JSON = {"json": False}  # a field that is not a JSON key (bookkeeping)


def _optional() -> Any:
    """A field whose key is written only when its value is not None (and is None when absent)."""
    return field(default=None, metadata={"optional": True})


def _dump(value: Any) -> Any:
    if isinstance(value, (Record, ExperimentConfig)):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    return value


@dataclass(frozen=True)
class Record:
    """A JSON object with typed known keys; ``extra`` holds the keys the record does not know."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    @classmethod
    def json_fields(cls) -> tuple[Field, ...]:
        """The fields that are JSON keys, in declaration order."""
        return tuple(f for f in fields(cls) if f.name != "extra" and f.metadata.get("json", True))

    @classmethod
    def parse(cls, name: str, value: Any) -> Any:
        """The typed value of key ``name`` (records with nested records override this)."""
        return value

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record of JSON object ``data`` (unknown keys into ``extra``)."""
        names = {f.name for f in cls.json_fields()}
        known = {k: cls.parse(k, v) for k, v in data.items() if k in names}
        for f in cls.json_fields():
            if "written_if" in f.metadata:  # remember whether the key was there (it may be null)
                known[f.metadata["written_if"]] = f.name in data
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (``extra`` included); ``from_dict`` inverts it."""
        out = dict(self.extra)
        for f in self.json_fields():
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            if "written_if" in f.metadata and not getattr(self, f.metadata["written_if"]):
                continue
            out[f.name] = _dump(value)
        return out


@dataclass(frozen=True)
class Utility(Record):
    """Test accuracy through the perturbed path, the same model fed unperturbed representations, and
    the majority share of the test labels; ``undefended_accuracy``: the baseline's (``attach_undefended``)."""

    accuracy: float
    accuracy_unperturbed_inference: float
    chance: float
    n_test: int | None = _optional()
    last_epoch_loss: float | None = _optional()
    steps: int | None = _optional()
    undefended_accuracy: float | None = _optional()


@dataclass(frozen=True)
class NoiseSummary(Record):
    """``ratio``: mean ||sent - clean|| / ||clean|| over real tokens; ``privacy``: the mechanism's record."""

    ratio: float
    privacy: dict[str, Any] | None = _optional()


@dataclass(frozen=True)
class AttackEntry(Record):
    """One attack under one threat model. ``asr`` and ``chance`` are None when it could not run
    (``skipped`` says why). ``undefended_asr``: the same attack on the baseline, None if the baseline
    lacks it; written once ``has_undefended`` (set by ``with_undefended``)."""

    name: str
    threat_model: str
    asr: float | None
    chance: float | None
    n: int
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = _optional()
    undefended_asr: float | None = field(default=None, metadata={"written_if": "has_undefended"})
    has_undefended: bool = field(default=False, metadata=_NOT_IN_JSON)

    def with_undefended(self, asr: float | None) -> AttackEntry:
        """This entry with the baseline's ASR of the same attack (None: the baseline lacks it)."""
        return replace(self, undefended_asr=asr, has_undefended=True)

    def with_details(self, **details: Any) -> AttackEntry:
        """This entry with ``details`` added (replacing keys of the same name)."""
        return replace(self, details={**self.details, **details})


@dataclass(frozen=True)
class ObservationSummary(Record):
    """How many private texts were attacked, and the private attribute's values (in index order).

    ``views``: how many views of each attacked text the attacks got (K of ``Observation.views``);
    ``view_sources``: where they came from, ``{"training": epochs, "validation": ..., "inference": ...}``;
    ``exposed_share``: the share of scored tokens the mechanism sent at its lowest noise level (the
    exposure truth; 0 for single-level mechanisms, None when the mechanism does not report its scales).
    Rows of harness version 4 and older have none of these.
    """

    texts: int
    attribute_values: tuple[str, ...] = ()
    views: int | None = _optional()
    view_sources: dict[str, int] | None = _optional()
    exposed_share: float | None = _optional()

    @classmethod
    def parse(cls, name: str, value: Any) -> Any:
        return tuple(value) if name == "attribute_values" else value


@dataclass(frozen=True)
class DataSummary(Record):
    """Texts per part, and per attribute value (None for a dataset without an attribute)."""

    dataset: str
    private: int
    public: int
    test: int
    private_attributes: dict[str, int] | None
    public_attributes: dict[str, int] | None


@dataclass(frozen=True)
class Timing(Record):
    """Wall seconds per phase of the experiment."""

    total_s: float
    fit_s: float | None = _optional()
    train_s: float | None = _optional()
    eval_s: float | None = _optional()
    attack_s: float | None = _optional()


@dataclass(frozen=True)
class Machine(Record):
    """Where the experiment ran."""

    cpu: str | None = _optional()
    nproc: int | None = _optional()
    torch_threads: int | None = _optional()
    torch: str | None = _optional()


_NESTED: dict[str, type[Record]] = {
    "utility": Utility,
    "noise": NoiseSummary,
    "observation": ObservationSummary,
    "data": DataSummary,
    "timing": Timing,
    "machine": Machine,
}


@dataclass(frozen=True)
class ResultRow(Record):
    """One finished experiment: its config, utility, noise, attacks and bookkeeping (see the module)."""

    key: str
    label: str
    config: ExperimentConfig
    harness_version: int
    status: str
    utility: Utility
    noise: NoiseSummary
    attacks: tuple[AttackEntry, ...]
    timing: Timing
    observation: ObservationSummary | None = _optional()
    data: DataSummary | None = _optional()
    machine: Machine | None = _optional()
    finished_at: str | None = _optional()
    undefended_key: str | None = _optional()
    config_extra: dict[str, Any] = field(default_factory=dict, repr=False, metadata=_NOT_IN_JSON)
    config_missing: tuple[str, ...] = field(default=(), repr=False, metadata=_NOT_IN_JSON)

    @classmethod
    def parse(cls, name: str, value: Any) -> Any:
        if name == "config":
            known = set(config_fields())
            return ExperimentConfig.from_dict({k: v for k, v in value.items() if k in known})
        if name == "attacks":
            return tuple(AttackEntry.from_dict(a) for a in value)
        return _NESTED[name].from_dict(value) if name in _NESTED and value is not None else value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        row = super().from_dict(data)
        known = set(config_fields())
        given = data.get("config", {})
        extra = {k: v for k, v in given.items() if k not in known}
        missing = tuple(k for k in config_fields() if k not in given)  # fields newer than the row
        return replace(row, config_extra=extra, config_missing=missing) if extra or missing else row

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        config = {k: v for k, v in out["config"].items() if k not in self.config_missing}
        out["config"] = {**self.config_extra, **config}
        return out

    def attack(self, name: str, threat_model: str) -> AttackEntry | None:
        """The entry of attack ``name`` under ``threat_model`` that ran (None if absent or skipped)."""
        for entry in self.attacks:
            if entry.name == name and entry.threat_model == threat_model and entry.asr is not None:
                return entry
        return None
