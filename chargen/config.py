"""Configuration dataclasses for the model, training and sampling.

Each field has a default and a one-line reason. Values that come from data (the vocabulary size)
are filled in from the tokenizer, never guessed. This module validates values and converts to and
from plain dicts for JSON; it knows nothing about torch, files or the command line.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from chargen.errors import UsageError

CELLS = ("rnn", "lstm", "gru", "lnlstm")
"""Recurrent cell names; the model's registry and the CLI's choices both read this tuple.
``lnlstm`` is the layer-normalised LSTM (``chargen.model.lnlstm``)."""

LEVELS = ("char", "word", "abc", "bpe")
"""Tokenizer levels; ``chargen.text.tokenizer.LEVEL_SPECS`` says how each cuts text."""

LEVEL_VOCABULARY = {"char": 10_000, "word": 10_000, "abc": 10_000, "bpe": 512}
"""The vocabulary cap of a level's run that sets none (the character level's is unused): 512
sub-word tokens did best in 120-s runs on tinyshakespeare, against 256, 384, 768 and 1,024
(docs/experiments.md, 2026-12-07, later still)."""

LEVEL_EMBEDDING = {"char": 64, "word": 64, "abc": 64, "bpe": 256}
"""The token embedding's width in a level's new run that sets none: a character needs far fewer
dimensions than the hidden state; 512 sub-word tokens did best with 256 (docs/experiments.md)."""

LEVEL_TRAINING: dict[str, dict[str, float]] = {"bpe": {"lr": 1e-2, "decay_frac": 0.4}}
"""Training settings a level's new run takes where none is given, in place of ``TrainConfig``'s
defaults: sub-word runs learned more in 1,300 steps of tinyshakespeare at a peak rate of 1e-2,
decaying over the last 40%, than at 7e-3 over the last 60% (at seeds 1337, 7 and 3;
docs/experiments.md, 2026-12-07, late night)."""

LEVEL_NGRAM = {"char": 10, "bpe": 5}
"""The n-gram order a level's new run mixes with its network where --ngram is not given (0:
none): at the character level, counts of 8 characters took 0.05 - 0.08 nats/char off the
network alone after two minutes, on tinyshakespeare, on a play it never saw and on a 70 KB
corpus, and 10 took 0.0027 more off with the reweighted mixture (25 MB of counts against
11 for tinyshakespeare); at the bpe level, 5 tokens (about 10 characters) took 0.02 off, and
6 nothing more (docs/experiments.md, 2026-12-08, later and last). The word and abc levels
were not measured and take none."""

MAX_NGRAM = 16
"""The longest n-gram order --ngram takes."""

LEVEL_CELL = {"bpe": "lnlstm"}
"""The cell a level's new run takes without --cell where the layer-normalised LSTM trains on
the compiled float32 window (a CPU without bf16 products): at the bpe level it learned more in
120 s there than the LSTM. Elsewhere (bf16 CPUs, GPUs, no C compiler) the LSTM's fused forms
are faster, and every level takes the LSTM."""

SCHEDULES = ("wsd", "cosine")
"""Learning-rate schedules after the warm-up: warm-up, stable, decay; or cosine decay."""


OPTION_NAMES = {
    "seq_len": "window",
    "time_limit": "time",
    "warmup_steps": "warmup",
    "num_layers": "layers",
    "hidden_size": "hidden",
    "embedding_dim": "embedding",
}
"""Config fields whose option (``--window`` on the command line, ``window=`` in Python) is not
simply the field's name."""


def option_name(field: str) -> str:
    """The command-line option of a config field: ``seq_len`` is ``--window``."""
    return "--" + OPTION_NAMES.get(field, field).replace("_", "-")


def _check_finite(config) -> None:
    """NaN and infinity pass every range comparison, so refuse them explicitly."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{option_name(field.name)} must be a finite number, got {value}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _within(config, name: str, low: float, high: float, low_open=False, high_open=False) -> None:
    """``config.name`` (when set) lies between ``low`` and ``high``, each end open or closed."""
    value = getattr(config, name)
    if value is None:
        return
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise UsageError(f"{name} must be in {left}{_num(low)}, {_num(high)}{right}, got {value}")


def _num(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: no lone surrogates (what undecodable bytes on a
    command line turn into)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_WIDTH = 65_536
"""Largest hidden or embedding size accepted: far past what any CPU trains, small enough that a
damaged or hostile config cannot ask for a matrix that fills memory."""
MAX_LAYERS = 64
MAX_THREADS = 1024


SMALL_CORPUS = 100_000
"""Training tokens up to which a new run gets ``SMALL_CORPUS_DROPOUT`` unless --dropout is given."""
LARGE_CORPUS = 400_000
"""Training tokens from which a new run gets no dropout unless --dropout is given."""
SMALL_CORPUS_DROPOUT = 0.5


def corpus_dropout(train_tokens: int) -> float:
    """The dropout of a new run whose --dropout is not given, from the size of its training
    split: minutes of training make dozens of passes over a small corpus, and the model learns
    it by heart (a 70 KB play, 60 s: validation loss 1.41 without dropout, 1.31 with 0.5).
    Falls from 0.5 to 0 in equal steps of log size between the two sizes, in steps of 0.05."""
    if train_tokens >= LARGE_CORPUS:
        return 0.0
    if train_tokens <= SMALL_CORPUS:
        return SMALL_CORPUS_DROPOUT
    share = math.log(LARGE_CORPUS / train_tokens) / math.log(LARGE_CORPUS / SMALL_CORPUS)
    return round(SMALL_CORPUS_DROPOUT * share * 20) / 20


WIDTH = 512
"""The hidden size of a new run without --hidden, except where ``FLOAT32_WIDTH`` applies."""
FLOAT32_WIDTH = 448
"""The hidden size of a new run without --hidden where torch's float32 LSTM trains it."""


