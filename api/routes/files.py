"""``/v1/files``: upload, list, retrieve, delete and download privatized training files.

Only privatized files are accepted: a safetensors payload of kind ``privatized_batch`` written by the
SDK (perturbed ``hidden`` states, ``labels``, optional ``attention_mask``; the header's extra
metadata is the manifest: model, split_layer, num_labels, mechanism, ...). Raw text, JSONL or token
ids are refused, so nothing readable about the data owner's text is ever stored.

The multipart form is parsed as it streams (python-multipart's push parser): the file part goes
straight to one temporary file (no spooled copy), is inspected from its header, then renamed into
place or removed.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.schemas.objects import FileDeleted, FileObject, ListPage, file_object, page
from client_sdk import privatized_file, wire
from service.db import repo
from service.errors import BadRequest, PayloadTooLarge, ServiceError, from_wire_error

router = APIRouter(prefix="/v1/files", tags=["files"])

CHUNK = 1024 * 1024  # parser work is batched to this size per worker-thread hop
MAX_FIELD_BYTES = 1024  # a form field other than the file (purpose)
NOT_PRIVATIZED = (
    "Only privatized training files are accepted: the safetensors file that client_sdk writes "
    "(kind 'privatized_batch')."
)
DISCARDED = (
    "The {size} bytes received were discarded: not stored and not logged. Privatize the data on your device "
    "with client_sdk (client_sdk.upload.write_privatized_file) and upload the file it writes."
)
_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A privatized safetensors file written by client_sdk.",
                        },
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
}


class _FormSink:
    """python-multipart callbacks: the ``file`` part is written to ``dest`` as it arrives (at most
    ``limit`` bytes), other fields are kept in memory (at most :data:`MAX_FIELD_BYTES` each)."""

    def __init__(self, dest: Path, limit: int):
        self.dest, self.limit = dest, limit
        self.out: Any = None
        self.size, self.filename, self.fields = 0, None, {}
        self._name: str | None = None
        self._field, self._value, self._headers = b"", b"", {}
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, attr: str, chunk: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + chunk)

    def _part_begin(self) -> None:
        self._headers, self._name = {}, None

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.out is not None:
                raise BadRequest("Send one file per upload.", param="file")
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace") or None
            self.out = self.dest.open("wb")
        self._buffer = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.size += end - start
            if self.size > self.limit:
                raise PayloadTooLarge(f"The file exceeds the limit of {self.limit} bytes.", param="file")
            self.out.write(data[start:end])
        elif self._name:
            self._buffer += data[start:end]
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise BadRequest(f"The form field {self._name!r} is too long.", param=self._name)

    def _part_end(self) -> None:
        if self._name == "file":
            self.out.close()
        elif self._name:
            self.fields[self._name] = self._buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


async def _receive_form(request: Request, dest: Path, limit: int) -> _FormSink:
    """Stream the multipart body of ``request`` through the parser; the file part lands in ``dest``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest("Upload the file as multipart/form-data (fields 'file' and 'purpose').", param="file")
    sink = _FormSink(dest, limit)
    parser = MultipartParser(boundary, sink.callbacks())
    pending = bytearray()
    try:
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= CHUNK:  # parse and write off the event loop
                await run_in_threadpool(parser.write, bytes(pending))
                pending.clear()
        await run_in_threadpool(parser.write, bytes(pending))
        parser.finalize()
    except MultipartParseError:
        raise BadRequest(
            "The multipart/form-data body is malformed; the bytes received were discarded: not stored and not logged.",
            param="file",
        ) from None
    finally:
        sink.close()
    return sink


def _inspect_mapped(mapped: mmap.mmap, limits: wire.WireLimits) -> tuple[Any, ServiceError | None]:
    # Errors become plain service errors here so no traceback keeps a view of the map alive when it closes.
    try:
        header, infos = wire.inspect(mapped, limits)
        return privatized_file.check(header, infos), None
    except wire.WireError as exc:
        refused = from_wire_error(exc)  # the wire error's one status and code; the form field is the param
        return None, type(refused)(f"{NOT_PRIVATIZED} ({exc.message})", param="file", code=exc.code)


def _discarded(exc: ServiceError, size: int) -> ServiceError:
    """``exc`` with the truth about the refused bytes appended (the same status, code and param)."""
    told = type(exc)(f"{exc.message} {DISCARDED.format(size=size)}", param=exc.param, code=exc.code)
    told.status_code = exc.status_code
    return told


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


@router.post("", response_model=FileObject, summary="Upload a privatized training file", openapi_extra=_MULTIPART_BODY)
async def create_file(request: Request, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Upload a privatized training file (multipart: ``file``, ``purpose`` = ``fine-tune``); anything
    else is refused with 400 and its bytes are discarded."""
    assert settings.file_dir is not None
    settings.file_dir.mkdir(parents=True, exist_ok=True)
    file_id = repo.new_file_id()
    tmp, final = settings.file_dir / f".upload-{file_id}", settings.file_dir / file_id
    size = 0
    try:
        form = await _receive_form(request, tmp, settings.max_file_bytes)
        size = form.size
        if form.fields.get("purpose") != "fine-tune":
            raise BadRequest("purpose must be 'fine-tune'.", param="purpose")
        if form.out is None:
            raise BadRequest("The form has no 'file' part.", param="file")
        try:
            manifest = await run_in_threadpool(inspect_privatized, tmp, settings.max_file_bytes)
        except ServiceError as exc:
            raise _discarded(exc, size) from None
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    name = Path(form.filename or "privatized.safetensors").name[:512]
    row = await run_in_threadpool(
        _store,
        session,
        file_id=file_id,
        organization_id=principal.organization_id,
        filename=name,
        purpose="fine-tune",
        size=size,
        path=str(final),
        manifest=manifest,
    )
    return file_object(row)


def _store(session: Any, **fields: Any) -> dict[str, Any]:
    row = repo.create_file(session, **fields)
    session.commit()
    return row


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
