"""Running the CLI in-process for tests."""

from __future__ import annotations

from click.testing import CliRunner

from chargen.cli import cli

TINY = [
    "--hidden",
    "24",
    "--embedding",
    "8",
    "--batch-size",
    "4",
    "--window",
    "16",
    "--eval-every",
    "10",
    "--max-steps",
    "20",
    "--quiet",
    "--precision",
    "fp32",
]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def train(corpus, name="t", *extra):
    result = run("train", corpus, "--name", name, *TINY, *extra)
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, exit_codes=(1, 2)) -> str:
    """The single ``Error: ...`` line a failed command printed."""
    assert result.exit_code in exit_codes, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]
