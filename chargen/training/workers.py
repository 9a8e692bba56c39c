"""Parallel streams on CPU threads: each worker thread runs its own group of streams.

A recurrent layer steps through a window one time step at a time, and each step is a thin
matrix product (32 streams by 512 by 2048 for the default LSTM). Split across cores inside every
product, the threads meet at each of those steps and wait for each other. Given the streams in
contiguous groups instead, one single-threaded worker per group, the cores meet once per window.
On the 2-core machines this project is measured on, two single-threaded workers of 16 streams
train the default model faster than one worker on two threads (figures in docs/experiments.md).

Results are combined in group order, so a run with a given number of workers is reproducible.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

MIN_ROWS = 16
"""Fewest streams worth a worker of their own: two workers of 8 streams ran slower than one
worker of 16 on two threads (docs/experiments.md)."""


class Workers:
    """Runs a function on groups of rows, one group per worker thread.

    ``count`` worker threads, each running torch with ``threads_each`` intra-op threads; while
    they exist, the process's own torch thread count is ``threads_each`` too (spare OpenMP
    threads of the calling thread would spin on the cores the workers need). ``close`` puts it
    back. Workers that take every CPU the process may use, one each, stay on their own CPU
    (``cores_to_pin``). One worker is the calling thread itself: no pool, nothing changes.
    """

    def __init__(self, count: int = 1, threads_each: int | None = None, min_rows: int = 1):
        self.count = max(1, count)
        self.min_rows = max(1, min_rows)  # fewest streams worth a group of their own
        self._pool = None
        if self.count > 1:
            self._previous_threads = torch.get_num_threads()
            self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="chargen-worker")
            try:
                self._start(threads_each)
            except BaseException:
                self.close()
                raise

    def _start(self, threads: int | None) -> None:
        """Start every worker thread now, each with ``threads`` intra-op threads of its own.

        Setting the count once matters: switching it around every step cost 10% here."""
        everyone = threading.Barrier(self.count, timeout=60)
        cores = cores_to_pin(self.count, threads)

        def start(k: int) -> None:
            if threads is not None:
                # torch gives a thread the process-wide count the first time the thread asks
                # for it; ask first, so that this setting is not overwritten later.
                torch.get_num_threads()
                torch.set_num_threads(threads)
            if cores is not None:
                with contextlib.suppress(OSError):  # a sandbox may refuse: run unpinned then
                    os.sched_setaffinity(0, {cores[k]})  # 0: this thread
            everyone.wait()  # each task holds its thread until all threads exist

        list(self._pool.map(start, range(self.count)))
        if threads is not None:
            torch.set_num_threads(threads)  # the calling thread's share

    def map(self, fn: Callable[[slice], T], rows: int) -> list[T]:
        """``fn`` of each group of ``rows`` (``split_rows``), in group order."""
        groups = split_rows(rows, min(self.count, max(1, rows // self.min_rows)))
        if self._pool is None or len(groups) == 1:
            return [fn(group) for group in groups]
        return list(self._pool.map(fn, groups))

    def close(self) -> None:
        """Stop the worker threads and give the process its thread count back."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(self._previous_threads)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def cores_to_pin(count: int, threads_each: int | None) -> list[int] | None:
    """The CPU for each of ``count`` single-threaded workers to stay on, when they take every
    CPU this process may use, one each (and the system lets threads pick theirs); else None.

    Pinned workers held their speed better beside another busy process (docs/experiments.md).
    With fewer workers than CPUs nothing is pinned: which CPUs to leave to others is the
    system's choice, not ours (another chargen process, say)."""
    if threads_each != 1 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed if len(allowed) == count else None


def split_rows(rows: int, parts: int) -> list[slice]:
    """``range(rows)`` as at most ``parts`` contiguous, near-equal slices, none empty (one
    empty slice for no rows)."""
    parts = max(1, min(parts, rows))
    bounds = [rows * k // parts for k in range(parts + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(parts)]


def plan(device: torch.device, rows: int, global_random: bool = False) -> Workers:
    """Workers for ``rows`` streams on ``device`` using torch's current thread count.

    One per thread on a CPU, while each gets ``MIN_ROWS`` streams; with fewer workers than
    threads, each worker gets an equal share of the threads. GPUs take the whole batch in one
    worker. So does a model that draws from torch's one global random generator
    (``global_random``): threads would draw from it in an unreproducible order.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or global_random:
        return Workers(1)
    count = max(1, min(threads, rows // MIN_ROWS))
    return Workers(count, threads_each=max(1, threads // count), min_rows=MIN_ROWS)


SINGLE = Workers(1)
"""The calling thread alone."""
