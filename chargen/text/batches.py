"""Token arrays in, batches out: the layout of training windows and evaluation streams.

Lays a token array out as B parallel streams cut into (B, T) windows for truncated
backpropagation through time, and a text to score as parallel streams for evaluation. Knows
nothing about files, models or training loops.

A corpus of separate pieces (ABC tunes, one per blank-line-separated block) is laid out so that
every piece starts a window of its own, with a flag saying the state must start afresh there, and
its last window is padded with targets nobody scores (``IGNORE``). The model then learns each piece
from the state a sampler starts it from, and no piece's state leaks into the next.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from chargen.errors import CorpusError, UsageError

IGNORE = -100
"""The target of a padding position: ``cross_entropy(..., ignore_index=IGNORE)`` scores nothing
there."""


CHUNK = 1 << 22
"""Tokens looked at in one go by the passes over a whole token array, so that a memory-mapped
array of any size is never copied whole."""


def forget(ids: np.ndarray) -> None:
    """Let the kernel drop the pages a memory-mapped array (or a view of one) has read so far:
    they are read again from the file's cache if needed, and the process's resident memory
    stays flat however long the text. Arrays in memory are left alone."""
    base = ids
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def piece_starts(tokenizer, ids: np.ndarray) -> np.ndarray | None:
    """Where the pieces of ``ids`` begin, for a level whose corpora are made of separate pieces
    (``tokenizer.separate_pieces``); None for a level whose text is one continuous piece.

    Pieces (ABC tunes) are separated by a blank line. A piece begins at 0 or at the newline that
    makes a blank line (the last of two or more in a row), so a tune reads "\\nX:1\\n..." and the
    prediction that the previous tune ends (that blank line) stays with the previous tune.
    """
    if not tokenizer.separate_pieces:
        return None
    newline = tokenizer.id_of("\n")
    if newline is None or len(ids) < 2:
        return np.zeros(1, dtype=np.int64)
    found = [np.zeros(1, dtype=np.int64)]
    for first in range(0, len(ids) - 1, CHUNK):
        # position i + 1 starts a piece where ids[i] and ids[i + 1] are newlines and ids[i + 2]
        # is not (or the text ends there)
        is_newline = np.asarray(ids[first : first + CHUNK + 2]) == newline
        blank = is_newline[1:] & is_newline[:-1]
        blank &= np.append(~is_newline[2:], first + CHUNK + 2 >= len(ids))
        found.append(np.flatnonzero(blank[:CHUNK]) + first + 1)
        forget(ids)
    return np.concatenate(found).astype(np.int64)


def covered_chars(tokenizer, ids: np.ndarray) -> int:
    """Characters that the predictions of ``ids`` cover: those of every token but the first (an
    ``<unk>`` stands for text of unknown length and counts as one)."""
    lengths, chars = tokenizer.piece_lengths, 0
    for first in range(1, len(ids), CHUNK):
        chars += int(lengths[ids[first : first + CHUNK]].sum())
        forget(ids)
    return chars


def _pieces(starts: np.ndarray, predictions: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and number of predictions of every non-empty piece."""
    ends = np.append(starts[1:], predictions)
    lengths = ends - starts
    keep = lengths > 0
    return starts[keep], lengths[keep]


