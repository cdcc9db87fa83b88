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
