"""Terminal output: a rich console on stderr, the training progress bar, tables and a loss chart.

Generated text goes to stdout elsewhere; everything drawn here goes to stderr so that
``chargen sample > out.txt`` stays clean. Progress bars switch off when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True, highlight=False, soft_wrap=True)  # messages: one line each
if not console.is_terminal:
    console.width = 160  # logs and pipes: no terminal to fit, so don't wrap tables at 80 columns


def training_progress(enabled: bool) -> Progress:
    """A bar with step, loss, validation loss, tokens/s and ETA; invisible when disabled."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("step {task.fields[step]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


class ReadingProgress:
    """A bar per pass over a large corpus (hashing, vocabulary, tokens); nothing for small ones.

    ``advance(phase, nbytes)`` is the callback ``chargen.text.corpus.prepare`` reports through.
    """

    THRESHOLD = 50_000_000  # bytes; smaller corpora read in a blink

    def __init__(self, specs) -> None:
        from chargen.text.corpus import expand_sources

        try:
            self.total = sum(p.stat().st_size for p in expand_sources(list(specs)))
        except Exception:  # bad sources are reported properly by the training set-up
            self.total = 0
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=self.total < self.THRESHOLD,
        )
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.progress.start()

    def advance(self, phase: str, nbytes: int) -> None:
        import time

        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=self.total, rate="")
            self.started[phase] = time.perf_counter()
        task = self.tasks[phase]
        self.progress.advance(task, nbytes)
        done = self.progress.tasks[task].completed
        seconds = max(time.perf_counter() - self.started[phase], 1e-9)
        self.progress.update(task, rate=f"{done / seconds / 1e6:,.0f} MB/s")

    def close(self) -> None:
        self.progress.stop()


@contextlib.contextmanager
def counting_progress(
    description: str, total: int, unit: str, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` items (files, tunes) while the block runs; the block gets a function
    to call with the number done. Transient: it leaves no line behind."""
    progress = Progress(
        TextColumn(f"{description:<14}"),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda done: progress.update(task, completed=done)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    result = Table(title=title, header_style="bold")
    for column in columns:
        result.add_column(column, justify="right" if column in _NUMERIC else "left")
    for row in rows:
        result.add_row(*row)
    return result


_NUMERIC = {
    "params",
    "steps",
    "best val",
    "bits/char",
    "nats/token",
    "perplexity",
    "tokens",
    "size",
}

_BLOCKS = " ▁▂▃▄▅▆▇█"


def loss_chart(
    steps: Sequence[int], losses: Sequence[float], width: int = 60, height: int = 8
) -> str:
    """A text chart of ``losses`` against ``steps``, drawn with block characters."""
    points = [
        (s, v) for s, v in zip(steps, losses, strict=True) if v is not None and math.isfinite(v)
    ]
    if not points:
        return "(no evaluations yet)"
    if len(points) > width:  # keep the last point of each of ``width`` buckets
        points = [points[(i + 1) * len(points) // width - 1] for i in range(width)]
    values = [v for _, v in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    levels = [round((v - low) / span * (height * 8 - 1)) for v in values]  # 0 .. height*8-1
    lines = []
    for row in range(height - 1, -1, -1):
        cells = []
        for level in levels:
            fill = level - row * 8 + 1
            cells.append(_BLOCKS[max(0, min(8, fill))] if fill > 0 else " ")
        label = f"{high:7.3f} " if row == height - 1 else (f"{low:7.3f} " if row == 0 else " " * 8)
        lines.append(label + "│" + "".join(cells))
    lines.append(" " * 8 + "└" + "─" * len(levels))
    lines.append(
        " " * 9 + f"step {points[0][0]}".ljust(max(len(levels) - 10, 12)) + f"step {points[-1][0]}"
    )
    return "\n".join(lines)
