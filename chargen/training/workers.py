"""Parallel streams on CPU threads: each worker thread runs its own group of streams.

A recurrent layer steps through a window one time step at a time, and each step is a thin
matrix product (16 streams by 512 by 2048 for the default LSTM). Split across cores inside every
product, the threads meet at each of those steps and wait for each other. Given the streams in
contiguous groups instead, one single-threaded worker per group, the cores meet once per window.
On the 2-core machines this project is measured on, two single-threaded workers of 16 streams
train 32 streams faster than one worker on two threads; fewer than 16 streams a worker lose
more than they gain (figures in docs/experiments.md). A lone worker keeps more than one thread,
and ``ThreadTuner`` drops to fewer while that runs faster (beside another busy process).

Results are combined in group order, so a run with a given number of workers is reproducible.
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
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


class ThreadTuner:
    """Keeps a lone worker's intra-op thread count at whichever count runs fastest now.

    The threads of one worker meet inside every product of a window. Beside another busy
    process, the thread that shares its core is often off it, and the others wait: 16 streams on
    two threads fell from 28,000 to 8,400-8,900 tokens/s, where one thread held 18,600
    (docs/experiments.md). The tuner times every step, tries the next count on its ladder
    (all threads, half, ..., one) for a few steps now and then, and keeps it if it ran clearly
    faster. While the count in use keeps winning, trials come twice as far apart each time, up
    to ``LONGEST`` steps; a slowdown brings one at once. The count decides which thread
    computes which part of a product, not the arithmetic: seeded runs with one and with two
    threads end with the same weights, bit for bit (tests/test_train.py), in bf16 always and in
    float32 where a probe step says so (``for_workers``).
    """

    FIRST = 25
    """Steps before the first trial (the first steps are slow while kernels get ready)."""
    LONGEST = 400
    """Most steps between two trials."""
    TRIAL = 4
    """Steps run at the other count in a trial; the first of them is not timed."""
    MARGIN = 0.9
    """The other count is kept when its median step takes under this share of the current's."""
    LATELY = 5
    """Steps whose median is the current count's pace."""
    SLOWDOWN = 1.4
    """Recent steps this much slower than after the last trial bring the next trial forward."""

    def __init__(self, most: int):
        self.ladder = _ladder(most)
        self.level = 0  # index into the ladder of the count in use
        self.previous = torch.get_num_threads()
        self.recent: collections.deque[float] = collections.deque(maxlen=self.LATELY)
        self.reference: float | None = None  # median step at the last decision
        self.gap = self.FIRST  # steps from one trial to the next
        self.countdown = self.FIRST
        self.trial: int | None = None  # the level on trial, if any
        self.trial_times: list[float] = []
        self.skip = False  # the first step after a change is not timed
        self.upward = False  # which neighbour the next trial tries, where there are two
        self.changes = 0  # switches kept, for reports and tests
        torch.set_num_threads(self.threads)

    @classmethod
    def for_workers(
        cls,
        workers: Workers,
        device: torch.device,
        bf16: bool,
        probe: Callable[[], list[torch.Tensor]] | None = None,
    ) -> ThreadTuner | None:
        """A tuner for a lone CPU worker with more than one thread; else None.

        oneDNN's bf16 products keep each sum on one thread at any count (tests/test_train.py).
        In float32 the count may change the arithmetic: on some CPUs MKL shares out the sum
        over a step's tokens (1,024 and more) of the output layer's gradient by thread, and a
        count that follows the clock would make a seeded run irreproducible. There the tuner
        runs only when ``probe`` (a step's loss, gradients and gradient norm, computed without
        changing the run) gives the same bits at every count on the ladder."""
        threads = torch.get_num_threads()
        if device.type != "cpu" or workers.count != 1 or threads < 2:
            return None
        if not bf16 and (probe is None or not _same_at_every_count(_ladder(threads), probe)):
            return None
        return cls(threads)

    @property
    def threads(self) -> int:
        return self.ladder[self.level]

    def record(self, seconds: float) -> None:
        """One training step took ``seconds``; maybe start or end a trial."""
        if self.skip:
            self.skip = False
            return
        if self.trial is not None:
            self.trial_times.append(seconds)
            if len(self.trial_times) >= self.TRIAL - 1:
                self._decide()
            return
        self.recent.append(seconds)
        self.countdown -= 1
        slowed = (
            self.reference is not None
            and len(self.recent) >= self.LATELY
            and self._lately() > self.SLOWDOWN * self.reference
        )
        if (self.countdown <= 0 or slowed) and len(self.ladder) > 1 and self.recent:
            self._start_trial()

    def _start_trial(self) -> None:
        last = len(self.ladder) - 1
        up = self.level == last or (self.level > 0 and self.upward)
        self.upward = not self.upward
        self.trial = self.level - 1 if up else self.level + 1
        self.trial_times = []
        self._use(self.ladder[self.trial])

    def _decide(self) -> None:
        current = self._lately()
        trial = statistics.median(self.trial_times)
        if trial < self.MARGIN * current:
            self.level = self.trial
            self.recent.clear()
            self.recent.extend(self.trial_times)
            self.gap = self.FIRST
            self.changes += 1
        else:
            self._use(self.threads)
            self.gap = min(2 * self.gap, self.LONGEST)
        self.trial = None
        self.reference = self._lately()
        self.countdown = self.gap

    def _lately(self) -> float:
        """The median of the last ``LATELY`` timed steps at the count in use."""
        return statistics.median(list(self.recent)[-self.LATELY :])

    def _use(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.skip = True

    @contextlib.contextmanager
    def all_threads(self):
        """The ladder's first count (all threads) for the work inside, then the count in use."""
        torch.set_num_threads(self.ladder[0])
        try:
            yield
        finally:
            torch.set_num_threads(self.threads if self.trial is None else self.ladder[self.trial])

    def close(self) -> None:
        """Give the process the thread count it had before."""
        torch.set_num_threads(self.previous)


def _ladder(most: int) -> list[int]:
    """The thread counts a tuner moves between: ``most``, half, ..., one."""
    most = max(1, most)
    return sorted({most >> k for k in range(most.bit_length())}, reverse=True)


def _same_at_every_count(ladder: list[int], probe: Callable[[], list[torch.Tensor]]) -> bool:
    """Whether ``probe()`` returns the same tensors, bit for bit, at each thread count of
    ``ladder`` (stopping at the first that differs); the count is left at the ladder's first."""
    try:
        torch.set_num_threads(ladder[0])
        first = probe()
        for threads in ladder[1:]:
            torch.set_num_threads(threads)
            if not all(torch.equal(a, b) for a, b in zip(first, probe(), strict=True)):
                return False
        return True
    finally:
        torch.set_num_threads(ladder[0])
