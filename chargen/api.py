"""The objects of the public Python API: a loaded model that generates, scores and writes tunes,
and the functions that load, train, list and compare runs.

``import chargen`` exposes what is here (``chargen.__all__``). Nothing here prints; everything a
user can fix raises a ``chargen.ChargenError`` subclass. The command line and the web server are
built on these same calls.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from chargen.config import ModelConfig, SampleConfig, TrainConfig, split_options
from chargen.errors import UsageError
from chargen.generation import text as text_generation
from chargen.generation.engine import Engine
from chargen.generation.scoring import Ranked, score_texts
from chargen.generation.scoring import identify as rank_models
from chargen.generation.text import Sample
from chargen.metrics import Score
from chargen.model.device import pick_device
from chargen.model.rnn import RNNLanguageModel
from chargen.music.check import TuneCheck, check_tune, music21_available
from chargen.music.tunes import (
    TUNE_CAP,
    TUNE_TEMPERATURE,
    Tune,
    TuneSpec,
    generate_tunes,
    generate_valid_tunes,
    is_tune_model,
    numbered,
    tune_request,
)
from chargen.runs import session, store
from chargen.runs.session import TrainingSummary
from chargen.text.batches import Stream
from chargen.text.corpus import PhaseProgress, encode_to_file, expand_sources
from chargen.text.tokenizer import Tokenizer
from chargen.training.evaluate import evaluate
from chargen.training.trainer import Trainer
from chargen.training.workers import plan as plan_workers

PathLike = str | os.PathLike

BATCH = 256
"""Most samples or tunes generated at once: more rows barely speed a step up on a CPU, and a
request for millions is made batch by batch in bounded memory."""


class Model:
    """A trained model, loaded from its run, ready to generate and score text.

    Get one with ``chargen.load``. ``module`` is the torch model (in eval mode) and ``tokenizer``
    turns text into its tokens and back.
    """

    def __init__(
        self,
        run: store.Run,
        module: RNNLanguageModel,
        tokenizer: Tokenizer,
        device: torch.device,
        weights: str,
    ):
        self.run = run
        self.module = module
        self.tokenizer = tokenizer
        self.device = device
        self.weights = weights  # "best" or "last": which weights were loaded

    def __repr__(self) -> str:
        return f"<chargen.Model {self.name!r} ({self.level}, {self.weights} weights)>"

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def level(self) -> str:
        """The tokenizer level: ``char``, ``word``, ``abc`` or ``bpe``."""
        return self.tokenizer.level

    @property
    def writes_tunes(self) -> bool:
        """Whether the model was trained on ABC tunes, so that ``tunes`` applies."""
        return is_tune_model(self.tokenizer, self.run.info.get("corpus"))

    # ------------------------------------------------------------------ text

    def generate(
        self,
        prompt: str = "",
        length: int = 500,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | None = None,
    ) -> str:
        """The prompt followed by ``length`` tokens of the model's continuation (characters at
        the character and bpe levels; fewer if ``stop`` appears: the text ends before it)."""
        config = SampleConfig(length, temperature, top_k, top_p, 1, seed, prompt, stop)
        return self.generate_many(config=config)[0].text

    def stream(
        self,
        prompt: str = "",
        length: int = 500,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | None = None,
    ) -> Iterator[str]:
        """The same text as ``generate`` gives, in pieces as they are made, the prompt first.
        Breaking out of the loop stops the generation."""
        config = SampleConfig(length, temperature, top_k, top_p, 1, seed, prompt, stop)
        return text_generation.stream(self.module, self.tokenizer, config, self.device)

    def generate_many(
        self,
        num: int = 1,
        prompt: str = "",
        length: int = 500,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | None = None,
        config: SampleConfig | None = None,
        on_text: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[Sample]:
        """``num`` samples generated together, each with its text, its token count and its
        mean log-probability. ``config`` gives every setting at once instead; ``on_text(i,
        piece)`` receives sample ``i``'s text as it is made; ``should_stop`` is asked after
        every token and ends every sample when it says yes."""
        if config is None:
            config = SampleConfig(length, temperature, top_k, top_p, num, seed, prompt, stop)
        return list(self.samples(config, on_text, should_stop))

    def samples(
        self,
        config: SampleConfig,
        on_text: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Sample]:
        """The samples ``config`` asks for, made in batches of at most ``BATCH`` and given as
        each batch is done: memory stays bounded however many are asked for. The same seed
        gives the same samples as ``generate_many``."""
        config.validate()
        for first in range(0, config.num, BATCH):
            batch = replace(config, num=min(BATCH, config.num - first))
            shifted = (lambda i, t, first=first: on_text(first + i, t)) if on_text else None
            yield from text_generation.sample(
                self.module, self.tokenizer, batch, self.device, shifted, should_stop, first
            )
            if should_stop():
                return

    def beam(
        self,
        prompt: str = "",
        length: int = 80,
        width: int = 8,
        *,
        stop: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Sample:
        """The likeliest continuation a beam of ``width`` finds: safe, often repetitive text."""
        if length < 1:
            raise UsageError(f"length must be at least 1, got {length}")
        return text_generation.beam(
            self.module, self.tokenizer, prompt, width, length, stop, self.device, should_stop
        )

    def engine(self) -> Engine:
        """A generation engine of this model, for callers that schedule sequences themselves
        (continuous batching in a server)."""
        return Engine(self.module, self.device)

    # ------------------------------------------------------------------ scores

    def score(self, text: str) -> Score:
        """How well the model predicts ``text``: nats per token, bits per character and
        perplexity. Long texts are scored as parallel streams, each from a zero state."""
        stream = Stream.of(self.tokenizer, text)
        with plan_workers(self.device, rows=64) as workers:
            return evaluate(self.module, stream, self.device, workers=workers)

    def score_file(self, path: PathLike) -> tuple[Score, int]:
        """The score of a UTF-8 text file of any size, read and tokenized as a stream, and how
        many of its tokens the model never saw (scored as ``<unk>``)."""
        with tempfile.TemporaryDirectory(prefix="chargen-eval-") as scratch:
            sources = expand_sources([os.fspath(path)])
            ids, unknown = encode_to_file(sources, self.tokenizer, Path(scratch) / "ids.bin")
            stream = Stream.of_ids(self.tokenizer, ids)
            with plan_workers(self.device, rows=64) as workers:
                score = evaluate(self.module, stream, self.device, workers=workers)
            del ids, stream  # unmapped before the folder goes
        return score, unknown

    def score_lines(self, lines: Sequence[str]) -> list[Score]:
        """The score of each line (or short text) on its own, each predicted from a line start."""
        return score_texts(self.module, self.tokenizer, list(lines), self.device)

    # ------------------------------------------------------------------ tunes

    def tunes(
        self,
        num: int = 1,
        *,
        meter: str | None = None,
        key: str | None = None,
        rhythm: str | None = None,
        style: str | None = None,
        bars: int | None = None,
        parts: int | None = None,
        prime: str = "",
        free: bool = False,
        temperature: float = TUNE_TEMPERATURE,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        length: int = TUNE_CAP,
        valid_only: bool = False,
        check: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
        on_done: Callable[[int], None] = lambda count: None,
    ) -> list[Tune]:
        """``num`` complete ABC tunes, numbered from 1, each ended by the model or cut at
        ``length`` tokens.

        Every tune has the ``meter``, ``key``, ``rhythm`` (reel, jig, ...: ``RHYTHMS``) and
        ``style`` (the tradition: irish, german, ...) asked for, and the header lines and
        music of ``prime``; ``bars`` and ``parts`` ask for a form (16 bars in 2 parts).
        A grammar keeps every tune valid as it is written; ``free`` turns it off (and the
        form with it). ``valid_only`` resamples tunes that fail the check; with it or
        ``check``, each tune carries its ``TuneCheck``. ``on_done`` is told how many tunes
        each step of the generation finished (resampled ones too), for a progress bar."""
        request = _TuneRequest(
            num,
            tune_request(
                prime,
                meter,
                key,
                rhythm=rhythm,
                style=style,
                bars=bars,
                parts=parts,
                free=free,
            ),
            temperature,
            top_k,
            top_p,
            seed,
            length,
            valid_only,
            check,
            should_stop,
            on_done,
        )
        return list(self.iter_tunes(request=request))

    def iter_tunes(self, num: int = 1, *, request: _TuneRequest | None = None, **options: Any):
        """The tunes ``tunes`` gives (``options`` as for it), made in batches of at most
        ``BATCH`` and given as each batch is done: memory stays bounded however many are asked
        for."""
        if not self.writes_tunes:
            raise UsageError(
                f"{self.name} is a text model, not a tune model; train one with --level abc "
                "on an ABC corpus (chargen corpus folk)"
            )
        request = request or _TuneRequest.of(num, **options)
        return self._tune_batches(request)

    def _tune_batches(self, request: _TuneRequest) -> Iterator[Tune]:
        for first in range(0, request.num, BATCH):
            yield from request.batch(self, first, min(BATCH, request.num - first))
            if request.should_stop():
                return


def is_valid(tune: Tune) -> bool:
    """Whether a tune passes ``abc check`` (with music21's parse where it is installed)."""
    return check_tune(tune.text, parse=music21_available()).valid


@dataclass
class _TuneRequest:
    """What ``Model.tunes`` was asked for, made one batch at a time."""

    num: int
    spec: TuneSpec
    temperature: float = TUNE_TEMPERATURE
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    length: int = TUNE_CAP
    valid_only: bool = False
    check: bool = False
    should_stop: Callable[[], bool] = lambda: False
    on_done: Callable[[int], None] = lambda count: None

    def __post_init__(self) -> None:
        SampleConfig(self.length, self.temperature, self.top_k, self.top_p, self.num).validate()

    @classmethod
    def of(cls, num: int, **options: Any) -> _TuneRequest:
        """A request from ``Model.tunes``'s keyword arguments."""
        asked = {name: options.pop(name) for name in _SPEC_OPTIONS if name in options}
        prime = asked.pop("prime", "")
        return cls(num, tune_request(prime, **asked), **options)

    def batch(self, model: Model, first: int, num: int) -> list[Tune]:
        """Tunes number ``first`` to ``first + num - 1`` (from 0) of the request."""
        config = SampleConfig(self.length, self.temperature, self.top_k, self.top_p, num, self.seed)

        def generate(config: SampleConfig, first: int) -> list[Tune]:
            return generate_tunes(
                model.module,
                model.tokenizer,
                config,
                self.spec,
                model.device,
                self.should_stop,
                first,
                self.on_done,
            )

        if self.valid_only:
            tunes = generate_valid_tunes(
                generate, config, is_valid, should_stop=self.should_stop, first=first
            )
        else:
            tunes = generate(config, first)
        tunes = numbered(tunes, first + 1)
        if self.valid_only or self.check:
            tunes = [
                replace(t, check=check_tune(t.text, first + i + 1)) for i, t in enumerate(tunes)
            ]
        return tunes


_SPEC_OPTIONS = ("prime", "meter", "key", "rhythm", "style", "bars", "parts", "free")
"""``Model.tunes``'s options that say what is asked of each tune (``tune_request``'s)."""


def load(
    run: PathLike,
    *,
    weights: str = "best",
    device: str = "cpu",
    checkpoint_dir: PathLike | None = None,
) -> Model:
    """A trained model by run name (looked up in ``checkpoint_dir``, else
    ``$CHARGEN_CHECKPOINTS``, else ``./checkpoints``) or by the path of its run directory.

    ``weights`` is ``best`` (the lowest validation loss) or ``last``; ``device`` is ``cpu``,
    ``cuda``, ``mps`` or ``auto``.
    """
    found = store.resolve_run(os.fspath(run), store.checkpoint_root(checkpoint_dir))
    torch_device = pick_device(device)
    module, tokenizer = store.load_model(found, weights, torch_device)
    loaded = store.weights_path(found, weights).stem  # "best" falls back to "last"
    return Model(found, module, tokenizer, torch_device, loaded)


def latest(checkpoint_dir: PathLike | None = None, **options: Any) -> Model:
    """The most recently updated run's model; ``options`` as for ``load``."""
    found = store.resolve_run(None, store.checkpoint_root(checkpoint_dir))
    return load(found.path, **options)


def list_runs(checkpoint_dir: PathLike | None = None) -> list[store.Run]:
    """The readable runs in the checkpoint directory, most recently updated first."""
    return store.list_runs(store.checkpoint_root(checkpoint_dir))


def identify(
    text: str,
    models: Sequence[PathLike | Model] | None = None,
    *,
    weights: str = "best",
    checkpoint_dir: PathLike | None = None,
) -> list[Ranked]:
    """Models ranked by how likely they find ``text``, best first, each with a confidence (the
    softmax of the models' log-likelihoods of the whole text). ``models`` are run names, run
    directories or loaded models; by default, every run in the checkpoint directory."""
    if models is None:
        models = [run.path for run in list_runs(checkpoint_dir)]
    loaded = [
        m if isinstance(m, Model) else load(m, weights=weights, checkpoint_dir=checkpoint_dir)
        for m in models
    ]
    if len(loaded) < 2:
        raise UsageError(f"identify compares at least two models; found {len(loaded)}")
    return rank_models(text, {m.name: (m.module, m.tokenizer) for m in loaded})


def train(
    corpus: PathLike | Sequence[PathLike] | None = None,
    name: str | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    checkpoint_dir: PathLike | None = None,
    on_step: Callable[[Trainer], None] | None = None,
    on_eval: Callable[[Trainer, Score | None], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: PhaseProgress | None = None,
    **options: Any,
) -> TrainingSummary:
    """Train a model on ``corpus`` (files, folders or glob patterns) as run ``name`` (default:
    the first file's name), or continue run ``name`` with ``resume``.

    ``options`` are the command line's options as keywords: ``time="2m"``, ``max_steps=500``,
    ``hidden=512``, ``level="word"``, ``cell="gru"``, ... (or the config fields they set).
    Without a limit (``max_steps``, ``epochs`` or ``time``) training runs 10 epochs. Without
    ``cell`` a new run takes its level's (``LEVEL_CELL``) where it trains on the compiled
    float32 window, else the LSTM; without ``ngram``, its level's n-gram order
    (``LEVEL_NGRAM``: 10 at the character level, 5 at bpe, none elsewhere). Without
    ``dropout`` (or with None) a new run takes it from its corpus's size, as ``--dropout`` does;
    without ``hidden``, 512 units, or 448 where a CPU trains in float32 on torch's recurrence
    (``default_width``); with ``tie_weights``, ``hidden`` and ``embedding`` are one width.
    ``on_step(trainer)`` and ``on_eval(trainer, score)`` report progress; ``should_stop()`` is
    asked between steps and ends the run with a resumable checkpoint.
    """
    training = start(
        corpus,
        name,
        resume=resume,
        force=force,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        **options,
    )
    return training.run_loop(on_step, on_eval, should_stop)


def start(
    corpus: PathLike | Sequence[PathLike] | None = None,
    name: str | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    checkpoint_dir: PathLike | None = None,
    progress: PhaseProgress | None = None,
    **options: Any,
) -> session.TrainingSession:
    """Everything ``train`` does before its loop (reading the corpus, building the model, making
    the run directory), as a session to inspect (``describe``, ``warnings``) and then
    ``run_loop``. Arguments as for ``train``."""
    if resume and force:
        raise UsageError("--resume and --force contradict each other; choose one")
    if corpus is None or isinstance(corpus, (str, os.PathLike)):
        sources = [] if corpus is None else [os.fspath(corpus)]
    else:
        sources = [os.fspath(c) for c in corpus]
    if name is None:
        if not sources:
            raise UsageError("missing CORPUS (or --name NAME --resume to continue a run)")
        name = session.default_run_name(sources[0])
    chosen_when_missing = (
        "cell",
        "dropout",
        "hidden",
        "hidden_size",
        "embedding",
        "embedding_dim",
        "lr",
        "decay_frac",
        "ngram",
    )
    for chosen in chosen_when_missing:  # None: chosen as when not given
        if chosen in options and options[chosen] is None:
            del options[chosen]
    model_fields, train_fields = split_options(options)
    model_config, train_config = ModelConfig(**model_fields), TrainConfig(**train_fields)
    if not train_config.has_limit:
        train_config.epochs = 10.0
    return session.start_training(
        sources,
        name,
        Path(store.checkpoint_root(checkpoint_dir)),
        model_config,
        train_config,
        resume=resume,
        force=force,
        given=model_fields | train_fields,
        progress=progress,
    )


__all__ = [
    "Model",
    "Ranked",
    "Sample",
    "Score",
    "TrainingSummary",
    "Tune",
    "TuneCheck",
    "identify",
    "latest",
    "load",
    "list_runs",
    "start",
    "train",
]