def default_width(torch_float32: bool) -> int:
    """The hidden size a new run takes when --hidden is not given: of the widths measured, the
    one that learned most in two minutes on 1 MB of text. Where training runs torch's float32
    recurrence on a CPU (no bf16 products or --precision fp32, and no compiled LSTM window: a
    GRU or plain RNN, no C compiler, or CHARGEN_KERNELS=0), 512 units step far slower (13,900
    tokens/s on an AVX2-only EPYC, 51,500 with AMX) and a narrower model's extra steps win. The
    compiled window steps 512 units fast enough that the width wins again (docs/experiments.md,
    2026-12-07)."""
    return FLOAT32_WIDTH if torch_float32 else WIDTH


@dataclass
class ModelConfig:
    cell: str = "lstm"  # LSTM learns long dependencies the plain RNN's vanishing gradients lose
    vocab_size: int = 0  # filled in from the tokenizer
    embedding_dim: int = 64  # a new run without --embedding takes its level's LEVEL_EMBEDDING
    hidden_size: int = WIDTH  # a new run without --hidden takes default_width(its hardware)
    num_layers: int = 1  # one wide layer beats two narrow ones per CPU-second at this scale
    dropout: float = 0.0  # a new run without --dropout takes corpus_dropout(its corpus size)
    tie_weights: bool = (
        False  # share input and output embeddings (needs embedding_dim == hidden_size)
    )
    ngram: int = 0  # mix an n-gram model of this order (0: none); a new run takes LEVEL_NGRAM

    def validate(self) -> None:
        _check_finite(self)
        _choice("cell", self.cell, CELLS)
        _within(self, "embedding_dim", 1, MAX_WIDTH)
        _within(self, "hidden_size", 1, MAX_WIDTH)
        _within(self, "num_layers", 1, MAX_LAYERS)
        _within(self, "vocab_size", 0, 2**32)
        _within(self, "dropout", 0, 1, high_open=True)
        _within(self, "ngram", 0, MAX_NGRAM)
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            raise UsageError(
                "--tie-weights needs --embedding equal to --hidden "
                f"(got {self.embedding_dim} and {self.hidden_size})"
            )


