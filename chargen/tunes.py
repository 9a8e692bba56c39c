"""Complete ABC tunes from a trained model: header conditioning, the end-of-tune rule, a cap.

``generate_tunes`` samples a batch of tunes, each from a fresh state primed with the start of a
tune, until the model writes the end-of-tune marker (a blank line, ``abc_notation.TUNE_END``) or
reaches the length cap. Requested headers (``M:6/8``, ``K:D``) are imposed by *forcing*: when the
model starts a header line at or past where a requested field belongs, the requested line is fed
to it instead, token by token, and the model continues from there; everything else (title, the
other headers, the music) is the model's own. ``generate_valid_tunes`` resamples the tunes a
check rejects.

The stop rule lives here, outside ``chargen.sample.choose``'s token loop, as the style guide asks.
This module knows nothing about music21, files or the command line.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from chargen.abc_notation import HEADER_ORDER, TUNE_END, header_lines, renumber
from chargen.config import SampleConfig
from chargen.errors import UsageError
from chargen.model import RNNLanguageModel, Stepper, select_hidden
from chargen.sample import choose, prime_ids, seeded_generator, warm_up
from chargen.tokenizer import Tokenizer

FIRST_LINE = "X:1\n"
TUNE_START = TUNE_END[-1] + FIRST_LINE
"""What every tune is primed with, from a zero state: the blank line that ends a previous tune,
then the first header line. Training at the abc level starts every tune from a zero state at
that same newline (``chargen.data.piece_starts``), followed by its X: line, so the model meets
each tune as it is sampled."""


@dataclass
class Tune:
    text: str  # the tune from its X: line, without the blank line that ended it
    ended: bool  # the model ended it before the length cap
    tokens: int  # tokens after the prime, forced ones included
    mean_logprob: float  # mean log-probability of the tokens the model chose, in nats


class _TuneWriter:
    """One tune being written: what has been generated, what must be forced, whether it ended."""

    def __init__(self, tokenizer: Tokenizer, fields: dict[str, str], music: str):
        self.tokenizer = tokenizer
        self.fields = fields
        self.music = music
        self.pieces: list[str] = []
        self.queue: deque[int] = deque()  # forced tokens still to feed
        self.in_header = True
        self.line = ""  # the current line so far
        self.seen = {"X"}  # header fields written so far
        self.done = False
        self.ended = False
        self.chosen = 0  # tokens the model chose itself
        self.logprob = 0.0

    def next_token(self, sampled: int, logprob: float) -> int:
        """The token to write: the model's ``sampled`` one or the next forced one."""
        if not self.queue and self.in_header and self.line == "":
            self._maybe_force(self.tokenizer.pieces[sampled])
        if self.queue:
            token = self.queue.popleft()
        else:
            token = sampled
            self.chosen += 1
            self.logprob += logprob
        self._write(self.tokenizer.pieces[token])
        return token

    def _maybe_force(self, piece: str) -> None:
        """At the start of a header line: force the next requested field unless the model is
        writing a field that comes before it (a title before the meter, say)."""
        pending = [f for f in HEADER_ORDER if f in self.fields and f not in self.seen]
        if not pending:
            return
        letter = piece[:1]
        free = letter in HEADER_ORDER and letter not in self.seen
        if free and HEADER_ORDER.index(letter) < HEADER_ORDER.index(pending[0]):
            return
        self._force(header_lines({pending[0]: self.fields[pending[0]]}))

    def _force(self, text: str) -> None:
        self.queue.extend(int(i) for i in self.tokenizer.encode(text))

    def _write(self, piece: str) -> None:
        self.pieces.append(piece)
        for char in piece:
            if char != "\n":
                self.line += char
                continue
            if self.in_header:
                letter = self.line[:1] if self.line[1:2] == ":" else None
                if letter is not None:
                    self.seen.add(letter)
                if letter is None or letter == "K":
                    self.in_header = False  # the music starts here
                    if self.music:
                        self._force(self.music)
            self.line = ""
        tail = "".join(self.pieces[-len(TUNE_END) :])
        if tail.endswith(TUNE_END) and not self.queue:
            self.done = self.ended = True
        elif not self.in_header and self.line.startswith("X:"):
            # a new tune without the blank line: the model has ended this one all the same
            self.done = self.ended = True

    def tune(self) -> Tune:
        text = "".join(self.pieces)
        if self.ended and text.endswith(TUNE_END):
            text = text[: -len(TUNE_END)]
        elif self.ended:  # ended by starting the next tune: drop its "X:"
            text = text[: len(text) - len(self.line)]
        return Tune(
            text=(FIRST_LINE + text).rstrip("\n"),
            ended=self.ended,
            tokens=len(self.pieces),
            mean_logprob=self.logprob / self.chosen if self.chosen else 0.0,
        )


