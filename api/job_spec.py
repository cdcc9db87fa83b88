"""Turn a validated ``JobCreate`` into the job that is stored: the ``method.privtune`` contract
(``client_sdk.jobspec``) checked against this server's limits and the model, every default filled,
legacy ``hyperparameters`` mirrored into ``method.privtune`` and back."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from api import catalog
from api.schemas.jobs import JobCreate
from client_sdk import privatized_file
from client_sdk.jobspec import LegacyHyperparameters, PrivtuneMethod, check_limits
from service.db import repo
from service.errors import BadRequest
from service.settings import Settings

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
P = "method.privtune"


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    """OpenAI's metadata rules: at most 16 string pairs, keys <= 64 and values <= 512 characters."""
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BadRequest(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed.", param="metadata"
        )
    for key, value in metadata.items():
        repo.check_metadata_key(key, "metadata")  # the same rule as the list filter's metadata[key]
        if len(key) > MAX_METADATA_KEY:
            raise BadRequest(f"metadata key {key[:20]!r}... exceeds {MAX_METADATA_KEY} characters.", param="metadata")
        if not isinstance(value, str):
            raise BadRequest(f"metadata value of {key!r} must be a string.", param="metadata")
        if len(value) > MAX_METADATA_VALUE:
            raise BadRequest(f"metadata value of {key!r} exceeds {MAX_METADATA_VALUE} characters.", param="metadata")
    return dict(metadata)


def _training_file(session: Session, org_id: str, file_id: str | None, param: str) -> dict[str, Any] | None:
    if file_id is None:
        return None
    row = repo.get_file(session, file_id, org_id)
    if row is None:
        raise BadRequest(f"File {file_id!r} does not exist.", param=param, code="invalid_file")
    if row["purpose"] != "fine-tune":
        raise BadRequest(f"File {file_id!r} has purpose {row['purpose']!r}, not 'fine-tune'.", param=param)
    return row


def _from_manifest(spec: PrivtuneMethod, model: str, stored: dict[str, Any]) -> PrivtuneMethod:
    """Upload mode: the privatized file's manifest fixes model, split, labels and mechanism."""
    manifest = privatized_file.Manifest.from_stored(stored)
    if manifest.model != model:
        raise BadRequest(
            f"The training file was privatized for {manifest.model!r}, not {model!r}.", param="training_file"
        )
    update: dict[str, Any] = {
        "split_layer": manifest.split_layer,
        "num_labels": manifest.num_labels,
        "privacy": manifest.declared_privacy(),
    }
    if stored.get("tokens"):
        update["max_tokens"] = int(stored["tokens"])  # the file's sequences, padded to one length
    return PrivtuneMethod.model_validate({**spec.model_dump(exclude_unset=True), **update})


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
    spec = (req.method.privtune if req.method else None) or PrivtuneMethod()
    legacy = req.hyperparameters
    if req.method and req.method.supervised and req.method.supervised.hyperparameters:
        legacy = req.method.supervised.hyperparameters
    if legacy is not None:
        spec = legacy.merged_into(spec)
    training = _training_file(session, org_id, req.training_file, "training_file")
    _training_file(session, org_id, req.validation_file, "validation_file")
    if method_type == "supervised":
        if training is None:
            raise BadRequest("A supervised (upload) job needs a privatized training_file.", param="training_file")
        if spec.task != "classification":
            raise BadRequest("Upload mode supports classification only.", param=f"{P}.task")
        spec = _from_manifest(spec, req.model, training.get("manifest") or {})
    spec.check_complete(interactive=method_type == "privtune")
    catalog.check_split_layer(req.model, spec.split_layer)
    check_limits(spec, catalog.limits(req.model, settings))
    spec = spec.resolved()
    hyper = LegacyHyperparameters.of(spec)
    method: dict[str, Any] = {"type": method_type, "privtune": spec.model_dump(mode="json")}
    if method_type == "supervised":
        method["supervised"] = {"hyperparameters": hyper}
    return {
        "model": req.model,
        "method": method,
        "hyperparameters": hyper,
        "seed": req.seed if req.seed is not None else secrets.randbelow(2**31),
        "total_steps": spec.total_steps,
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "metadata": metadata,
        "suffix": req.suffix,
        "organization_id": org_id,
    }
