"""``/v1/files``: upload, list, retrieve, delete and download privatized training files.

Only privatized files are accepted: a safetensors payload of kind ``privatized_batch`` written by the
SDK (perturbed ``hidden`` states, ``labels``, optional ``attention_mask``; the header's extra
metadata is the manifest: model, split_layer, num_labels, mechanism, ...). Raw text, JSONL or token
ids are refused, so nothing readable about the data owner's text is ever stored.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi import File as FileParam
from fastapi.responses import FileResponse

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.schemas.objects import FileDeleted, FileObject, ListPage, file_object, page
from client_sdk import privatized_file, wire
from service.db import repo
from service.errors import BadRequest, PayloadTooLarge, ServiceError, from_wire_error

router = APIRouter(prefix="/v1/files", tags=["files"])

CHUNK = 1024 * 1024
NOT_PRIVATIZED = (
    "Only privatized training files are accepted: the safetensors file that client_sdk writes "
    "(kind 'privatized_batch'). Raw text, JSONL or token ids are refused so your data never leaves "
    "your machine unprotected."
)


def _save_upload(upload: UploadFile, dest: Path, limit: int) -> int:
    size = 0
    with dest.open("wb") as out:
        while chunk := upload.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The file exceeds the limit of {limit} bytes.", param="file")
            out.write(chunk)
    return size


def _inspect_mapped(mapped: mmap.mmap, limits: wire.WireLimits) -> tuple[Any, ServiceError | None]:
    # Errors become plain service errors here so no traceback keeps a view of the map alive when it closes.
    try:
        header, infos = wire.inspect(mapped, limits)
        return privatized_file.check(header, infos), None
    except wire.WireError as exc:
        refused = from_wire_error(exc)  # the wire error's one status and code; the form field is the param
        return None, type(refused)(f"{NOT_PRIVATIZED} ({exc.message})", param="file", code=exc.code)


def inspect_privatized(path: Path, limit: int) -> dict[str, Any]:
    """Check that ``path`` holds a privatized file (``client_sdk.privatized_file``), reading its header
    only; return the manifest to store with the file (the header's metadata plus the tensor sizes)."""
    with path.open("rb") as fh:
        head = fh.read(16).lstrip()
        if not head or head[:1] in (b"{", b"[", b'"') or path.stat().st_size < 8:
            raise BadRequest(NOT_PRIVATIZED, param="file", code="invalid_file_format")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:  # header-only: no full read
            parsed, problem = _inspect_mapped(mapped, wire.WireLimits(max_payload_bytes=limit))
    if problem is not None:
        raise problem
    manifest, n, t, d = parsed
    return {**manifest.to_metadata(), "examples": n, "tokens": t, "hidden_size": d}


@router.post("", response_model=FileObject, summary="Upload a privatized training file")
def create_file(
    file: Annotated[UploadFile, FileParam(description="A privatized safetensors file written by client_sdk.")],
    purpose: Annotated[str, Form()],
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Any:
    """Upload a privatized training file (purpose ``fine-tune``); anything else is refused with 400."""
    if purpose != "fine-tune":
        raise BadRequest("purpose must be 'fine-tune'.", param="purpose")
    assert settings.file_dir is not None
    settings.file_dir.mkdir(parents=True, exist_ok=True)
    file_id = repo.new_file_id()
    tmp, final = settings.file_dir / f".upload-{file_id}", settings.file_dir / file_id
    try:
        size = _save_upload(file, tmp, settings.max_file_bytes)
        manifest = inspect_privatized(tmp, settings.max_file_bytes)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    name = Path(file.filename or "privatized.safetensors").name[:512]
    row = repo.create_file(
        session,
        file_id=file_id,
        organization_id=principal.organization_id,
        filename=name,
        purpose=purpose,
        size=size,
        path=str(final),
        manifest=manifest,
    )
    session.commit()
    return file_object(row)


@router.get("", response_model=ListPage[FileObject], summary="List files")
def list_files(
    principal: PrincipalDep,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
) -> Any:
    """The organization's files, newest first."""
    files, has_more = repo.list_files(session, principal.organization_id, after=after, limit=limit, purpose=purpose)
    return page(files, has_more, file_object)


@router.get("/{file_id}", response_model=FileObject, summary="Retrieve a file")
def retrieve_file(file_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """One file of the organization (404 for another organization's)."""
    return file_object(repo.require_file(session, file_id, principal.organization_id))


@router.delete("/{file_id}", response_model=FileDeleted, summary="Delete a file")
def delete_file(file_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """Delete the file and its stored content."""
    row = repo.delete_file(session, file_id, principal.organization_id)
    session.commit()
    Path(row["path"]).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content", summary="Download a file's content", response_class=FileResponse)
def file_content(file_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """The stored bytes of the file."""
    row = repo.require_file(session, file_id, principal.organization_id)
    return FileResponse(row["path"], media_type="application/octet-stream", filename=row["filename"])


__all__ = ["inspect_privatized", "router"]