@dataclass
class TrainConfig:
    level: str = "char"  # character level needs no vocabulary cap and never meets <unk>
    # word, abc and bpe levels: the vocabulary's cap, <unk> included (the most frequent pieces,
    # or the merges learned first); None takes the level's own (``LEVEL_VOCABULARY``)
    vocab_size: int | None = None
    min_freq: int = 1  # word level: drop tokens seen fewer times; bpe: merge pairs seen this often
    batch_size: int = 16  # parallel streams; 16 learn more per token in a short run than 32
    seq_len: int = 64  # BPTT window; the hidden state carries context across windows
    reset_every: int = 32  # windows between a stream's zero-state restarts (staggered); 0: never
    lr: float = 7e-3  # AdamW peak rate; high, with short warm-up, wins on a 2-minute budget
    # (a level's new run takes LEVEL_TRAINING's lr and decay_frac where it has them)
    weight_decay: float = 0.2  # AdamW decoupled; without it, 4 epochs of a 1 MB corpus overfit
    beta1: float = 0.6  # AdamW's first-moment decay: a short memory wins on a 2-minute run
    beta2: float = 0.99  # AdamW's second-moment decay
    warmup_steps: int = 20  # linear warm-up avoids early blow-ups from Adam's fresh moments
    schedule: str = "wsd"  # after warm-up: the peak, then a linear decay (wsd), or cosine
    decay_frac: float = 0.6  # wsd: the last part of the run that decays (40% at the peak won)
    min_lr_frac: float = 0.0  # the decay ends at this fraction of the peak rate
    clip: float = 1.0  # gradient-norm clipping against exploding gradients (Pascanu et al. 2013)
    val_frac: float = 0.1  # the end of the corpus held out for validation
    eval_every: int = 1000  # steps between validation passes and checkpoint saves; a pass over
    # tinyshakespeare's 110k validation tokens costs about 50 steps (5% of the run at 1,000)
    eval_tokens: int = 1_000_000  # validation tokens scored per pass: all of a typical split
    patience: int = 0  # stop after this many evaluations without improvement; 0 never stops
    max_steps: int | None = None  # stop after this many optimizer steps
    epochs: float | None = None  # stop after this many passes over the training split
    time_limit: float | None = None  # stop after this many seconds of training
    seed: int = 1337  # makes a CPU run reproducible
    device: str = "auto"  # cuda, then mps, then cpu
    precision: str = "auto"  # bf16 autocast where the hardware has it, else fp32
    threads: int | None = None  # torch intra-op threads; None keeps torch's choice

    @property
    def vocabulary_cap(self) -> int:
        """The vocabulary's cap: ``vocab_size``, or the level's own where that is None."""
        return self.vocab_size if self.vocab_size is not None else LEVEL_VOCABULARY[self.level]

    def validate(self) -> None:
        _check_finite(self)
        _choice("level", self.level, LEVELS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("device", self.device, ("auto", "cpu", "cuda", "mps"))
        big = 2**62  # counts past any real run, still exact in JSON and int64
        for name in ("min_freq", "eval_every", "eval_tokens", "max_steps", "patience"):
            _within(self, name, 0 if name == "patience" else 1, big)
        _within(self, "vocab_size", 2, 2**32)
        _within(self, "batch_size", 1, 2**20)
        _within(self, "seq_len", 1, 2**20)
        _within(self, "reset_every", 0, big)
        _within(self, "warmup_steps", 0, big)
        _within(self, "threads", 1, MAX_THREADS)
        _within(self, "seed", -(2**63), 2**63 - 1)
        for name in ("lr", "clip", "epochs", "time_limit"):
            _within(self, name, 0, math.inf, low_open=True)
        _within(self, "weight_decay", 0, math.inf)
        _within(self, "val_frac", 0, 1, low_open=True, high_open=True)
        _within(self, "decay_frac", 0, 1, low_open=True)
        _within(self, "min_lr_frac", 0, 1)
        _within(self, "beta1", 0, 1, high_open=True)
        _within(self, "beta2", 0, 1, high_open=True)

    @property
    def has_limit(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.epochs, self.time_limit))


@dataclass
class SampleConfig:
    length: int = 500  # tokens to generate per sample; characters at char and bpe levels
    temperature: float = 0.8  # below 1 sharpens the distribution; 0 means greedy
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose mass reaches p
    num: int = 1  # samples generated together as one batch
    seed: int | None = None  # fixed seed, same text
    prime: str = ""  # text that warms up the hidden state before generation
    stop: str | None = None  # each sample ends at its first occurrence of this text

    def validate(self) -> None:
        _check_finite(self)
        _within(self, "length", 1, 2**40)
        _within(self, "temperature", 0, math.inf)
        _within(self, "top_k", 1, 2**32)
        _within(self, "top_p", 0, 1, low_open=True)
        _within(self, "num", 1, 2**32)
        for name in ("prime", "stop"):
            text = getattr(self, name)
            if text is not None and not _is_unicode(text):
                raise UsageError(f"--{name} is not valid UTF-8 text")


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options named as on the command line (``hidden=512``, ``window=64``, ``time="2m"``) or as
    config fields (``hidden_size=512``), as the fields of a ``ModelConfig`` and a
    ``TrainConfig``; an unknown name is a ``UsageError`` that lists the known ones."""
    fields = {option: field for field, option in OPTION_NAMES.items()}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model, train = {}, {}
    for name, value in options.items():
        field = fields.get(name, name)
        if field == "time_limit" and isinstance(value, str):
            value = parse_duration(value)
        if field in model_fields:
            model[field] = value
        elif field in train_fields:
            train[field] = value
        else:
            known = sorted(OPTION_NAMES.get(f, f) for f in model_fields | train_fields)
            raise UsageError(f"unknown option {name!r}; known options: {', '.join(known)}")
    return model, train


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any]):
    """Build a config from a dict, ignoring keys this version does not know."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str) -> float:
    """``'90s'``, ``'10m'``, ``'1.5h'`` or a bare number of seconds, as seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"cannot read duration {text!r}; write it like 90s, 10m or 1h")
    unit = (match.group(2) or "s").lower()
    return float(match.group(1)) * _UNIT_SECONDS[unit]


__all__ = [
    "CELLS",
    "LEVELS",
    "SCHEDULES",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "from_dict",
    "option_name",
    "parse_duration",
    "split_options",
    "to_dict",
]
