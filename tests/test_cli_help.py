"""Every command's ``--help``, compared with a snapshot: options, defaults and examples are the
interface users learn, so a change to them must be deliberate.

After a deliberate change, write the snapshots again and read the diff:
``CHARGEN_UPDATE_SNAPSHOTS=1 pytest tests/test_cli_help.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from chargen.cli import cli
from tests.cli_helpers import run

SNAPSHOTS = Path(__file__).parent / "snapshots" / "help"


def command_paths(command: click.Command, path: tuple[str, ...] = ()):
    yield path
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from command_paths(command.commands[name], (*path, name))


PATHS = list(command_paths(cli))


def snapshot_file(path: tuple[str, ...]) -> Path:
    return SNAPSHOTS / (("-".join(path) or "chargen") + ".txt")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "chargen")
def test_help_matches_its_snapshot(path):
    result = run(*path, "--help")  # click's test runner formats help 80 columns wide
    assert result.exit_code == 0, result.output
    expected = snapshot_file(path)
    if os.environ.get("CHARGEN_UPDATE_SNAPSHOTS"):
        expected.write_text(result.output, encoding="utf-8")
    assert result.output == expected.read_text(encoding="utf-8")


def test_every_snapshot_belongs_to_a_command():
    known = {snapshot_file(path).name for path in PATHS}
    assert {file.name for file in SNAPSHOTS.glob("*.txt")} == known
