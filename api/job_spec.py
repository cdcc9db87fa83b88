"""Turn a validated ``JobCreate`` into the job that is stored: every bound checked, every default
filled, legacy ``hyperparameters`` mirrored into ``method.privtune`` and back."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from api import catalog
from api.db import repo
from api.errors import BadRequest
from api.schemas.jobs import DEFAULT_LEARNING_RATE, Hyperparameters, JobCreate, PrivtuneConfig
from api.settings import Settings

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
P = "method.privtune"
NOISE_MECHANISMS = ("gaussian", "dchi", "dchi_importance", "privtune")  # what the noise-aware top is for


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    """OpenAI's metadata rules: at most 16 string pairs, keys <= 64 and values <= 512 characters."""
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BadRequest(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed.", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise BadRequest(f"metadata key {key[:20]!r}... exceeds {MAX_METADATA_KEY} characters.", param="metadata")
        if not isinstance(value, str):
            raise BadRequest(f"metadata value of {key!r} must be a string.", param="metadata")
        if len(value) > MAX_METADATA_VALUE:
            raise BadRequest(f"metadata value of {key!r} exceeds {MAX_METADATA_VALUE} characters.", param="metadata")
    return dict(metadata)


def _merge_legacy(cfg: PrivtuneConfig, legacy: Hyperparameters | None) -> PrivtuneConfig:
    """Legacy values fill what ``method.privtune`` did not set explicitly."""
    if legacy is None:
        return cfg
    data = cfg.model_dump()
    if legacy.batch_size != "auto" and "batch_size" not in cfg.model_fields_set:
        data["batch_size"] = legacy.batch_size
    if legacy.n_epochs != "auto" and "n_epochs" not in cfg.model_fields_set:
        data["n_epochs"] = legacy.n_epochs
    if legacy.learning_rate_multiplier != "auto" and "learning_rate" not in cfg.optimizer.model_fields_set:
        data["optimizer"]["learning_rate"] = DEFAULT_LEARNING_RATE * legacy.learning_rate_multiplier
    return PrivtuneConfig.model_validate(data)


def _check_bounds(cfg: PrivtuneConfig, settings: Settings) -> None:
    if cfg.batch_size > settings.max_batch_size:
        raise BadRequest(f"batch_size must be <= {settings.max_batch_size}.", param=f"{P}.batch_size")
    if cfg.max_tokens > settings.max_tokens:
        raise BadRequest(f"max_tokens must be <= {settings.max_tokens}.", param=f"{P}.max_tokens")
    if not 1e-6 <= cfg.optimizer.learning_rate <= 1.0:
        raise BadRequest("learning_rate must be in [1e-6, 1].", param=f"{P}.optimizer.learning_rate")
    if cfg.task == "classification" and cfg.num_labels is None:
        raise BadRequest("A classification job needs num_labels (>= 2).", param=f"{P}.num_labels")


def _training_file(session: Session, org_id: str, file_id: str | None, param: str) -> dict[str, Any] | None:
    if file_id is None:
        return None
    row = repo.get_file(session, file_id, org_id)
    if row is None:
        raise BadRequest(f"File {file_id!r} does not exist.", param=param, code="invalid_file")
    if row["purpose"] != "fine-tune":
        raise BadRequest(f"File {file_id!r} has purpose {row['purpose']!r}, not 'fine-tune'.", param=param)
    return row


def _from_manifest(cfg: PrivtuneConfig, model: str, manifest: dict[str, Any]) -> PrivtuneConfig:
    """Upload mode: the privatized file's header fixes model, split and labels."""
    if manifest.get("model") not in (None, model):
        raise BadRequest(
            f"The training file was privatized for {manifest['model']!r}, not {model!r}.", param="training_file"
        )
    data = cfg.model_dump()
    for key, cast in (("split_layer", int), ("num_labels", int)):
        if manifest.get(key) is not None:
            data[key] = cast(manifest[key])
    if manifest.get("mechanism"):
        data["privacy"] = {**data["privacy"], "mechanism": manifest["mechanism"]}
    return PrivtuneConfig.model_validate(data)


def build_job(req: JobCreate, settings: Settings, session: Session, org_id: str) -> dict[str, Any]:
    """Keyword arguments for ``repo.create_job``; raises ``BadRequest`` with ``param`` on any problem."""
    catalog.describe(req.model)
    if req.integrations:
        raise BadRequest("Integrations are not supported by this service.", param="integrations")
    metadata = check_metadata(req.metadata)
    method_type = req.method.type if req.method else ("supervised" if req.training_file else None)
    if method_type is None:
        raise BadRequest(
            "Set method.type to 'privtune' (interactive split training) or give a privatized training_file.",
            param="method",
        )
    cfg = (req.method.privtune if req.method else None) or PrivtuneConfig()
    declared_privacy = cfg.privacy.model_dump(mode="json", exclude_unset=True)  # recorded as the client sent it
    legacy = req.hyperparameters
    if req.method and req.method.supervised and req.method.supervised.hyperparameters:
        legacy = req.method.supervised.hyperparameters
    cfg = _merge_legacy(cfg, legacy)
    training = _training_file(session, org_id, req.training_file, "training_file")
    _training_file(session, org_id, req.validation_file, "validation_file")
    if method_type == "privtune":
        if cfg.total_steps is None:
            raise BadRequest(
                "total_steps (the number of steps the device will send) is required.", param=f"{P}.total_steps"
            )
    else:
        if training is None:
            raise BadRequest("A supervised (upload) job needs a privatized training_file.", param="training_file")
        if cfg.task != "classification":
            raise BadRequest("Upload mode supports classification only.", param=f"{P}.task")
        cfg = _from_manifest(cfg, req.model, training.get("manifest") or {})
    model = catalog.check_split_layer(req.model, cfg.split_layer)
    _check_bounds(cfg, settings)
    if cfg.max_tokens > model.max_positions:
        raise BadRequest(f"max_tokens must be <= {model.max_positions} for {req.model}.", param=f"{P}.max_tokens")
    if cfg.noise_aware and cfg.task == "generation":
        raise BadRequest("noise_aware applies to classification only.", param=f"{P}.noise_aware")
    privtune = cfg.model_dump(mode="json")
    if cfg.noise_aware is None:
        privtune["noise_aware"] = cfg.task == "classification" and cfg.privacy.mechanism in NOISE_MECHANISMS
    privtune["privacy"] = {**declared_privacy, "mechanism": cfg.privacy.mechanism}
    hyper = {
        "batch_size": cfg.batch_size,
        "learning_rate_multiplier": cfg.optimizer.learning_rate / DEFAULT_LEARNING_RATE,
        "n_epochs": cfg.n_epochs,
    }
    method: dict[str, Any] = {"type": method_type, "privtune": privtune}
    if method_type == "supervised":
        method["supervised"] = {"hyperparameters": hyper}
    return {
        "model": req.model,
        "method": method,
        "hyperparameters": hyper,
        "seed": req.seed if req.seed is not None else secrets.randbelow(2**31),
        "total_steps": cfg.total_steps,
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "metadata": metadata,
        "suffix": req.suffix,
        "organization_id": org_id,
    }
