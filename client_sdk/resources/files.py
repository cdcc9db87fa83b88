"""``client.files``: upload, list, inspect, download and delete files (OpenAI's ``/files``)."""

from __future__ import annotations

import os
from pathlib import Path

from client_sdk._http import path_segment as _seg
from client_sdk.pagination import SyncCursorPage
from client_sdk.resources._base import SyncAPIResource, page_params
from client_sdk.types import FileDeleted, FileObject

__all__ = ["Files"]

OCTET = "application/octet-stream"


class Files(SyncAPIResource):
    """``client.files``: the organization's uploaded files (e.g. privatized training sets)."""

    def create(
        self, file: str | os.PathLike[str] | bytes, *, purpose: str = "fine-tune", filename: str | None = None
    ) -> FileObject:
        """Upload a file (a path, or bytes with a ``filename``) as multipart form data and return its
        file object; a ``ValueError`` for bytes without a ``filename``."""
        if isinstance(file, (bytes, bytearray, memoryview)):
            if not filename:
                raise ValueError("files.create needs a filename when given bytes")
            content = bytes(file)
        else:
            content = Path(file).read_bytes()
            filename = filename or Path(file).name
        files = {"file": (filename, content, OCTET)}
        return self._request("POST", "files", FileObject, files=files, data={"purpose": purpose})

    def list(self, *, after: str | None = None, limit: int | None = None) -> SyncCursorPage[FileObject]:
        """Return the first page of uploaded files, newest first, strictly after the file id
        ``after``; iterating the page yields every later file too."""
        return self._page(
            "files",
            FileObject,
            page_params(after, limit),
            lambda cursor: self.list(after=cursor, limit=limit),
        )

    def retrieve(self, file_id: str) -> FileObject:
        """Return the file object."""
        return self._request("GET", f"files/{_seg(file_id)}", FileObject)

    def delete(self, file_id: str) -> FileDeleted:
        """Delete the file and return the confirmation (``deleted`` is True)."""
        return self._request("DELETE", f"files/{_seg(file_id)}", FileDeleted)

    def content(self, file_id: str) -> bytes:
        """Return the file's bytes."""
        return self._client.request("GET", f"files/{_seg(file_id)}/content", headers={"Accept": "*/*"}).content
