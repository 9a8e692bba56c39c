"""Complete ABC tunes from a trained model: what is asked of them, the end-of-tune rule, a cap.

``generate_tunes`` samples a batch of tunes on the generation engine, each from a fresh state
primed with the start of a tune (``X:``: the model writes the number), until the model writes
the end-of-tune marker (a blank line, ``TUNE_END``) or reaches the length cap. By default each
tune follows ``chargen.music.grammar``: requested headers (``M:6/8``, ``R:jig``), the form
(bars, parts) and bars that agree with the meter hold by construction (``GrammarControl``).
With ``free``, the model writes what it likes, and requested headers are imposed by *forcing*:
when the model starts a header line at or past where a requested field belongs, the requested
line is fed to it instead (``TuneControl``). The loop itself is the engine's.
``generate_valid_tunes`` resamples the tunes a check rejects. This module knows nothing about
music21, files or the command line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from chargen.config import SampleConfig
from chargen.errors import UsageError
from chargen.generation.engine import Control, Engine, Sequence
from chargen.generation.sampling import sequence_key
from chargen.generation.text import prime_ids
from chargen.model.rnn import RNNLanguageModel
from chargen.music.check import TuneCheck
from chargen.music.grammar import Form, TuneGrammar, check_prime, vocabulary
from chargen.music.notation import (
    HEADER_ORDER,
    RHYTHMS,
    TUNE_END,
    default_unit,
    header_lines,
    key_readable,
    meter_length,
    parse_header_text,
    renumber,
)
from chargen.text.tokenizer import Tokenizer

FIRST_LINE = "X:"
TUNE_START = TUNE_END[-1] + FIRST_LINE
"""What every tune is primed with, from a zero state: the blank line that ends a previous tune,
then the field that starts a tune; the model writes the number (the tunes are renumbered after).
Training at the abc level starts every tune from a zero state at that same newline
(``chargen.text.batches.piece_starts``), followed by its X: line, so the model meets each tune
as it is sampled. (Priming with a whole ``X:1`` line made the model go on writing a number of
several digits on the next line, the way the corpus's numbers run.)"""

TUNE_CAP = 1200
"""Default cap on a tune's tokens: about five times an average folk tune, above the longest."""

TUNE_TEMPERATURE = 1.0
"""Default temperature for tunes: the model's own distribution. The grammar keeps every tune
valid at any temperature, and at 1.0 the tunes' length, endings and rhythms come closest to the
corpus's (``chargen abc stats``; figures in benchmarks/RESULTS.md). Lower is safer and blander."""


def is_tune_model(tokenizer: Tokenizer, corpus: object) -> bool:
    """A model of ABC tunes: the abc level (the level whose corpora are separate pieces: tunes),
    or any level trained on a .abc corpus."""
    if tokenizer.separate_pieces:
        return True
    files = corpus if isinstance(corpus, list) else [corpus]
    return any(str(f).endswith(".abc") for f in files)


@dataclass
class Tune:
    text: str  # the tune from its X: line, without the blank line that ended it
    ended: bool  # the model ended it before the length cap
    tokens: int  # tokens after the prime, forced ones included
    mean_logprob: float  # mean log-probability of the tokens the model chose, in nats
    check: TuneCheck | None = None  # the verdict of ``chargen.music.check``, where asked for
    attempts: int = 1  # tunes sampled for this one's place (more than 1: resampled as invalid)

    @property
    def valid(self) -> bool | None:
        """Whether the tune passed its check; None when it was not checked."""
        return None if self.check is None else self.check.valid


class TuneControl(Control):
    """One tune being written: what has been generated, what must be forced, whether it ended."""

    def __init__(self, tokenizer: Tokenizer, fields: dict[str, str], music: str):
        self.tokenizer = tokenizer
        self.fields = fields
        self.music = music
        self.pieces: list[str] = []  # after the prompt's FIRST_LINE
        self.queue: deque[int] = deque()  # forced tokens still to feed
        self.in_header = True
        self.line = FIRST_LINE  # the current line so far
        self.seen = {"X"}  # header fields written so far
        self.ended = False

    def override(self, sampled: int) -> int | None:
        """The next forced token, if any: forcing starts where the model begins a header line
        that is not a requested field coming before the next one requested."""
        if not self.queue and self.in_header and self.line == "":
            self._maybe_force(self.tokenizer.pieces[sampled])
        return self.queue.popleft() if self.queue else None

    def accept(self, token: int, forced: bool) -> bool:
        self._write(self.tokenizer.pieces[token])
        return self.ended

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
            self.ended = True
        elif not self.in_header and self.line.startswith("X:"):
            # a new tune without the blank line: the model has ended this one all the same
            self.ended = True

    def tune(self, sequence: Sequence) -> Tune:
        text = "".join(self.pieces)
        if self.ended and text.endswith(TUNE_END):
            text = text[: -len(TUNE_END)]
        elif self.ended:  # ended by starting the next tune: drop its "X:"
            text = text[: len(text) - len(self.line)]
        return Tune(
            text=(FIRST_LINE + text).rstrip("\n"),
            ended=self.ended,
            tokens=len(self.pieces),
            mean_logprob=sequence.mean_logprob,
        )


class GrammarControl(TuneControl):
    """A tune written under ``chargen.music.grammar``: every token the model may choose keeps
    the tune valid, with the headers and form asked for; a prime's music is forced as is."""

    def __init__(self, tokenizer: Tokenizer, spec: TuneSpec):
        super().__init__(tokenizer, {}, spec.music)  # the grammar asks for the headers
        self.grammar = TuneGrammar(tokenizer, spec.fields, spec.form)

    def allowed(self) -> torch.Tensor | None:
        return None if self.queue else self.grammar.allowed()

    def override(self, sampled: int) -> int | None:
        return self.queue.popleft() if self.queue else None

    def accept(self, token: int, forced: bool) -> bool:
        self.grammar.advance(token)
        return super().accept(token, forced)


@dataclass(frozen=True)
class TuneSpec:
    """What is asked of every tune of a request: header fields (letter to value), music to
    start from after the K: line, a form, and whether the grammar is off (``free``)."""

    fields: dict[str, str] = field(default_factory=dict)
    music: str = ""
    form: Form = Form()
    free: bool = False

    def control(self, tokenizer: Tokenizer) -> TuneControl:
        if self.free:
            return TuneControl(tokenizer, self.fields, self.music)
        return GrammarControl(tokenizer, self)


def tune_request(
    prime: str = "",
    meter: str | None = None,
    key: str | None = None,
    *,
    rhythm: str | None = None,
    style: str | None = None,
    bars: int | None = None,
    parts: int | None = None,
    free: bool = False,
) -> TuneSpec:
    """What to ask of tunes, from a prime (``"M:6/8\\nK:D\\nA"``, where ``\\n`` may be written
    as two characters) and the headers and form asked for apart from it."""
    fields, music = parse_header_text(prime.replace("\\n", "\n"))
    fields.pop("X", None)
    asked = (("M", meter, "--meter"), ("K", key, "--key"), ("R", rhythm, "--rhythm"))
    for letter, value, option in (*asked, ("O", style, "--style")):
        if value is None:
            continue
        value = value.strip()
        if letter in fields and fields[letter] != value:
            raise UsageError(f"{option} {value} contradicts {letter}:{fields[letter]} in --prime")
        fields[letter] = value
    _check_values(fields)
    if music.strip() and "K" not in fields:
        raise UsageError("music in --prime needs a key first: a K: line or --key")
    if music.strip() and not free:
        if "M" not in fields:
            raise UsageError("music in --prime needs a meter for its bars: an M: line or --meter")
        fields.setdefault("L", default_unit(fields["M"]))  # how ABC reads music without an L:
    if (bars or parts) and free:
        raise UsageError("--bars and --parts need the grammar; leave out --free")
    return TuneSpec(fields, music, Form(bars, parts), free)


def _check_values(fields: dict[str, str]) -> None:
    meter, key, rhythm = fields.get("M"), fields.get("K"), fields.get("R")
    if meter is not None and meter_length(meter) is None and meter not in ("none", "C", "C|"):
        raise UsageError(f"cannot read the meter {meter!r}; write it like 6/8, 3/4 or C")
    if key is not None and not key_readable(key):
        raise UsageError(f"cannot read the key {key!r}; write it like D, Ador, Bm or F#mix")
    if rhythm is not None and rhythm not in RHYTHMS:
        raise UsageError(f"unknown rhythm {rhythm!r}; choose one of: {', '.join(RHYTHMS)}")


def check_fields(tokenizer: Tokenizer, fields: dict[str, str], music: str = "") -> None:
    """Refuse requested headers or music that the model could not write (unknown tokens)."""
    for letter in fields:
        if letter not in HEADER_ORDER or letter == "X":
            allowed = ", ".join(f"{f}:" for f in HEADER_ORDER[1:])
            raise UsageError(f"cannot ask for the header {letter}:; give only {allowed}")
    vocab = vocabulary(tuple(tokenizer.pieces))
    for letter, value in fields.items():
        if letter in "MLKRO":
            vocab.value_id(letter, value)  # a UsageError naming the values the model knows
    text = header_lines(fields) + music
    unknown = tokenizer.unknown_pieces(text)
    if unknown:
        shown = ", ".join(repr(p) for p in unknown[:10])
        raise UsageError(
            f"the model never saw {shown} in its corpus; ask for a meter, key or prime it knows"
        )


def generate_tunes(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: SampleConfig,
    spec: TuneSpec = TuneSpec(),
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
    first: int = 0,
    on_done: Callable[[int], None] = lambda count: None,
) -> list[Tune]:
    """``config.num`` tunes sampled together, numbers ``first`` onwards of their request (the
    number picks a tune's random stream); ``config.length`` caps each tune's tokens;
    ``on_done`` is told how many tunes a step finished, for a progress bar.

    ``spec`` says what is asked of them: headers to impose (e.g. ``{"M": "6/8", "K": "D"}``),
    the music the tune starts with after its K: line, a form, and whether the grammar is off.
    A tune ends when the model writes a blank line; one still going at the cap is returned
    with ``ended`` false.
    """
    sequences = tune_sequences(tokenizer, config, spec, first)
    engine = Engine(model, device)
    engine.add(sequences)
    while engine.sequences and not should_stop():
        finished = engine.step()
        if finished:
            on_done(len(finished))
    return [sequence.control.tune(sequence) for sequence in sequences]


def tune_sequences(
    tokenizer: Tokenizer, config: SampleConfig, spec: TuneSpec = TuneSpec(), first: int = 0
) -> list[Sequence]:
    """The engine sequences of ``config.num`` tunes (numbers ``first`` onwards of a request),
    each with its control; once done, ``sequence.control.tune(sequence)`` is its tune. For
    callers that run the engine themselves (a server's continuous batching)."""
    config.validate()
    check_fields(tokenizer, spec.fields, spec.music)
    if not spec.free and spec.music:
        check_prime(tokenizer, spec.fields, spec.music, spec.form)
    prompt = prime_ids(tokenizer, TUNE_START)
    return [
        Sequence(
            prompt,
            config.length,
            config,
            sequence_key(config.seed, first + i),
            spec.control(tokenizer),
        )
        for i in range(config.num)
    ]


Generate = Callable[[SampleConfig, int], list[Tune]]
"""Makes ``config.num`` tunes, numbers ``first`` onwards of a request: ``generate_tunes`` with
a model and headers bound, or a server's batched equivalent."""


def generate_valid_tunes(
    generate: Generate,
    config: SampleConfig,
    is_valid: Callable[[Tune], bool],
    max_rounds: int = 10,
    should_stop: Callable[[], bool] = lambda: False,
    first: int = 0,
) -> list[Tune]:
    """``config.num`` tunes that pass ``is_valid`` (and ended on their own), resampling those
    that fail, for at most ``max_rounds`` rounds; each tune's ``attempts`` says how many tunes
    were sampled for its place.

    A place whose tunes all fail keeps its first tune, so the caller gets ``config.num`` tunes
    and can say how many are invalid.
    """
    tunes: list[Tune | None] = [None] * config.num
    attempts = [0] * config.num
    failing = list(range(config.num))
    for round_number in range(max_rounds):
        seed = None if config.seed is None else config.seed + round_number
        fresh = generate(replace(config, num=len(failing), seed=seed), first)
        still = []
        for index, tune in zip(failing, fresh, strict=True):
            attempts[index] += 1
            good = tune.ended and is_valid(tune)
            if good or tunes[index] is None:
                tunes[index] = tune
            if not good:
                still.append(index)
        failing = still
        if not failing or should_stop():
            break
    return [replace(t, attempts=n) for t, n in zip(tunes, attempts, strict=True) if t is not None]


def numbered(tunes: list[Tune], start: int = 1) -> list[Tune]:
    """The tunes with X: set to ``start``, ``start + 1``, ..."""
    return [replace(tune, text=renumber(tune.text, start + i)) for i, tune in enumerate(tunes)]
