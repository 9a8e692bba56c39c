"""Put a training run together: corpus, tokenizer, model, trainer and run directory.

``start_training`` is what ``chargen train`` does before the loop: read and split the corpus,
build the tokenizer (or take the saved one when resuming), build the model and trainer, and make
or reopen the run directory. ``save_checkpoint`` is what it does at every evaluation and at the end.
Nothing here draws or prints.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import torch

from chargen import checkpoint
from chargen import corpus as corpus_module
from chargen.abc_notation import TUNE_END
from chargen.config import ModelConfig, TrainConfig, option_name, to_dict
from chargen.data import Batches, Stream, piece_starts
from chargen.device import pick_device, set_threads, use_bf16
from chargen.distributed import World, barrier, init_from_env
from chargen.errors import CorpusError, UsageError
from chargen.model import RNNLanguageModel
from chargen.tokenizer import Tokenizer
from chargen.train import EvalResult, Trainer

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


@dataclass
class TrainingSession:
    run: checkpoint.Run | None  # None in processes other than rank 0
    trainer: Trainer
    tokenizer: Tokenizer
    resumed_from_step: int
    warnings: list[str]  # things the user should know before training starts
    lock: IO | None  # an exclusive lock on the run directory, held while this stays open
    corpus: corpus_module.TokenArrays
    world: World  # this process among the data-parallel ones (one process: rank 0 of 1)


def default_run_name(corpus: str | Path) -> str:
    """A valid run name from a corpus file name: ``my corpus.txt`` gives ``my-corpus``."""
    stem = re.sub(r"[^\w.-]+", "-", Path(corpus).stem).strip(".-") or "run"
    return checkpoint.check_name(stem[:100])


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
    checkpoint.check_name(name)
    given = given or {}
    if resume:
        run = checkpoint.resolve_run(name, root)
        model_config = run.model_config
        saved = run.train_config
        changed = [
            field
            for field, value in given.items()
            if field not in RESUME_OVERRIDABLE
            and value != getattr(model_config if field in _MODEL_FIELDS else saved, field)
        ]
        if changed:
            options = ", ".join(option_name(field) for field in changed)
            raise UsageError(f"{options}: cannot change on --resume; start a new run with --name")
        train_config = replace(saved, **{k: v for k, v in given.items() if k in RESUME_OVERRIDABLE})
        saved_corpus = run.info.get("corpus")
        corpus = corpus or ([saved_corpus] if isinstance(saved_corpus, str) else saved_corpus)
        if not corpus:
            raise UsageError("give the corpus to resume on")
    elif not corpus:
        raise UsageError("missing CORPUS: the text to train on")
    train_config.validate()
    model_config.validate()

    sources = corpus_module.expand_sources(list(corpus))
    device = pick_device(train_config.device)
    world = init_from_env(device.type)
    if world.active and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    bf16 = use_bf16(device, train_config.precision)
    set_threads(train_config.threads)
    torch.manual_seed(train_config.seed)

    saved_tokenizer = checkpoint.load_tokenizer(run) if resume else None
    # One process tokenizes (and fills the cache) while the others wait, then read it back.
    for turn in (True, False):
        if world.is_main == turn:
            tokenizer, arrays = corpus_module.prepare(
                sources,
                saved_tokenizer,
                train_config.level,
                train_config.vocab_size,
                train_config.min_freq,
                train_config.val_frac,
                # ABC tunes go whole to one side: the cut moves to the blank line ending a tune.
                boundary=TUNE_END if train_config.level == "abc" else None,
                progress=progress if world.is_main else None,
            )
        barrier(world)
    if not resume:
        model_config = replace(model_config, vocab_size=tokenizer.vocab_size)
    named = " ".join(str(s) for s in corpus)
    if len(arrays.train) < train_config.seq_len + 1:
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
        starts=piece_starts(tokenizer, arrays.train),  # ABC: every tune from a fresh state
        reset_every=train_config.reset_every,
    )
    val = Stream.of_ids(tokenizer, arrays.val, limit=train_config.eval_tokens)
    warnings = []
    if batches.batch_size * world.size < train_config.batch_size:
        warnings.append(
            f"the corpus is short: training {batches.batch_size} parallel streams instead of "
            f"--batch-size {train_config.batch_size}"
        )
    if len(val) < 2:
        warnings.append(
            "the validation split is empty, so no validation loss; the best weights are the last"
        )
    model = RNNLanguageModel(model_config)
    trainer = Trainer(model, batches, val, train_config, device, bf16, world=world)
    try:
        digest = arrays.digest
        lock = None
        if resume:
            lock = checkpoint.lock_run(run.path) if world.is_main else None
            checkpoint.restore_trainer(run, trainer)
            if run.info.get("corpus_sha256") not in (None, digest):
                warnings.append(
                    f"{named} differs from the corpus this run started on; validation losses "
                    "before and after are not comparable"
                )
            if world.is_main:
                checkpoint.update_info(
                    run, train=to_dict(train_config), corpus=list(corpus), corpus_sha256=digest
                )
        elif world.is_main:
            run = checkpoint.create_run(
                root,
                name,
                tokenizer,
                model_config,
                train_config,
                list(corpus),
                model.num_parameters(),
                force=force,
            )
            lock = checkpoint.lock_run(run.path)
            checkpoint.update_info(
                run, corpus_sha256=digest, corpus_chars=arrays.train_chars + arrays.val_chars
            )
        else:
            run = None  # only rank 0 writes the run directory
        if world.active:
            # Different dropout masks in each process; weights were broadcast from rank 0.
            torch.manual_seed(train_config.seed + 7919 * world.rank + trainer.state.step)
        barrier(world)
        return TrainingSession(
            run, trainer, tokenizer, trainer.state.step, warnings, lock, arrays, world
        )
    except BaseException:
        trainer.close()  # its worker threads; the CLI closes it after training
        raise


def save_checkpoint(session: TrainingSession, result: EvalResult | None, status: str) -> None:
    """Save best weights if the last evaluation improved, then the resumable last state."""
    trainer, run = session.trainer, session.run
    if result is not None:
        state = trainer.state
        checkpoint.append_metrics(
            run,
            {
                "step": state.step,
                "tokens_seen": state.tokens_seen,
                "elapsed": round(state.elapsed, 3),
                "train_loss": state.loss,
                "val_loss": result.nats_per_token,
                "val_bpc": result.bits_per_char,
                "val_tokens": result.tokens,
                "lr": trainer.learning_rate(),
            },
        )
        if trainer.improved:
            checkpoint.save_best(run, trainer)
    checkpoint.save_last(run, trainer, status)


def load_for_inference(spec: str | None, root: Path, weights: str, device_name: str = "auto"):
    """The run, model, tokenizer and device for sampling or evaluation, and which weights
    were loaded (``best`` falls back to ``last`` before the first evaluation)."""
    run = checkpoint.resolve_run(spec, root)
    device = pick_device(device_name)
    model, tokenizer = checkpoint.load_model(run, weights, device)
    loaded = checkpoint.weights_path(run, weights).stem  # "best" or "last"
    return run, model, tokenizer, device, loaded
