"""What every command shares: error rendering, common options, JSON lines, output files, Ctrl-C.

Library errors (``ChargenError``) become one-line ``Error: ...`` messages here and nowhere else,
with exit code 2 for usage errors and 1 otherwise. Nothing here imports torch, so that
``chargen --help`` starts fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import click

from chargen.config import parse_duration
from chargen.errors import ChargenError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_OUT_OF_MEMORY = "out of memory: use a smaller model (--hidden, --layers) or --batch-size"


class CliError(click.ClickException):
    """A one-line ``Error: ...`` with the exit code of the library error behind it."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ChargenGroup(click.Group):
    """Turns every error into one line on stderr instead of a traceback or a usage block."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ChargenError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except BrokenPipeError:
            raise
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}", 1) from None
        except MemoryError:
            raise CliError(_OUT_OF_MEMORY, 1) from None
        except RuntimeError as exc:
            if _is_out_of_memory(exc):
                raise CliError(_OUT_OF_MEMORY, 1) from None
            raise

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that handles click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        _prepare_streams()
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except BrokenPipeError:  # the reader went away (``| head``): nothing more to say
            _silence_stdout()
            sys.exit(0)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "chargen"
            click.echo(f"Error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


class _ClosedOutput:
    """Stands in for a closed stdout (``chargen sample >&-``): writing to it is a one-line
    error, and commands that write nothing there run as usual."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        if not text:
            return 0
        raise ChargenError("standard output is closed; give --output FILE or redirect it")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _prepare_streams() -> None:
    """Text out is UTF-8 whatever the locale (LANG=C with PYTHONUTF8=0 would make it ASCII and
    fail on the first non-ASCII character), and a closed stdout is named, not crashed on."""
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at nothing so that the interpreter's final flush does
    not complain about it again."""
    import os

    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _is_out_of_memory(exc: RuntimeError) -> bool:
    message = str(exc)
    return "can't allocate memory" in message or "out of memory" in message.lower()


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ChargenError as exc:
            self.fail(str(exc), param, ctx)


# ------------------------------------------------------------------------ the checkpoint dir


def checkpoint_dir(ctx: click.Context) -> str | None:
    """The --checkpoint-dir given before or after the command (None: the library's default)."""
    return (ctx.obj or {}).get("checkpoint_dir")


def root(ctx: click.Context) -> Path:
    from chargen.runs.store import checkpoint_root

    return checkpoint_root(checkpoint_dir(ctx))


def dir_flag(ctx: click.Context) -> str:
    """`` --checkpoint-dir DIR`` when runs are not in the default place, for hints to copy."""
    from chargen.runs.store import DEFAULT_DIR

    where = root(ctx)
    return "" if where == Path(DEFAULT_DIR) else f" --checkpoint-dir {shlex.quote(str(where))}"


def load_model(ctx: click.Context, run: str | None, weights: str, device: str):
    """The model of run ``run`` (by name or directory), or of the latest run when None."""
    from chargen import api

    if run is None:
        return api.latest(checkpoint_dir(ctx), weights=weights, device=device)
    return api.load(run, weights=weights, device=device, checkpoint_dir=checkpoint_dir(ctx))


def _store_checkpoint_dir(ctx: click.Context, param, value):
    if value is not None:
        ctx.ensure_object(dict)["checkpoint_dir"] = value


checkpoint_dir_option = click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    expose_value=False,
    callback=_store_checkpoint_dir,
    help="Where runs live (default ./checkpoints; env CHARGEN_CHECKPOINTS).",
)
"""The group's --checkpoint-dir, accepted after the command name too."""


# ------------------------------------------------------------------------ shared options

weights_option = click.option(
    "--weights", type=click.Choice(["best", "last"]), default="best", show_default=True
)


def device_option(default: str, help: str | None = None):
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda", "mps"]),
        default=default,
        show_default=True,
        help=help,
    )


def given(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line (not left at its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


# ------------------------------------------------------------------------ output


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure for a table or a log line; "-" where there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def echo_json(data) -> None:
    """One line of strict JSON: NaN and infinity (which JSON lacks) become null."""
    click.echo(json_line(data))


def json_line(data) -> str:
    return json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def check_output_path(output: str | None) -> None:
    """Refuse an output file whose folder does not exist, before any work is done."""
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise CliError(f"{output}: its directory does not exist", 2)


def write_output(parts: Iterable[str], output: str | None) -> int:
    """Each of ``parts`` to stdout as it comes, or to the file ``output``, which appears whole
    when the last part is written; returns how many parts there were."""
    count = 0
    if output is None:
        for count, part in enumerate(parts, 1):  # noqa: B007 (the count is returned)
            sys.stdout.write(part)
            sys.stdout.flush()
        return count
    from chargen.files import atomic_path

    with atomic_path(Path(output)) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for count, part in enumerate(parts, 1):  # noqa: B007
            handle.write(part)
    return count


@contextlib.contextmanager
def stop_on_interrupt(*signals: int) -> Iterator[Callable[[], bool]]:
    """A ``should_stop`` that turns true at the first Ctrl-C (or the other ``signals``), so the
    work in the block ends cleanly; a second Ctrl-C stops at once."""
    requested: list[int] = []

    def request(signum, frame):
        if requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        requested.append(signum)

    watched = (signal.SIGINT, *signals)
    previous = {s: signal.signal(s, request) for s in watched}
    try:
        yield lambda: bool(requested)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
