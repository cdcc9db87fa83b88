"""``client.bottoms``: manifests (polled while the server prepares them) and verified, cached,
atomic downloads of bottom-model artifacts."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from client_sdk import errors
from tests.client_sdk.test_client import Handler, Recorder, error, make_client


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = {"model.safetensors": b"weights" * 1000, "config.json": b"{}", "tokenizer.json": b'{"v": 1}'}


def manifest_for(files: dict[str, bytes], **overrides) -> dict:
    hashes = {name: sha(data) for name, data in files.items()}
    digest = sha("".join(sorted(hashes.values())).encode())
    base = {"model": "smollm2-135m", "family": "llama", "split_layer": 2, "hidden_size": 576, "vocab_size": 49152,
            "num_layers": 30, "files": hashes, "digest": digest, "format_version": 1}  # fmt: skip
    return base | overrides


def bottom_server(manifest: dict, served: dict[str, bytes]) -> Handler:
    prefix = "/v1/privtune/bottoms/smollm2-135m/2"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == prefix:
            return httpx.Response(200, json=manifest)
        name = request.url.path.removeprefix(prefix + "/files/")
        if name in served:
            return httpx.Response(200, content=served[name], headers={"ETag": f'"{sha(served[name])}"'})
        return error(404)

    return handler


def test_download_bottom_verifies_and_caches(tmp_path):
    manifest = manifest_for(FILES)
    rec = Recorder(bottom_server(manifest, FILES))
    client, _ = make_client(rec)
    path = client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    assert path == tmp_path / manifest["digest"]
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
    saved = json.loads((path / "manifest.json").read_text())
    assert saved["files"] == manifest["files"] and saved["format_version"] == 1
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, "manifest.json"])  # no temp files
    assert len(rec.requests) == 1 + len(FILES)

    rec.requests.clear()
    assert client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path) == path
    assert [r.url.path for r in rec.requests] == ["/v1/privtune/bottoms/smollm2-135m/2"]


def test_download_bottom_matches_the_artifact_module(tmp_path):
    artifact = pytest.importorskip("client_sdk.models.artifact")
    client, _ = make_client(Recorder(bottom_server(manifest_for(FILES), FILES)))
    path = client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    assert artifact.verify_artifact(path)["digest"] == path.name


def test_download_bottom_replaces_a_damaged_cached_file(tmp_path):
    manifest = manifest_for(FILES)
    rec = Recorder(bottom_server(manifest, FILES))
    client, _ = make_client(rec)
    path = client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    (path / "config.json").write_bytes(b"tampered")
    rec.requests.clear()
    client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    assert (path / "config.json").read_bytes() == FILES["config.json"]
    assert [r.url.path.rsplit("/", 1)[-1] for r in rec.requests] == ["2", "config.json"]


def test_corrupted_download_is_rejected_and_leaves_nothing(tmp_path, monkeypatch):
    served = FILES | {"tokenizer.json": b"corrupted"}
    client, _ = make_client(Recorder(bottom_server(manifest_for(FILES), served)))
    with pytest.raises(errors.BottomArtifactError, match=r"tokenizer\.json.*sha256"):
        client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("PRIVTUNE_CACHE_DIR", str(tmp_path / "env"))
    with pytest.raises(errors.BottomArtifactError):
        client.bottoms.download("smollm2-135m", 2)
    assert list((tmp_path / "env").iterdir()) == []


@pytest.mark.parametrize("bad", ["../evil.py", "sub/model.safetensors", "..\\evil", ".hidden", "manifest.json", ""])
def test_unsafe_file_names_are_refused_before_any_download(tmp_path, bad):
    files = {**FILES, bad: b"x"}
    rec = Recorder(bottom_server(manifest_for(files), files))
    client, _ = make_client(rec)
    with pytest.raises(errors.BottomArtifactError, match="unsafe"):
        client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path / "cache")
    assert len(rec.requests) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "evil.py").exists()


def test_unsafe_digest_and_wrong_digest_are_refused(tmp_path):
    for manifest, match in [
        (manifest_for(FILES, digest="../../etc"), "unsafe digest"),
        (manifest_for(FILES, digest="0" * 64), "digest does not match"),
    ]:
        client, _ = make_client(Recorder(bottom_server(manifest, FILES)))
        with pytest.raises(errors.BottomArtifactError, match=match):
            client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_manifest_polls_while_the_server_prepares_the_bottom():
    preparing = error(503, "preparing bottom", code="bottom_preparing", headers={"Retry-After": "3"})
    rec = Recorder(preparing, preparing, httpx.Response(200, json=manifest_for(FILES)))
    client, sleeps = make_client(rec)
    manifest = client.bottoms.manifest("smollm2-135m", 2)
    assert manifest.hidden_size == 576 and manifest.files["config.json"] == sha(b"{}")
    assert sleeps == [3.0, 3.0]  # each poll waits exactly Retry-After; no extra retries inside


def test_manifest_polling_gives_up_after_wait_timeout():
    rec = Recorder(error(503, "preparing bottom", headers={"Retry-After": "4"}))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.ServiceUnavailableError, match="not ready after 10 s"):
        client.bottoms.manifest("smollm2-135m", 2, wait_timeout=10)
    assert sleeps == [4.0, 4.0, 2.0]
    assert len(rec.requests) == 4


def test_a_download_that_breaks_names_the_file_and_url_and_leaves_nothing(tmp_path):
    manifest = manifest_for(FILES)
    prefix = "/v1/privtune/bottoms/smollm2-135m/2"

    class Broken(httpx.SyncByteStream):
        def __iter__(self):
            yield b"weig"
            raise httpx.ReadError("reset by peer")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == prefix:
            return httpx.Response(200, json=manifest)
        if request.url.path.endswith("/model.safetensors"):
            return httpx.Response(200, stream=Broken())
        return httpx.Response(200, content=FILES[request.url.path.rsplit("/", 1)[-1]])

    client, _ = make_client(Recorder(handler))
    with pytest.raises(errors.APIConnectionError) as info:
        client.bottoms.download("smollm2-135m", 2, cache_dir=tmp_path)
    assert (
        f"download of model.safetensors broke: Connection error: GET http://gateway.test{prefix}/files/model.safetensors"
        in str(info.value)
    )
    assert list(tmp_path.iterdir()) == []


EXPORT_FAILED = error(
    500,
    "the bottom model could not be exported: the model package is missing",
    code="bottom_export_failed",
    headers={"x-should-retry": "false"},
)


@pytest.mark.parametrize("call", ["manifest", "download"])
def test_a_failed_export_is_a_clear_error_at_once_never_retried_or_polled(tmp_path, call):
    rec = Recorder(EXPORT_FAILED)
    client, sleeps = make_client(rec)
    kwargs = {"cache_dir": tmp_path} if call == "download" else {}
    with pytest.raises(
        errors.BottomExportError, match="could not export the bottom of 'smollm2-135m' at split layer 2"
    ):
        getattr(client.bottoms, call)("smollm2-135m", 2, **kwargs)
    assert len(rec.requests) == 1 and sleeps == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(errors.BottomExportError) as info:
        client.bottoms.manifest("smollm2-135m", 2, tail_layers=4)
    assert isinstance(info.value, errors.InternalServerError) and info.value.code == "bottom_export_failed"
    assert "with 4 tail layers" in str(info.value) and "the model package is missing" in str(info.value)
