"""``client.bottoms``: the provider's bottom models, which the device runs itself.

A bottom is downloaded once per digest into a cache directory; every file is verified against the
manifest's sha256 and written atomically, so a broken or tampered download never lands in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from client_sdk._constants import (
    CACHE_DIR_ENV,
    DEFAULT_BOTTOM_CACHE,
    DEFAULT_BOTTOM_WAIT,
    DEFAULT_POLL_INTERVAL,
    MAX_RETRY_AFTER,
)
from client_sdk._http import connection_error_message, parse_retry_after, timeout_message
from client_sdk._http import path_segment as _seg
from client_sdk.errors import (
    APIConnectionError,
    APITimeoutError,
    BottomArtifactError,
    BottomExportError,
    ServiceUnavailableError,
)
from client_sdk.resources._base import SyncAPIResource
from client_sdk.types import BottomManifest

__all__ = ["MANIFEST_FILE", "Bottoms"]

OCTET = "application/octet-stream"
MANIFEST_FILE = "manifest.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class Bottoms(SyncAPIResource):
    """``client.bottoms``: manifests and verified, cached downloads of bottom-model artifacts."""

    def manifest(
        self, model: str, split_layer: int, *, tail_layers: int = 0, wait_timeout: float = DEFAULT_BOTTOM_WAIT
    ) -> BottomManifest:
        """Return the manifest of the bottom of ``model`` cut after ``split_layer`` blocks (with
        ``tail_layers``: and the base weights of the last blocks, the device's generation tail).

        While the server is still preparing it (503) this polls, waiting as long as Retry-After says,
        for up to ``wait_timeout`` seconds; then the last ``ServiceUnavailableError`` is raised. When the
        provider could not export it (``bottom_export_failed``, marked ``x-should-retry: false``) a
        ``BottomExportError`` naming the model and split layer is raised at once, never retried.
        """
        path = f"privtune/bottoms/{_seg(model)}/{_seg(split_layer)}"
        started, waited = time.monotonic(), 0.0
        while True:
            try:
                return self._request("GET", path, BottomManifest, params=_params(tail_layers), retry_unavailable=False)
            except BottomExportError as exc:
                exc.message = (
                    f"the provider could not export the bottom of {model!r} at split layer {split_layer}"
                    f"{f' with {tail_layers} tail layers' if tail_layers else ''}: {exc.message} "
                    "(retrying will not help; tell the provider, or choose another model or split_layer)"
                )
                raise
            except ServiceUnavailableError as exc:
                if exc.response.headers.get("x-should-retry", "").lower() == "false":
                    raise
                elapsed = max(waited, time.monotonic() - started)
                if elapsed >= wait_timeout:
                    exc.message = f"bottom {model!r} split {split_layer} not ready after {elapsed:.0f} s: {exc.message}"
                    raise
                delay = parse_retry_after(exc.response.headers)
                delay = min(DEFAULT_POLL_INTERVAL if delay is None else delay, MAX_RETRY_AFTER, wait_timeout - elapsed)
                self._client.sleep(delay)
                waited += delay

    def download(
        self,
        model: str,
        split_layer: int,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        tail_layers: int = 0,
        wait_timeout: float = DEFAULT_BOTTOM_WAIT,
    ) -> Path:
        """Download the bottom artifact and return its directory, ``<cache_dir>/<digest>/``.

        ``cache_dir`` defaults to ``$PRIVTUNE_CACHE_DIR``, else ``~/.cache/privtune/bottoms``. Every
        file is checked against the manifest's sha256 (and the manifest against its digest) and
        written atomically; files already present with the right hash are not downloaded again.
        The directory also gets ``manifest.json``, so ``client_sdk.models.load_bottom`` can
        open it. A ``BottomArtifactError`` (bad hash, unsafe name) leaves the cache as it was.
        """
        manifest = self.manifest(model, split_layer, tail_layers=tail_layers, wait_timeout=wait_timeout)
        digest = _check_name(manifest.digest, "digest")
        names = {_check_name(name, "file name"): expected for name, expected in manifest.files.items()}
        if hashlib.sha256("".join(sorted(names.values())).encode("ascii")).hexdigest() != digest:
            raise BottomArtifactError(
                f"bottom manifest of {model!r} split {split_layer}: digest does not match its files"
            )
        root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_BOTTOM_CACHE).expanduser()
        target = root / digest
        created_dir = not target.exists()
        written: list[Path] = []
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, expected in sorted(names.items()):
                dest = target / name
                if dest.is_file() and _sha256_file(dest) == expected.lower():
                    continue
                path = f"privtune/bottoms/{_seg(model)}/{_seg(split_layer)}/files/{_seg(name)}"
                self._download_verified(path, dest, expected.lower(), tail_layers)
                written.append(dest)
            manifest_text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
            manifest_path = target / MANIFEST_FILE
            if not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != manifest_text:
                _write_atomic(manifest_path, lambda handle: handle.write(manifest_text.encode("utf-8")))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            if created_dir and target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            raise
        return target

    def _download_verified(self, path: str, dest: Path, expected: str, tail_layers: int = 0) -> None:
        sha = hashlib.sha256()
        base_url = self._client.base_url

        def fetch(handle: Any) -> None:
            response = self._client.request(
                "GET", path, params=_params(tail_layers), stream=True, headers={"Accept": OCTET}
            )
            try:
                for chunk in response.iter_bytes(1 << 20):
                    sha.update(chunk)
                    handle.write(chunk)
            except httpx.TimeoutException as exc:
                raise APITimeoutError(response.request, message=timeout_message(response.request, base_url)) from exc
            except httpx.TransportError as exc:
                message = f"download of {dest.name} broke: " + connection_error_message(response.request, base_url, exc)
                raise APIConnectionError(message=message, request=response.request) from exc
            finally:
                response.close()
            if sha.hexdigest() != expected:
                raise BottomArtifactError(
                    f"bottom file {dest.name!r} failed verification: sha256 {sha.hexdigest()} != manifest {expected}"
                )

        _write_atomic(dest, fetch)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name == MANIFEST_FILE:
        raise BottomArtifactError(f"refusing unsafe {what} {name!r} in the bottom manifest")
    return name


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _write_atomic(dest: Path, write: Callable[[Any], object]) -> None:
    """Write ``dest`` through ``write(handle)`` into a temporary sibling, then rename it into place;
    on any failure the temporary file is removed and ``dest`` is untouched."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _params(tail_layers: int) -> dict[str, int] | None:
    return {"tail_layers": int(tail_layers)} if tail_layers else None
