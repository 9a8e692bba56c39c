"""Continuous batching: one generation engine per model, serving many requests at once.

A ``Batcher`` owns a model's engine and a thread that steps it. A request is a ``Job`` of one or
more sequences, each with its own settings and random stream. Jobs join between steps (their
prompts run as they join) and every step advances every sequence in flight by one token; a job
whose client has gone away leaves at once, freeing its rows; a long request never holds up a
short one, which joins at the next step. What the engine thread makes reaches each job's asyncio
queue through the job's event loop, once per step.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from chargen.generation.engine import Engine, Sequence


class Busy(Exception):
    """No room for the job: the model has as many rows in flight as it may."""


@dataclass
class Event:
    """Something that happened to one sequence of a job during one step."""

    index: int  # the sequence's place in its job
    text: str = ""  # text that became final
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once it is over


@dataclass
class Job:
    """A request's sequences on a batcher. ``events`` receives lists of ``Event``s, at most one
    per sequence, every ``EVERY`` seconds while text comes (or an exception if the engine
    failed); the job is over when every sequence's last event has been taken."""

    sequences: list[Sequence]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    finished: int = 0  # sequences over, counted in the engine thread
    received: int = 0  # sequences whose last event the loop has taken (``take``)
    _texts: dict[int, list[str]] = field(default_factory=dict)  # text not yet handed over
    _ended: dict[int, str] = field(default_factory=dict)  # finish reasons not yet handed over
    _sent: float = 0.0  # when events were last handed over (0: never)
    _news: dict | None = None  # the batcher's jobs with something to hand over, by id
    decode: Callable[[list[int]], str] | None = None  # the text of sequences without controls
    _upto: dict[int, int] = field(default_factory=dict)  # their tokens handed over so far

    def emit(self, index: int, text: str) -> None:
        """Text of sequence ``index`` (from its control, in the engine thread)."""
        texts = self._texts.get(index)
        if texts is None:
            self._texts[index] = [text]
            if self._news is not None:
                self._news[id(self)] = self
        else:
            texts.append(text)

    @property
    def _pending(self) -> bool:
        return bool(self._texts or self._ended or self._undecoded())

    def _undecoded(self) -> dict[int, list[int]]:
        """Tokens of sequences without a control written since the last hand-over: decoded
        then, a batch at a time, rather than token by token in every step."""
        if self.decode is None:
            return {}
        return {
            i: s.ids[self._upto.get(i, 0) :]
            for i, s in enumerate(self.sequences)
            if s.control is None and len(s.ids) > self._upto.get(i, 0)
        }

    def _events(self) -> list[Event]:
        """What waits to be handed over, as one event per sequence; nothing waits after."""
        for index, ids in self._undecoded().items():
            self.emit(index, self.decode(ids))
            self._upto[index] = self._upto.get(index, 0) + len(ids)
        indexes = sorted(self._texts.keys() | self._ended.keys())
        events = [Event(i, "".join(self._texts.get(i, ())), self._ended.get(i)) for i in indexes]
        self._texts, self._ended = {}, {}
        return events

    @property
    def done(self) -> bool:
        """Every sequence over, in the engine thread (its last events may still be on the way)."""
        return self.finished == len(self.sequences)

    @property
    def over(self) -> bool:
        """Every sequence's last event taken by the loop: nothing more will come."""
        return self.received == len(self.sequences)

    def take(self, events: list[Event]) -> list[Event]:
        """Note the events the loop took off ``events``; returns them."""
        self.received += sum(event.finish_reason is not None for event in events)
        return events

    def _finish(self, index: int, reason: str) -> None:
        self.finished += 1
        self._ended[index] = reason

    def _flush(self) -> None:
        _deliver([self], force=True)

    def _due(self, now: float, force: bool) -> bool:
        """Whether to hand the pending events over now: the first text (a quick first
        token), the end of a sequence, or ``EVERY`` seconds since the last time."""
        if force or self._ended or self._sent == 0.0 or now - self._sent >= EVERY:
            return self._pending
        return False  # (without looking: what waits is worked out only when it is due)

    def _fail(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, error)


