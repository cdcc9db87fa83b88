"""The ``privtune`` command line: every option of every command says what it does and shows its default."""

from __future__ import annotations

import argparse

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
