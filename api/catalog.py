"""The base models the service offers, from the torch-free ``client_sdk.models.catalog``
(shipped models plus operator-registered ones, ``PRIVTUNE_EXTRA_MODELS``).

The catalog is imported lazily; when it is missing the gateway falls back to a built-in table of
the two shipped models so it still validates names and split layers. Only names are accepted,
never paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from api.errors import BadRequest

log = logging.getLogger("api.catalog")

#: name -> (family, hidden_size, num_layers, max_positions): only when client_sdk.models.catalog is absent.
_FALLBACK = {"minilm-l6": ("bert", 384, 6, 512), "smollm2-135m": ("llama", 576, 30, 8192)}


@dataclass(frozen=True)
class BaseModel:
    """What the gateway needs to know about a base model."""

    name: str
    family: str
    hidden_size: int
    num_layers: int
    max_positions: int


def _catalog():  # -> module | None
    try:
        from client_sdk.models import catalog
    except ImportError:
        return None
    return catalog


def base_model_names() -> list[str]:
    """Names of the models offered, in catalog order (shipped first, then operator-registered)."""
    catalog = _catalog()
    if catalog is None:
        return list(_FALLBACK)
    registered = getattr(catalog, "registered_models", None)
    if registered is not None:
        try:
            return list(registered())
        except ValueError as exc:  # a malformed PRIVTUNE_EXTRA_MODELS must not take the API down
            log.error("ignoring operator-registered models: %s", exc)
    return list(catalog.BASE_MODELS)


@lru_cache(maxsize=64)
def describe(name: str) -> BaseModel:
    """The base model called ``name``; raises ``BadRequest`` (param ``model``) for any other name.
    Only catalog names are accepted, never paths."""
    if name not in base_model_names():
        raise BadRequest(
            f"Model {name!r} is not available; choose one of {base_model_names()}.",
            param="model",
            code="model_not_found",
        )
    catalog = _catalog()
    if catalog is None:
        return BaseModel(name, *_FALLBACK[name])
    try:
        info = catalog.describe_model(name)
    except ValueError as exc:
        raise BadRequest(str(exc), param="model", code="model_not_found") from None
    return BaseModel(name, info.family, int(info.hidden_size), int(info.num_layers), int(info.max_positions))


def check_split_layer(name: str, split_layer: int, param: str = "method.privtune.split_layer") -> BaseModel:
    """The model, after checking that ``split_layer`` is a valid split for it (``BadRequest`` otherwise)."""
    model = describe(name)
    catalog = _catalog()
    if catalog is not None:
        try:
            catalog.validate_split_layer(catalog.describe_model(name), split_layer)
        except ValueError as exc:
            raise BadRequest(str(exc), param=param, code="invalid_split_layer") from None
    elif not 1 <= split_layer < model.num_layers:
        raise BadRequest(
            f"split_layer must be in 1..{model.num_layers - 1} for {name} ({model.num_layers} layers), got {split_layer}.",
            param=param,
            code="invalid_split_layer",
        )
    return model
