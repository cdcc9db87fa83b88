"""``/v1/models``: the base models (from the catalog) and the organization's fine-tuned models; a
fine-tuned model can be deleted (its stored artifacts are removed), a base model cannot."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import catalog
from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.retention import delete_model_artifacts
from api.schemas.objects import ModelDeleted, ModelList, ModelObject, model_object
from service.db import repo
from service.errors import BadRequest, NotFound, PermissionDenied

router = APIRouter(prefix="/v1/models", tags=["models"])

OWNER = "privtune"


def _fine_tuned(job: dict[str, Any]) -> dict[str, Any]:
    return model_object(job["fine_tuned_model"], job["finished_at"] or job["created_at"], job["organization_id"])


def _base(name: str, settings: Any) -> dict[str, Any]:
    try:
        limits = catalog.limits(name, settings).to_dict()
    except BadRequest:  # listed but not describable (a broken operator registration): no limits
        limits = None
    return model_object(name, 0, OWNER, limits)


@router.get("", response_model=ModelList, summary="List models")
def list_models(principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Base models first (with this server's ``privtune`` limits), then this organization's
    fine-tuned models (newest first)."""
    data = [_base(name, settings) for name in catalog.base_model_names()]
    data += [_fine_tuned(job) for job in repo.fine_tuned_models(session, principal.organization_id)]
    return {"object": "list", "data": data}


@router.get("/{model_id}", response_model=ModelObject, summary="Retrieve a model")
def retrieve_model(model_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> Any:
    """A base model, or one of the organization's fine-tuned models (404 otherwise)."""
    if model_id.startswith("ft:"):
        job = repo.job_for_model(session, principal.organization_id, model_id)
        if job is None:
            raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
        return _fine_tuned(job)
    if model_id not in catalog.base_model_names():
        raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
    return _base(model_id, settings)


@router.delete("/{model_id}", response_model=ModelDeleted, summary="Delete a fine-tuned model")
def delete_model(model_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Delete one of the organization's fine-tuned models: its stored adapter and checkpoints are
    removed and from then on the model is 404 here, in ``/v1/models`` and for inference. The job
    stays (with ``fine_tuned_model`` naming what it produced). A base model is 403; another
    organization's model, or one already deleted, is 404."""
    if not model_id.startswith("ft:"):
        if model_id in catalog.base_model_names():
            raise PermissionDenied(  # base models belong to the service, as OpenAI answers
                f"The model {model_id!r} is a base model of this service; only fine-tuned models can be deleted.",
                param="model",
                code="model_not_deletable",
            )
        raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
    job = repo.job_for_model(session, principal.organization_id, model_id)
    if job is None:
        raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
    delete_model_artifacts(session, settings, job)
    return {"id": model_id, "object": "model", "deleted": True}
