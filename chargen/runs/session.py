"""A training run put together and driven: corpus, tokenizer, model, trainer and run directory.

``start_training`` is everything before the loop: read and split the corpus, build the tokenizer
(or take the saved one when resuming), build the model and the trainer, and make or reopen the run
directory. ``TrainingSession.run`` drives the loop, saving a checkpoint at every evaluation and at
the end, and takes distributed processes down together. Nothing here prints or draws: progress
goes to the callbacks the caller passes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import torch

from chargen.config import (
    LEVEL_CELL,
    LEVEL_EMBEDDING,
    LEVEL_NGRAM,
    LEVEL_TRAINING,
    ModelConfig,
    TrainConfig,
    corpus_dropout,
    default_width,
    option_name,
    to_dict,
)
from chargen.errors import CorpusError, UsageError
from chargen.metrics import Score
from chargen.model import window
from chargen.model.device import pick_device, set_threads, use_bf16
from chargen.model.ngram import NGram
from chargen.model.rnn import LSTMS, RNNLanguageModel
from chargen.runs import store
from chargen.text import corpus as corpus_module
from chargen.text.batches import Batches, Stream, piece_starts
from chargen.text.tokenizer import LEVEL_SPECS, PIECE_END, Tokenizer
from chargen.training.distributed import World, barrier, init_from_env, shutdown
from chargen.training.trainer import Trainer, TrainState

RESUME_OVERRIDABLE = (
    "lr",
    "max_steps",
    "epochs",
    "time_limit",
    "eval_every",
    "eval_tokens",
    "patience",
    "device",
    "precision",
    "threads",
)
"""Training options a resumed run may change; the rest define the run and stay as saved."""

_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}

OnStep = Callable[[Trainer], None]
OnEval = Callable[[Trainer, Score | None], None]


@dataclass
class TrainingSummary:
    """How a training session ended: what ``chargen train --json`` prints."""

    name: str
    path: str
    status: str  # "finished" or "interrupted"
    stop_reason: str | None  # max_steps, epochs, time, patience or interrupted
    steps: int
    tokens_seen: int
    best_val_loss: float | None
    best_val_bpc: float | None
    tokens_per_sec: float | None  # over the whole session, evaluations and saving included
    step_tokens_per_sec: float | None  # the training steps alone
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainingSession:
    run: store.Run | None  # None in processes other than rank 0
    trainer: Trainer
    tokenizer: Tokenizer
    resumed_from_step: int
    warnings: list[str]  # things the user should know before training starts
    lock: IO | None  # an exclusive lock on the run directory, held while this stays open
    corpus: corpus_module.TokenArrays
    world: World  # this process among the data-parallel ones (one process: rank 0 of 1)

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints (and its caller should report)."""
        return self.world.is_main

    def describe(self) -> str:
        """One line on what is about to train: model, data, batch and hardware."""
        trainer, config = self.trainer, self.trainer.model.config
        verb = (
            f"Resuming {self.run.name} at step {self.resumed_from_step}"
            if self.resumed_from_step
            else f"Training {self.run.name}"
        )
        processes = f" x {self.world.size} processes" if self.world.active else ""
        threads = trainer.workers.count
        return (
            f"{verb}: {config.cell} {config.num_layers}x{config.hidden_size}"
            f"{f' (dropout {config.dropout:g})' if config.dropout else ''}, "
            f"{trainer.model.num_parameters():,} parameters, {self.tokenizer.vocab_size} tokens "
            f"({trainer.config.level}), {len(self.corpus.train):,} training tokens, "
            f"batch {trainer.batches.batch_size * self.world.size}x{trainer.config.seq_len}, "
            f"on {trainer.device.type}{processes}{' (bf16)' if trainer.bf16 else ''}"
            f"{f', {threads} worker threads' if threads > 1 else ''}"
        )

    def run_loop(
        self,
        on_step: OnStep | None = None,
        on_eval: OnEval | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> TrainingSummary:
        """Train until a limit, patience or ``should_stop``; save at every evaluation and at the
        end (rank 0 only), then close the workers and the process group. Returns how it ended."""
        trainer = self.trainer
        started, tokens_before = time.perf_counter(), trainer.state.tokens_seen
        curve = _LossCurve(self) if self.is_main else None  # rank 0 writes the run's files

        def stepped(t: Trainer) -> None:
            if curve is not None:
                curve.stepped()
            if on_step:
                on_step(t)

        def evaluated(t: Trainer, result: Score | None) -> None:
            if curve is not None:  # rank 0
                save_checkpoint(self, result, status="training", train_loss=curve.mean)
                curve.evaluated()
            if on_eval:
                on_eval(t, result)

        try:
            state = trainer.run(stepped, evaluated, should_stop)
            status = "interrupted" if state.stop_reason == "interrupted" else "finished"
            if self.is_main:
                save_checkpoint(self, None, status=status)
            # Tear the process group down together: a process that leaves while rank 0 still
            # saves can die in gloo's teardown ("terminate called without an active exception").
            barrier(self.world)
        finally:
            self.close()
        return self._summary(state, status, time.perf_counter() - started, tokens_before)

    def close(self) -> None:
        """Stop the worker threads, leave the process group and release the run's lock."""
        self.trainer.close()
        shutdown(self.world)
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def _summary(self, state: TrainState, status: str, seconds: float, tokens_before: int):
        tokens = state.tokens_seen - tokens_before
        step_seconds = self.trainer.step_seconds
        return TrainingSummary(
            name=self.run.name if self.run else "",
            path=str(self.run.path) if self.run else "",
            status=status,
            stop_reason=state.stop_reason,
            steps=state.step,
            tokens_seen=state.tokens_seen,
            best_val_loss=state.best_val_loss,
            best_val_bpc=state.best_val_bpc,
            tokens_per_sec=tokens / seconds if seconds > 0 else None,
            step_tokens_per_sec=tokens / step_seconds if step_seconds > 0 else None,
            seconds=seconds,
        )


def default_run_name(corpus: str | Path) -> str:
    """A valid run name from a corpus file name: ``my corpus.txt`` gives ``my-corpus``."""
    stem = re.sub(r"[^\w.-]+", "-", Path(corpus).stem).strip(".-") or "run"
    return store.check_name(stem[:100])


def start_training(
    corpus: list[str] | None,
    name: str,
    root: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    resume: bool = False,
    force: bool = False,
    given: dict[str, Any] | None = None,
    progress: corpus_module.PhaseProgress | None = None,
) -> TrainingSession:
    """A trainer ready to run, with its run directory; on ``resume``, restored to where it stopped.

    ``given`` holds the config fields the user set explicitly. When resuming, those in
    ``RESUME_OVERRIDABLE`` replace the saved values; any other must equal the saved value.
    """
    store.check_name(name)
    run = None
    if resume:
        run = store.resolve_run(name, root, shipped=False)
        model_config, train_config, corpus = _resumed_configs(run, given or {}, corpus)
    elif not corpus:
        raise UsageError("missing CORPUS: the text to train on")
    train_config.validate()
    if run is None:  # before the corpus is read, so a bad combination fails at once
        model_config, train_config = _new_run_configs(model_config, train_config, given or {})
    model_config.validate()

    device, world = _hardware(train_config)
    saved_tokenizer = store.load_tokenizer(run) if run is not None else None
    tokenizer, arrays = _tokenize(corpus, saved_tokenizer, train_config, world, progress)
    if run is None:
        chosen = (
            {} if "dropout" in (given or {}) else {"dropout": corpus_dropout(len(arrays.train))}
        )
        model_config = replace(model_config, vocab_size=tokenizer.vocab_size, **chosen)
    trainer, warnings = _make_trainer(
        corpus, tokenizer, arrays, model_config, train_config, device, world
    )
    try:
        run, lock = _open_run(
            run, root, name, corpus, tokenizer, arrays, trainer, world, warnings, force
        )
        if world.active:
            # Different dropout masks in each process; weights were broadcast from rank 0.
            torch.manual_seed(train_config.seed + 7919 * world.rank + trainer.state.step)
        barrier(world)
        return TrainingSession(
            run, trainer, tokenizer, trainer.state.step, warnings, lock, arrays, world
        )
    except BaseException:
        trainer.close()  # its worker threads; a session closes them after training
        raise


def _new_run_configs(
    model_config: ModelConfig, train_config: TrainConfig, given: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """A new run's settings where none was given: the level's own, and the hardware's. The
    vocabulary cap in use goes into run.json (older versions read a saved null as damage)."""
    level = LEVEL_TRAINING.get(train_config.level, {})
    chosen = {field: value for field, value in level.items() if field not in given}
    train_config = replace(train_config, vocab_size=train_config.vocabulary_cap, **chosen)
    device = pick_device(train_config.device)
    model_config = _widths(model_config, given, device, train_config)
    model_config = _cell(model_config, given, device, train_config)
    if "ngram" not in given:
        model_config = replace(model_config, ngram=LEVEL_NGRAM.get(train_config.level, 0))
    return model_config, train_config


def _cpu_float32(device: torch.device, train: TrainConfig) -> bool:
    """Whether training runs on a CPU in float32 (no bf16 products, or --precision fp32)."""
    return device.type == "cpu" and not use_bf16(device, train.precision)


def _cell(
    config: ModelConfig, given: dict[str, Any], device: torch.device, train: TrainConfig
) -> ModelConfig:
    """A new run's cell where --cell is not given: the level's (``LEVEL_CELL``) where the
    layer-normalised LSTM trains on the compiled float32 window, else the LSTM."""
    if "cell" in given:
        return config
    compiled = (
        _cpu_float32(device, train)
        and config.hidden_size % window.UNITS == 0
        and window.kernel() is not None
    )
    return replace(config, cell=LEVEL_CELL.get(train.level, "lstm") if compiled else "lstm")


def _widths(
    config: ModelConfig, given: dict[str, Any], device: torch.device, train: TrainConfig
) -> ModelConfig:
    """A new run's widths where no option set them: the hidden size is ``default_width`` of
    the hardware and the cell, the embedding the level's (``LEVEL_EMBEDDING``); tied weights
    need one width for both, the one given if either is. Both LSTMs, plain and
    layer-normalised, train on the compiled window where it builds."""
    compiled = config.cell in LSTMS and window.kernel() is not None
    torch_float32 = _cpu_float32(device, train) and not compiled
    width = default_width(torch_float32)
    if not config.tie_weights:
        if "embedding_dim" not in given:
            config = replace(config, embedding_dim=LEVEL_EMBEDDING[train.level])
        return config if "hidden_size" in given else replace(config, hidden_size=width)
    if "hidden_size" in given:
        width = config.hidden_size
    elif "embedding_dim" in given:
        width = config.embedding_dim
    hidden = config.hidden_size if "hidden_size" in given else width
    embedding = config.embedding_dim if "embedding_dim" in given else width
    return replace(config, hidden_size=hidden, embedding_dim=embedding)


def _resumed_configs(
    run: store.Run, given: dict[str, Any], corpus: list[str] | None
) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """The saved configs with the options a resume may change, and the corpus to resume on."""
    model_config, saved = run.model_config, run.train_config
    changed = [
        field
        for field, value in given.items()
        if field not in RESUME_OVERRIDABLE
        and value
        != (
            saved.vocabulary_cap  # the option is the cap; the model's field is the vocabulary
            if field == "vocab_size"
            else getattr(model_config if field in _MODEL_FIELDS else saved, field)
        )
    ]
    if changed:
        options = ", ".join(option_name(field) for field in changed)
        raise UsageError(f"{options}: cannot change on --resume; start a new run with --name")
    train_config = replace(saved, **{k: v for k, v in given.items() if k in RESUME_OVERRIDABLE})
    _check_room_left(run, train_config)
    if corpus:
        return model_config, train_config, list(corpus)
    saved = run.info.get("corpus")
    saved = [saved] if isinstance(saved, str) else saved
    if not saved:
        raise UsageError("give the corpus to resume on: chargen train CORPUS --name NAME --resume")
    _check_saved_corpus(run, saved)
    return model_config, train_config, saved


def _check_room_left(run: store.Run, config: TrainConfig) -> None:
    """``--time`` and ``--max-steps`` count the whole run, the time before a resume included:
    a resume that has already reached them would train nothing. Say so instead."""
    state = run.info.get("state", {})
    elapsed, step = state.get("elapsed", 0), state.get("step", 0)
    if config.time_limit is not None and elapsed >= config.time_limit:
        raise UsageError(
            f"{run.name} has trained {elapsed:.0f}s already and --time counts all of it; "
            f"give a longer one to train more, e.g. --time {elapsed + config.time_limit:.0f}s"
        )
    if config.max_steps is not None and step >= config.max_steps:
        raise UsageError(
            f"{run.name} is at step {step} already and --max-steps counts every step; "
            f"give a larger one to train more, e.g. --max-steps {step + config.max_steps}"
        )


def _check_saved_corpus(run: store.Run, saved: list[str]) -> None:
    """The corpus named in ``run.json`` is read only if it is the one the run trained on: the
    same size, then the same content hash. A copied or tampered ``run.json`` cannot make
    ``--resume`` read (and cache) another file."""
    again = f"give the corpus: chargen train CORPUS --name {run.name} --resume"
    try:
        sources = corpus_module.expand_sources(saved)
    except CorpusError as exc:
        raise CorpusError(f"{exc} (the corpus this run trained on); {again}") from None
    size = sum(path.stat().st_size for path in sources)
    expected_size, expected_hash = run.info.get("corpus_bytes"), run.info.get("corpus_sha256")
    if expected_hash is None:
        raise CorpusError(f"{run.name} does not record what its corpus held; {again}")
    if expected_size is not None and size != expected_size:
        raise CorpusError(f"{' '.join(saved)} is not the corpus {run.name} trained on; {again}")
    if corpus_module.corpus_digest(sources)[0] != expected_hash:
        raise CorpusError(f"{' '.join(saved)} has changed since {run.name} trained on it; {again}")


def _hardware(config: TrainConfig) -> tuple[torch.device, World]:
    """The device to train on and this process's place among data-parallel processes."""
    device = pick_device(config.device)
    world = init_from_env(device.type)
    if world.active and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    return device, world


def _tokenize(corpus, tokenizer, config: TrainConfig, world: World, progress):
    """The tokenizer and token arrays of the corpus. One process tokenizes (and fills the
    cache) while the others wait, then they read it back."""
    sources = corpus_module.expand_sources(list(corpus))
    # Separate pieces (ABC tunes) go whole to one side: the cut moves to the end of a piece.
    boundary = PIECE_END if LEVEL_SPECS[config.level].separate else None
    for turn in (True, False):
        if world.is_main == turn:
            tokenizer, arrays = corpus_module.prepare(
                sources,
                tokenizer,
                config.level,
                config.vocabulary_cap,
                config.min_freq,
                config.val_frac,
                boundary=boundary,
                progress=progress if world.is_main else None,
            )
        barrier(world)
    return tokenizer, arrays


def _make_trainer(corpus, tokenizer, arrays, model_config, train_config, device, world):
    """The trainer over the corpus's windows, and warnings about a short corpus."""
    if len(arrays.train) < train_config.seq_len + 1:
        named = " ".join(str(s) for s in corpus)
        raise CorpusError(
            f"{named}: the training part has {len(arrays.train)} token(s), fewer than one window "
            f"({train_config.seq_len} + 1); give a longer corpus or a smaller --window"
        )
    batches = Batches(
        arrays.train,
        train_config.batch_size,
        train_config.seq_len,
        train_config.seed,
        rank=world.rank,
        world=world.size,
        starts=piece_starts(tokenizer, arrays.train),  # separate pieces: each from a fresh state
        reset_every=train_config.reset_every,
    )
    val = Stream.of_ids(tokenizer, arrays.val, limit=train_config.eval_tokens)
    warnings = list(arrays.notes)
    if batches.batch_size * world.size < train_config.batch_size:
        warnings.append(
            f"the corpus is short: training {batches.batch_size} parallel streams instead of "
            f"--batch-size {train_config.batch_size}"
        )
    if len(val) < 2:
        warnings.append(
            "the validation split is empty, so no validation loss; the best weights are the last"
        )
    subwords = LEVEL_SPECS[train_config.level].subwords  # a sub-word level keeps every character
    if subwords and tokenizer.vocab_size > train_config.vocabulary_cap:
        warnings.append(
            f"--vocab-size {train_config.vocabulary_cap} is fewer than the corpus's distinct "
            f"characters and <unk>: the vocabulary holds those {tokenizer.vocab_size} tokens and "
            "no merges, as --level char would"
        )
    model = RNNLanguageModel(model_config)
    began = time.perf_counter()
    if model_config.ngram:
        model.counts = NGram.build(arrays.train, model_config.vocab_size, model_config.ngram)
    bf16 = use_bf16(device, train_config.precision)
    trainer = Trainer(model, batches, val, train_config, device, bf16, world=world)
    # Counting is part of a new run's time: --time 120s is two minutes of counting and training
    # (a resumed run restores its own time after this).
    trainer.state.elapsed += time.perf_counter() - began
    return trainer, warnings


def _open_run(run, root, name, corpus, tokenizer, arrays, trainer, world, warnings, force):
    """The run directory (made new, or reopened and the trainer restored) and its lock; rank 0
    alone touches the directory, other processes get (None, None) and restore from it."""
    digest = arrays.digest
    if run is not None:  # resuming
        lock = store.lock_run(run.path) if world.is_main else None
        store.restore_trainer(run, trainer)
        if world.is_main and trainer.model.counts is not None:
            store.save_counts(run, trainer.model.counts)  # from the corpus as it is now
        if run.info.get("corpus_sha256") not in (None, digest):
            named = " ".join(str(s) for s in corpus)
            warnings.append(
                f"{named} differs from the corpus this run started on; validation losses "
                "before and after are not comparable"
            )
        if world.is_main:
            store.update_info(run, train=to_dict(trainer.config), **_corpus_info(corpus, arrays))
            return run, lock
        return None, None
    if not world.is_main:
        return None, None
    model = trainer.model
    run = store.create_run(
        root,
        name,
        tokenizer,
        model.config,
        trainer.config,
        _corpus_info(corpus, arrays)["corpus"],
        model.num_parameters(),
        force=force,
        counts=model.counts,
    )
    lock = store.lock_run(run.path)
    store.update_info(run, **_corpus_info(corpus, arrays))
    return run, lock


def _corpus_info(corpus: list[str], arrays) -> dict[str, Any]:
    """What ``run.json`` says of the corpus: its sources as absolute paths (so ``--resume``
    finds them from anywhere), their size and content hash (so it reads nothing else)."""
    sources = corpus_module.expand_sources(list(corpus))
    return {
        "corpus": [os.path.abspath(c) for c in corpus],
        "corpus_bytes": sum(path.stat().st_size for path in sources),
        "corpus_sha256": arrays.digest,
        "corpus_chars": arrays.train_chars + arrays.val_chars,
    }


class _LossCurve:
    """Points of the training loss between evaluations: every tenth of a timed run, the mean
    loss of the steps since the last point goes to metrics.jsonl (without validation figures),
    so that a short run has a curve to plot without paying for more evaluations."""

    def __init__(self, session: TrainingSession):
        self.session = session
        self.limit = session.trainer.config.time_limit
        self.last = session.trainer.state.elapsed
        self.total, self.steps = 0.0, 0

    def stepped(self) -> None:
        state = self.session.trainer.state
        self.total, self.steps = self.total + state.loss, self.steps + 1
        if self.limit and state.elapsed - self.last >= self.limit / 10:
            store.append_metrics(self.session.run, _metrics_line(self.session.trainer, self.mean))
            self.evaluated()

    def evaluated(self) -> None:
        self.last, self.total, self.steps = self.session.trainer.state.elapsed, 0.0, 0

    @property
    def mean(self) -> float | None:
        return self.total / self.steps if self.steps else None


def _metrics_line(trainer: Trainer, train_loss: float) -> dict[str, Any]:
    state = trainer.state
    return {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "elapsed": round(state.elapsed, 3),
        "train_loss": train_loss,
        "lr": trainer.learning_rate(),
    }


def save_checkpoint(
    session: TrainingSession, result: Score | None, status: str, train_loss: float | None = None
) -> None:
    """Save best weights if the last evaluation improved, then the resumable last state.
    ``train_loss`` is the mean over the steps since the last point (else the last step's)."""
    trainer, run = session.trainer, session.run
    if result is not None:
        store.append_metrics(
            run,
            _metrics_line(trainer, trainer.state.loss if train_loss is None else train_loss)
            | {
                "val_loss": result.nats_per_token,
                "val_bpc": result.bits_per_char,
                "val_tokens": result.tokens,
            },
        )
        if trainer.improved:
            store.save_best(run, trainer)
    store.save_last(run, trainer, status)
