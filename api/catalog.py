"""The base models the service offers, from the torch-free ``client_sdk.models.catalog`` (shipped
models plus operator-registered ones, ``PRIVTUNE_EXTRA_MODELS``), as the gateway answers for them:
only names are accepted, never paths; an unknown name is a 400 with ``param`` ``model``."""

from __future__ import annotations

import logging
from functools import lru_cache

from client_sdk.jobspec import ServerLimits
from client_sdk.models import catalog
from client_sdk.protocol import TASKS
from service.errors import BadRequest
from service.settings import Settings

log = logging.getLogger("api.catalog")


def base_model_names() -> list[str]:
    """Names of the models offered, in catalog order (shipped first, then operator-registered)."""
    try:
        return list(catalog.registered_models())
    except ValueError as exc:  # a malformed PRIVTUNE_EXTRA_MODELS must not take the API down
        log.error("ignoring operator-registered models: %s", exc)
        return list(catalog.BASE_MODELS)


@lru_cache(maxsize=64)
def describe(name: str) -> catalog.ModelInfo:
    """The base model called ``name``; raises ``BadRequest`` (param ``model``) for any other name."""
    if name not in base_model_names():
        raise BadRequest(
            f"Model {name!r} is not available; choose one of {base_model_names()}.",
            param="model",
            code="model_not_found",
        )
    try:
        return catalog.describe_model(name)
    except ValueError as exc:
        raise BadRequest(str(exc), param="model", code="model_not_found") from None


def check_split_layer(name: str, split_layer: int, param: str = "method.privtune.split_layer") -> catalog.ModelInfo:
    """The model, after checking that ``split_layer`` is a valid split for it (``BadRequest`` otherwise)."""
    info = describe(name)
    try:
        catalog.validate_split_layer(info, split_layer)
    except ValueError as exc:
        raise BadRequest(str(exc), param=param, code="invalid_split_layer") from None
    return info


def limits(name: str, settings: Settings) -> ServerLimits:
    """What this server accepts for jobs on ``name`` (published on the model object for the SDK)."""
    info = describe(name)
    tasks = TASKS if info.family == "llama" else ("classification",)  # generation needs a causal LM
    return ServerLimits(settings.max_batch_size, settings.max_tokens, info.num_layers, info.max_positions, tasks)
