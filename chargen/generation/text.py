"""Text samples: a prime continued by the model, in batches or streamed, ended at a stop text.

Each sample is a sequence of the generation engine (``chargen.generation.engine``); where a sample
must end at a stop text or be shown as it is made, its control decodes the tokens as they come and
passes the text through a ``StopScanner``. ``beam`` finds the likeliest continuation instead.
Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from chargen.config import SampleConfig
from chargen.errors import UsageError
from chargen.generation.engine import BeamEngine, Control, Engine, Sequence
from chargen.generation.sampling import sequence_key
from chargen.model.rnn import RNNLanguageModel
from chargen.text.tokenizer import UNK, Tokenizer


@dataclass
class Sample:
    text: str  # the prime followed by the generated text
    tokens: int  # generated tokens (the prime and anything after a stop excluded)
    mean_logprob: float  # mean log-probability per generated token, in nats
    finish_reason: str = "length"  # "stop" (the stop text), "length" or "cancelled"


class StopScanner:
    """Passes text through until a stop text appears; holds back what could be the start of one.

    ``stop`` is one text or several (the first to appear ends the text). ``feed`` returns the
    text that is now safe to show; after a stop text is seen, ``done`` is true and nothing more
    passes. The stop text itself is not part of the output.
    """

    def __init__(self, stop: str | Iterable[str] | None):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.done = False

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        if not self.stops:
            return piece
        self.pending += piece
        found = [at for at in (self.pending.find(s) for s in self.stops) if at >= 0]
        if found:
            self.done = True
            out, self.pending = self.pending[: min(found)], ""
            return out
        keep = max(len(s) for s in self.stops) - 1
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut] if cut > 0 else "", self.pending[max(cut, 0) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.done else out


class TextControl(Control):
    """Decodes a sample's tokens as they come: text passes to ``on_text`` as it becomes final,
    and the sample is complete when its stop text appears. With ``chars``, the text ends at that
    many characters (the last piece cut to fit; the engine ends the sequence there, by its
    tokens' ``sizes``)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: str | Iterable[str] | None,
        on_text: Callable[[str], None],
        chars: int | None = None,
    ):
        self.pieces = tokenizer.pieces
        self.scanner = StopScanner(stop)
        self.on_text = on_text
        self.chars_left = chars

    def accept(self, token: int, forced: bool) -> bool:
        piece = self.pieces[token]
        if self.chars_left is not None:
            piece = piece[: self.chars_left]
            self.chars_left -= len(piece)
        if text := self.scanner.feed(piece):
            self.on_text(text)
        return self.scanner.done

    def flush(self) -> None:
        """Pass on what was held back in case it began the stop text."""
        if text := self.scanner.flush():
            self.on_text(text)


def prime_ids(tokenizer: Tokenizer, prime: str) -> list[int]:
    """Token ids of the prime; an empty prime starts the text at a line break."""
    unknown = tokenizer.unknown_pieces(prime)
    if unknown:
        shown = ", ".join(repr(p) for p in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        what = "characters" if tokenizer.level == "char" or tokenizer.spec.subwords else "tokens"
        raise UsageError(f"--prime has {what} the model never saw: {shown}{more}; remove them")
    if prime:
        return tokenizer.encode(prime).tolist()
    start = tokenizer.id_of("\n")
    return [start if start is not None else min(1, tokenizer.vocab_size - 1)]


def _sequences(tokenizer: Tokenizer, config: SampleConfig, on_text=None, first: int = 0):
    """The sequences of ``config.num`` samples, numbered from ``first`` (which picks their
    random streams), with the controls that decode them where text must be seen as it is made,
    or end at a stop text. At a sub-word level ``config.length`` counts characters, as at the
    character level: each token's size is its piece's length."""
    config.validate()
    if tokenizer.pieces[0] != UNK:
        raise UsageError("tokenizer has no <unk> at id 0")
    prompt = prime_ids(tokenizer, config.prime)
    sizes = None
    if tokenizer.spec.subwords:  # each token's length in characters
        sizes = np.array([len(piece) for piece in tokenizer.pieces], dtype=np.int64)
    texts: list[list[str]] = [[config.prime] for _ in range(config.num)]
    sequences = []
    for i in range(config.num):

        def emit(text: str, i: int = i) -> None:
            texts[i].append(text)
            if on_text:
                on_text(i, text)

        chars = config.length if sizes is not None else None
        decoding = config.stop is not None or on_text is not None
        control = TextControl(tokenizer, config.stop, emit, chars) if decoding else None
        key = sequence_key(config.seed, first + i)
        sequences.append(Sequence(prompt, config.length, config, key, control, sizes))
    return sequences, texts


def sample(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: SampleConfig,
    device: torch.device | str = "cpu",
    on_text: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    first: int = 0,
) -> list[Sample]:
    """Generate ``config.num`` samples as one batch; ``on_text(i, piece)`` receives the text of
    sample ``i`` as it becomes final, prime first. The samples are numbers ``first`` onwards of
    their request: the number picks a sample's random stream, so a request split into batches
    gives the samples it would give in one.

    ``should_stop`` is asked after every step; when it says yes, the samples end there.
    """
    sequences, texts = _sequences(tokenizer, config, on_text, first)
    if on_text and config.prime:
        for i in range(config.num):
            on_text(i, config.prime)
    engine = Engine(model, device)
    engine.add(sequences)
    engine.run(should_stop)
    samples = []
    for sequence, parts in zip(sequences, texts, strict=True):
        if sequence.control is not None:
            sequence.control.flush()
        else:  # where sizes counted characters, the last piece may go past the length
            cut = config.length if sequence.sizes is not None else None
            parts.append(tokenizer.decode(sequence.ids)[:cut])
        reason = sequence.finish_reason or "cancelled"
        samples.append(Sample("".join(parts), len(sequence.ids), sequence.mean_logprob, reason))
    return samples


def stream(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: SampleConfig,
    device: torch.device | str = "cpu",
) -> Iterator[str]:
    """One sample's text in pieces as it is generated, the prime first; closing the iterator
    stops the generation."""
    pieces: list[str] = []
    sequences, _ = _sequences(tokenizer, replace(config, num=1), lambda _, t: pieces.append(t))
    sequence = sequences[0]
    if config.prime:
        yield config.prime
    engine = Engine(model, device)
    engine.add([sequence])
    while not sequence.done:
        engine.step()
        yield from pieces
        pieces.clear()
    sequence.control.flush()
    yield from pieces


def beam(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    prime: str,
    width: int,
    length: int,
    stop: str | None = None,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
) -> Sample:
    """The likeliest continuation of ``prime`` of ``length`` tokens that a beam of ``width``
    finds (characters at a sub-word level: as many tokens, cut to ``length`` characters), cut
    before ``stop`` if it appears."""
    if width < 1:
        raise UsageError(f"beam width must be at least 1, got {width}")
    prompt = prime_ids(tokenizer, prime)
    found = BeamEngine(model, width, device).search(prompt, length, should_stop)
    text = tokenizer.decode(found.ids)
    if tokenizer.spec.subwords:
        text = text[:length]
    reason = "length"
    if stop and stop in text:
        text, reason = text[: text.index(stop)], "stop"
    return Sample(prime + text, len(found.ids), found.mean_logprob, reason)