def check_fields(tokenizer: Tokenizer, fields: dict[str, str], music: str = "") -> None:
    """Refuse requested headers or music that the model could not write (unknown tokens)."""
    for letter in fields:
        if letter not in HEADER_ORDER or letter == "X":
            allowed = ", ".join(f"{f}:" for f in HEADER_ORDER[1:])
            raise UsageError(f"cannot ask for the header {letter}:; give only {allowed}")
    text = header_lines(fields) + music
    unknown = tokenizer.unknown_pieces(text)
    if unknown:
        shown = ", ".join(repr(p) for p in unknown[:10])
        raise UsageError(
            f"the model never saw {shown} in its corpus; ask for a meter, key or prime it knows"
        )


@torch.inference_mode()
def generate_tunes(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: SampleConfig,
    fields: dict[str, str] | None = None,
    music: str = "",
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Tune]:
    """``config.num`` tunes sampled together; ``config.length`` caps each tune's tokens.

    ``fields`` are headers to impose (letter to value, e.g. ``{"M": "6/8", "K": "D"}``) and
    ``music`` is where the music after the K: line starts. A tune ends when the model writes a
    blank line; one still going at the cap is returned with ``ended`` false.
    """
    config.validate()
    fields = dict(fields or {})
    check_fields(tokenizer, fields, music)
    generator = seeded_generator(config.seed, device)
    model.eval()
    writers = [_TuneWriter(tokenizer, fields, music) for _ in range(config.num)]
    logits, hidden = warm_up(model, prime_ids(tokenizer, TUNE_START), config.num, device)
    step = Stepper(model)
    active = list(range(config.num))  # rows of the batch, in the order of logits and hidden
    for _ in range(config.length):
        logits[:, 0] = -math.inf  # id 0 is <unk>: a tune must not contain it
        sampled = choose(logits, config.temperature, config.top_k, config.top_p, generator)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, sampled[:, None]).squeeze(-1)
        fed = [
            writers[row].next_token(token, logprob)
            for row, token, logprob in zip(active, sampled.tolist(), logprobs.tolist(), strict=True)
        ]
        keep = [i for i, row in enumerate(active) if not writers[row].done]
        if not keep or should_stop():
            break
        ids = torch.tensor(fed, dtype=torch.long, device=logits.device)
        if len(keep) < len(active):  # drop finished tunes from the batch
            index = torch.tensor(keep, device=logits.device)
            ids, hidden = ids[index], select_hidden(hidden, index)
            active = [active[i] for i in keep]
        logits, hidden = step(ids, hidden)
    return [writer.tune() for writer in writers]


def generate_valid_tunes(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: SampleConfig,
    is_valid: Callable[[Tune], bool],
    fields: dict[str, str] | None = None,
    music: str = "",
    device: torch.device | str = "cpu",
    max_rounds: int = 10,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[list[Tune], int]:
    """``config.num`` tunes that pass ``is_valid`` (and ended on their own), resampling those
    that fail, for at most ``max_rounds`` rounds; returns the tunes and how many were resampled.

    Tunes that still fail after the last round are kept, so the caller gets ``config.num`` tunes
    and can say how many are invalid.
    """
    tunes: list[Tune | None] = [None] * config.num
    failing = list(range(config.num))
    resampled = 0
    for round_number in range(max_rounds):
        seed = None if config.seed is None else config.seed + round_number
        batch = replace(config, num=len(failing), seed=seed)
        fresh = generate_tunes(model, tokenizer, batch, fields, music, device, should_stop)
        if round_number:
            resampled += len(failing)
        still = []
        for index, tune in zip(failing, fresh, strict=True):
            good = tune.ended and is_valid(tune)
            if good or tunes[index] is None:
                tunes[index] = tune
            if not good:
                still.append(index)
        failing = still
        if not failing or should_stop():
            break
    return [t for t in tunes if t is not None], resampled


def numbered(tunes: list[Tune]) -> list[str]:
    """The tunes' texts with X: set to 1, 2, 3, ..."""
    return [renumber(tune.text, i + 1) for i, tune in enumerate(tunes)]