class Batcher:
    """A model's engine stepped by a thread of its own, for jobs that come and go."""

    def __init__(
        self,
        make_engine: Callable[[], Engine],
        max_rows: int = 256,
        name: str = "",
        threads: int | None = None,
    ):
        # torch threads of the engine: half the cores, the rest left to the HTTP side and
        # the clients (on two cores, two threads stalled on each other under load).
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self.make_engine = make_engine
        self.engine = make_engine()
        self.max_rows = max_rows
        self.rows = 0  # rows of the jobs admitted and not over
        self._owner: dict[int, tuple[Job, int]] = {}  # id(sequence) -> (job, index)
        self._news: dict[int, Job] = {}  # jobs with text to hand over, by id
        self._joining: list[Job] = []
        self._leaving: list[Job] = []
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` to join at the next step; ``Busy`` if its rows would pass the limit."""
        with self._wake:
            if self.rows + len(job.sequences) > self.max_rows:
                raise Busy(f"{self.rows} rows in flight; at most {self.max_rows}")
            self.rows += len(job.sequences)
            self._joining.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Take ``job`` out before the next step (its client went away, or ran out of time)."""
        with self._wake:
            if job in self._joining:  # it never ran
                self._joining.remove(job)
                self.rows -= len(job.sequences)
                for sequence in job.sequences:
                    sequence.finish_reason = "cancelled"
            elif not job.done:
                self._leaving.append(job)
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        torch.get_num_threads()  # a thread takes the process's count when it first asks
        torch.set_num_threads(self.threads)
        while True:
            with self._wake:
                while not (self._closed or self._joining or self._leaving or len(self.engine)):
                    self._wake.wait()
                if self._closed:
                    return
                joining, self._joining = self._joining, []
                leaving, self._leaving = self._leaving, []
            try:
                self._turn(joining, leaving)
            except Exception as error:  # noqa: BLE001 (every job hears of it; the thread lives)
                self._reset(error, joining)

    def _turn(self, joining: list[Job], leaving: list[Job]) -> None:
        """Let jobs leave and join, then one step for every sequence in flight."""
        for job in leaving:
            for index, sequence in enumerate(job.sequences):
                if not sequence.done:
                    self.engine.cancel(sequence)
                    self._over(job, index, sequence)
            job._flush()
        for job in joining:
            job._news = self._news
            if job.decode is not None:
                self._news[id(job)] = job  # its tokens are news at every step
            for index, sequence in enumerate(job.sequences):
                self._owner[id(sequence)] = (job, index)
        # All at once: sequences with the same prompt, from any job, share one run of it.
        self.engine.add([sequence for job in joining for sequence in job.sequences])
        for sequence in self.engine.step():
            job, index = self._owner[id(sequence)]
            self._over(job, index, sequence)
            self._news[id(job)] = job
        _deliver(list(self._news.values()))
        for key in [key for key, job in self._news.items() if _quiet(job)]:
            del self._news[key]

    def _over(self, job: Job, index: int, sequence: Sequence) -> None:
        """Sequence ``index`` of ``job`` has finished (or was cancelled)."""
        flush = getattr(sequence.control, "flush", None)
        if flush is not None:
            flush()  # text held back in case it began a stop text
        job._finish(index, sequence.finish_reason or "cancelled")
        del self._owner[id(sequence)]
        if job.done:
            with self._wake:
                self.rows -= len(job.sequences)

    def _reset(self, error: BaseException, joining: list[Job]) -> None:
        """The engine failed: every job in flight hears why, and a fresh engine takes over."""
        jobs = {id(job): job for job, _ in self._owner.values()}
        jobs.update((id(job), job) for job in joining)
        for job in jobs.values():
            job._fail(error)
        self._owner.clear()
        self.engine = self.make_engine()
        with self._wake:
            self.rows = sum(len(job.sequences) for job in self._joining)


def _quiet(job: Job) -> bool:
    """Nothing to hand over, and nothing will come but through ``emit`` (which brings the job
    back): a job whose tokens are decoded at hand-over stays until it is done."""
    return (job.decode is None or job.done) and not job._pending


EVERY = 0.05
"""Seconds between two hand-overs of a job's text: 20 a second still reads as a stream, where
one per step (a thousand a second) cost the server more than generating the text, and 50 a
second most of a core with 64 streams (docs/experiments.md)."""


def _deliver(jobs: list[Job], force: bool = False) -> None:
    """Hand the jobs their pending events that are due: one wake-up of each event loop for all
    of its jobs (a wake-up per job cost more than a step of 64 rows)."""
    now = time.monotonic()
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list]] = {}
    for job in jobs:
        if job._due(now, force):
            events, job._sent = job._events(), now
            by_loop.setdefault(id(job.loop), (job.loop, []))[1].append((job.events, events))
    for loop, deliveries in by_loop.values():
        loop.call_soon_threadsafe(_put_all, deliveries)


def _put_all(deliveries: list) -> None:
    for queue, events in deliveries:
        queue.put_nowait(events)