def padded_pieces(
    ids: np.ndarray, starts: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every piece's predictions padded to whole windows of ``seq_len``, one piece after another.

    Returns inputs and targets (``IGNORE`` where padded), each as long as all padded pieces, and
    for every window whether a piece starts there.
    """
    starts, lengths = _pieces(starts, len(ids) - 1)
    padded = -(-lengths // seq_len) * seq_len
    offsets = np.cumsum(padded) - padded
    piece = np.repeat(np.arange(len(lengths)), lengths)  # the piece of every prediction
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = starts[piece] + within
    dest = offsets[piece] + within
    total = int(padded.sum())
    inputs = np.zeros(total, dtype=np.int32)  # padding inputs are never scored
    targets = np.full(total, IGNORE, dtype=np.int32)
    inputs[dest] = ids[source]
    targets[dest] = ids[source + 1]
    resets = np.zeros(total // seq_len, dtype=bool)
    resets[offsets // seq_len] = True
    return inputs, targets, resets


@dataclass(frozen=True)
class Stream:
    """Token ids of a text together with how many characters their predictions cover.

    Bits per character divide the total loss by ``chars``: the characters of every token but the
    first, which nothing predicts. ``starts`` says where pieces begin when the text is made of
    separate pieces (``piece_starts``); each is then scored from a fresh state.
    """

    ids: np.ndarray
    chars: int
    starts: np.ndarray | None = None

    @classmethod
    def of(cls, tokenizer, text: str) -> Stream:
        return cls.of_ids(tokenizer, tokenizer.encode(text))

    @classmethod
    def of_ids(cls, tokenizer, ids: np.ndarray, limit: int | None = None) -> Stream:
        """The stream of ``ids`` (a memory-mapped array of any size), cut to its first
        ``limit`` tokens if given."""
        ids = ids[:limit] if limit is not None else ids
        return cls(ids, covered_chars(tokenizer, ids), piece_starts(tokenizer, ids))

    def __len__(self) -> int:
        return len(self.ids)


class Window(NamedTuple):
    inputs: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T), IGNORE where padded
    reset: torch.Tensor | None  # (B,) bool: the stream starts from zero here; None: none ever does
    scored: int  # targets that count (not IGNORE) in this window of every process's streams


class Batches:
    """Windows of B parallel streams for truncated BPTT.

    The training ids are cut into ``batch_size`` contiguous streams; window ``k`` of an epoch is
    columns ``[shift + k*T, shift + (k+1)*T)`` of every stream, and its targets are the same columns
    one token later. Consecutive windows continue each other, so the hidden state at the end of one
    window is the right starting state for the next. Each epoch starts at a fresh random shift
    (seeded) so windows do not always cut the text at the same places.

    With ``starts`` (where separate pieces begin), the streams are cut from the pieces padded to
    whole windows (``padded_pieces``) instead, with no shift, and each window says which streams
    start a piece in it. Without, ``reset_every`` makes each stream restart from a zero state
    once every that many windows, the streams at staggered windows: a model that only ever
    carried its state on could meet a zero state (a new sample, a validation stream) at a place
    it never learned to start from, and there its cell state sometimes ran away.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        starts: np.ndarray | None = None,
        reset_every: int = 0,
    ):
        if len(ids) < seq_len + 1:
            raise CorpusError(
                f"the training text has {len(ids)} tokens, fewer than one window of {seq_len} + 1; "
                "give a longer corpus or a smaller --window"
            )
        self.seq_len = seq_len
        self.seed = seed
        self.resets: np.ndarray | None = None  # (B, windows) with pieces
        self.scored: np.ndarray | None = None  # (windows,) with pieces; else every target counts
        self.world = world
        if starts is None:
            # A small corpus gets fewer streams rather than an error: each stream needs a window.
            self.batch_size = min(batch_size, (len(ids) - 1) // seq_len)
            self.stream_len = (len(ids) - 1) // self.batch_size
            # Views, not copies: ``ids`` may be a memory-mapped array far bigger than memory.
            usable = ids[: self.batch_size * self.stream_len + 1]
            self.inputs = usable[:-1].reshape(self.batch_size, -1)  # (B, L)
            self.targets = usable[1:].reshape(self.batch_size, -1)  # (B, L)
        else:
            inputs, targets, resets = padded_pieces(ids, starts, seq_len)
            self.batch_size = min(batch_size, len(resets))
            windows = len(resets) // self.batch_size  # per stream
            self.stream_len = windows * seq_len
            used = self.batch_size * self.stream_len
            self.inputs = inputs[:used].reshape(self.batch_size, -1)
            self.targets = targets[:used].reshape(self.batch_size, -1)
            self.resets = resets[: self.batch_size * windows].reshape(self.batch_size, -1)
            # per window, over all processes: a data-parallel loss divides by this
            real = self.targets.reshape(self.batch_size, windows, seq_len) != IGNORE
            self.scored = real.sum(axis=(0, 2))
        # Without pieces, stream b restarts from a zero state at windows k with
        # (k + phase[b]) % reset_every == 0, the phases spread over the streams.
        self.reset_every = reset_every if starts is None else 0
        self.phase = np.arange(self.batch_size) * max(self.reset_every, 1) // self.batch_size
        if world > 1:
            # Data parallel: each process trains a contiguous block of the streams.
            if self.batch_size % world:
                raise UsageError(
                    f"--batch-size {self.batch_size} does not split evenly over {world} processes"
                )
            rows = slice(rank * self.batch_size // world, (rank + 1) * self.batch_size // world)
            self.inputs, self.targets = self.inputs[rows], self.targets[rows]
            self.phase = self.phase[rows]
            if self.resets is not None:
                self.resets = self.resets[rows]
            self.batch_size //= world

    def shift(self, epoch: int) -> int:
        if epoch == 0 or self.resets is not None:
            return 0
        limit = min(self.seq_len, self.stream_len - self.seq_len + 1)
        return int(np.random.default_rng([self.seed, epoch]).integers(limit))

    def windows_in_epoch(self, epoch: int) -> int:
        return (self.stream_len - self.shift(epoch)) // self.seq_len

    @property
    def steps_per_epoch(self) -> float:
        """Average windows per epoch, for turning ``--epochs`` into steps."""
        return self.stream_len / self.seq_len

    def window(self, epoch: int, index: int) -> Window:
        start = self.shift(epoch) + index * self.seq_len
        stop = start + self.seq_len
        x = torch.from_numpy(self.inputs[:, start:stop].astype(np.int64))  # (B, T)
        y = torch.from_numpy(self.targets[:, start:stop].astype(np.int64))  # (B, T)
        if self.resets is None:
            reset = None
            if self.reset_every:
                reset = torch.from_numpy((index + self.phase) % self.reset_every == 0)
            return Window(x, y, reset, y.numel() * self.world)
        reset = torch.from_numpy(self.resets[:, index].copy())
        return Window(x, y, reset, int(self.scored[index]))


EVAL_STREAMS = 64
"""Most parallel streams an evaluation pass scores at once."""


def eval_layout(
    ids: np.ndarray,
    max_streams: int = EVAL_STREAMS,
    min_stream_len: int = 512,
    starts: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every prediction of ``ids`` as (inputs, targets) stream blocks (B, L) for evaluation,
    each block scored from a fresh state; made one at a time, as views of ``ids`` where they
    can be, so that a memory-mapped text of any size is never copied whole.

    Most predictions go into at most ``max_streams`` parallel streams of at least
    ``min_stream_len`` tokens where the text allows; the few left over, if any, form one more
    block of a single stream. Together they cover each of the ``len(ids) - 1`` predictions
    exactly once. With ``starts``, each piece is a stream of its own instead: pieces of similar
    length are batched together, and targets past a piece's end are ``IGNORE``.
    """
    predictions = len(ids) - 1
    if predictions < 1:
        return
    if starts is not None:
        yield from _piece_blocks(ids, starts, max_streams)
        return
    # Each stream starts from a zero state, so keep streams long enough that the cold start
    # is a small part of them.
    streams = max(1, min(max_streams, predictions // min_stream_len))
    length = predictions // streams
    main = streams * length
    yield ids[:main].reshape(streams, length), ids[1 : main + 1].reshape(streams, length)
    if main < predictions:
        yield ids[main:-1][None], ids[main + 1 :][None]


def _piece_blocks(
    ids: np.ndarray, starts: np.ndarray, max_streams: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    starts, lengths = _pieces(starts, len(ids) - 1)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    for first in range(0, len(order), max_streams):
        group = order[first : first + max_streams]
        width = int(lengths[group].max())
        inputs = np.zeros((len(group), width), dtype=np.int64)
        targets = np.full((len(group), width), IGNORE, dtype=np.int64)
        for row, piece in enumerate(group):
            start, length = int(starts[piece]), int(lengths[piece])
            inputs[row, :length] = ids[start : start + length]
            targets[row, :length] = ids[start + 1 : start + length + 1]
        yield inputs, targets


def window_tensor(block: np.ndarray, start: int, width: int) -> torch.Tensor:
    """Columns ``start:start + width`` of a block of ids (any integer dtype, possibly
    memory-mapped) as an int64 tensor: the only copy evaluation makes of them."""
    return torch.from_numpy(np.ascontiguousarray(block[:, start : start + width], dtype=np.int64))
