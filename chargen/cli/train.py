"""``chargen train``: options in, a training session run with a progress bar, a summary out."""

from __future__ import annotations

import glob
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import click

from chargen.cli.base import (
    CONTEXT,
    CliError,
    Duration,
    checkpoint_dir,
    checkpoint_dir_option,
    device_option,
    dir_flag,
    echo_json,
    fmt,
    given,
    stop_on_interrupt,
)
from chargen.config import (
    CELLS,
    FLOAT32_WIDTH,
    LEVEL_NGRAM,
    LEVEL_TRAINING,
    LEVELS,
    MAX_NGRAM,
    SCHEDULES,
    WIDTH,
    ModelConfig,
    TrainConfig,
)

_D = TrainConfig()
_M = ModelConfig()
_BPE = LEVEL_TRAINING["bpe"]


@click.command(context_settings=CONTEXT)
@click.argument("corpus", nargs=-1, metavar="[CORPUS]...")
@click.option("--name", help="Run name (default: the corpus file name without extension).")
@click.option("--resume", is_flag=True, help="Continue the run NAME where it stopped.")
@click.option("--force", is_flag=True, help="Replace an existing run of the same name.")
@click.option(
    "--level",
    type=click.Choice(LEVELS),
    default=_D.level,
    show_default=True,
    help="Tokenizer level (bpe: learned sub-word pieces of one or more characters).",
)
@click.option(
    "--vocab-size",
    type=click.IntRange(2),
    help="Word, abc and bpe levels: vocabulary cap, <unk> included (default: 10,000; 512 at "
    "the bpe level).",
)
@click.option(
    "--min-freq",
    type=click.IntRange(1),
    default=_D.min_freq,
    show_default=True,
    help="Word level: drop tokens seen fewer times (bpe: pairs merged only this often).",
)
@click.option(
    "--cell",
    type=click.Choice(CELLS),
    default=None,
    help=f"Recurrent cell (default: {_M.cell}; at the bpe level lnlstm, a layer-normalised "
    "LSTM that learns more a step, where a CPU trains it in float32 on the compiled kernel).",
)
@click.option("--layers", type=click.IntRange(1), default=_M.num_layers, show_default=True)
@click.option(
    "--hidden",
    type=click.IntRange(1),
    default=None,
    help=f"Hidden state size (default: {WIDTH}, or {FLOAT32_WIDTH} where a CPU trains in "
    "float32 without the compiled LSTM kernel: a GRU or RNN, or no C compiler).",
)
@click.option(
    "--embedding",
    type=click.IntRange(1),
    default=None,
    help=f"Token embedding size (default: {_M.embedding_dim}, 256 at the bpe level; with "
    "--tie-weights, the width).",
)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Dropout on the input and output of the cells (default: 0.5 for a corpus under "
    "100,000 training tokens, falling to none from 400,000).",
)
@click.option(
    "--tie-weights",
    is_flag=True,
    help="Share input and output embeddings: --hidden and --embedding become one width "
    "(whichever is given, else the default --hidden).",
)
@click.option(
    "--ngram",
    type=click.IntRange(0, MAX_NGRAM),
    default=None,
    help=f"Mix in an n-gram model of this order, counted from the training text; how it is "
    f"mixed is fitted on the validation text (default: {LEVEL_NGRAM['char']} at the char level, "
    f"{LEVEL_NGRAM['bpe']} at bpe, else 0: none).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=_D.batch_size,
    show_default=True,
    help="Parallel streams per step.",
)
@click.option(
    "--window",
    type=click.IntRange(1),
    default=_D.seq_len,
    show_default=True,
    help="BPTT window in tokens.",
)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help=f"Peak learning rate (default: {_D.lr:g}, {_BPE['lr']:g} at the bpe level).",
)
@click.option(
    "--weight-decay", type=click.FloatRange(0), default=_D.weight_decay, show_default=True
)
@click.option(
    "--beta1",
    type=click.FloatRange(0, 1, max_open=True),
    default=_D.beta1,
    show_default=True,
    help="AdamW's decay of its gradient average (momentum).",
)
@click.option(
    "--beta2",
    type=click.FloatRange(0, 1, max_open=True),
    default=_D.beta2,
    show_default=True,
    help="AdamW's decay of its squared-gradient average.",
)
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=_D.warmup_steps,
    show_default=True,
    help="Warm-up steps.",
)
@click.option(
    "--reset-every",
    type=click.IntRange(0),
    default=_D.reset_every,
    show_default=True,
    help="Restart each stream from a zero state every N windows, staggered, so the model "
    "learns to begin anywhere (0: never; ABC tunes always start from zero).",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=_D.schedule,
    show_default=True,
    help="Learning rate after the warm-up: wsd holds the peak, then decays linearly over the "
    "last --decay-frac of the run; cosine decays from the start.",
)
@click.option(
    "--decay-frac",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="wsd: the last part of the run (by --time, --max-steps or --epochs) that decays "
    f"(default: {_D.decay_frac:g}, {_BPE['decay_frac']:g} at the bpe level).",
)
@click.option(
    "--min-lr-frac",
    type=click.FloatRange(0, 1),
    default=_D.min_lr_frac,
    show_default=True,
    help="Where the decay ends, as a fraction of the peak learning rate.",
)
@click.option(
    "--clip",
    type=click.FloatRange(0, min_open=True),
    default=_D.clip,
    show_default=True,
    help="Gradient-norm clipping threshold.",
)
@click.option(
    "--val-frac",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=_D.val_frac,
    show_default=True,
    help="End of the corpus held out.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(1),
    default=_D.eval_every,
    show_default=True,
    help="Steps between evaluations and checkpoints.",
)
@click.option(
    "--eval-tokens",
    type=click.IntRange(2),
    default=_D.eval_tokens,
    show_default=True,
    help="Validation tokens scored per evaluation (the whole split when it is smaller).",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=_D.patience,
    show_default=True,
    help="Stop after this many evaluations without improvement (0: never).",
)
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many steps.")
@click.option(
    "--epochs",
    type=click.FloatRange(0, min_open=True),
    help="Stop after this many passes over the corpus.",
)
@click.option(
    "--time", type=Duration(), help="Stop after this long in all (resumes count): 90s, 10m, 1h."
)
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@device_option("auto")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 autocast where the hardware has it.",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="CPU threads (default: one per core); each takes its own group of streams.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout at the end.")
@checkpoint_dir_option
@click.pass_context
def train(ctx: click.Context, corpus, name, resume, force, quiet, as_json, **options):
    """Train a model on CORPUS: UTF-8 text files, folders of them, or glob patterns.

    Without --max-steps, --epochs or --time, training runs 10 epochs. Ctrl-C stops
    cleanly and saves a checkpoint that --resume continues. Under torchrun, each
    process trains a share of the batch.

    \b
    Examples:
      chargen train corpora/harbour.txt --time 2m
      chargen train shakespeare.txt --name bard --cell gru --layers 2 --hidden 256
      chargen train novel.txt --level word --vocab-size 20000 --epochs 5
      chargen train --name bard --resume --time 20m
      chargen train books/ 'more/*.txt' --name library
      torchrun --standalone --nproc-per-node 2 -m chargen train big.txt --batch-size 64
    """
    from chargen import api
    from chargen.cli.console import ReadingProgress, console
    from chargen.training.distributed import finish

    for spec in corpus:
        if not Path(spec).exists() and not glob.has_magic(spec):
            raise CliError(f"{spec}: no such file or folder", 2)
    if resume:  # a resumed run keeps its settings; only the options given may change them
        options = {key: value for key, value in options.items() if given(ctx, key)}
    reading = ReadingProgress(corpus) if not quiet and console.is_terminal else None
    # a corpus too small for bars still takes seconds to read and a model to build: say so
    quiet_reading = reading is None or reading.progress.disable
    waiting = console.status("Reading the corpus, building the model...")
    try:
        with waiting if not quiet and quiet_reading and console.is_terminal else nullcontext():
            session = api.start(
                list(corpus),
                name,
                resume=resume,
                force=force,
                checkpoint_dir=checkpoint_dir(ctx),
                progress=reading.advance if reading else None,
                **options,
            )
    finally:
        if reading:
            reading.close()
    log = not quiet and session.is_main  # under torchrun, only rank 0 writes, logs and draws
    if session.is_main:
        for warning in session.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
    if log:
        console.print(session.describe())
    summary = _run_with_progress(session, log)
    if session.is_main:
        _report(ctx, session, summary, log, as_json)
    finish(session.world)


def _report(ctx, session, summary, log: bool, as_json: bool) -> None:
    from chargen.cli.console import console

    if summary.status == "interrupted":  # said even with --quiet: the user asked for this stop
        console.print(
            f"Interrupted at step {summary.steps}; saved a resumable checkpoint in "
            f"{summary.path}\nContinue with: chargen train --name {summary.name} --resume"
            f"{dir_flag(ctx)}"
        )
    elif log:
        console.print(
            f"Done ({summary.stop_reason}) at step {summary.steps} in {summary.seconds:.0f}s "
            f"({session.trainer.state.elapsed:.0f}s of training in all): best val "
            f"{fmt(summary.best_val_loss)} nats/token, {fmt(summary.best_val_bpc, 3)} "
            f"bits/char. Saved in {summary.path}"
        )
    if as_json:
        echo_json(summary.as_dict())


def _run_with_progress(session, log: bool):
    """The session's loop, drawing a progress bar and a line per evaluation when ``log``."""
    from chargen.cli.console import console, training_progress

    trainer = session.trainer
    started, tokens_before = time.perf_counter(), trainer.state.tokens_seen
    progress = training_progress(enabled=log and console.is_terminal)
    task = progress.add_task(
        session.run.name if session.run else "",
        total=1000,
        step=trainer.state.step,
        loss="-",
        val="-",
        speed="-",
    )

    def on_step(t):
        if t.state.step % 10 == 0:
            speed = (t.state.tokens_seen - tokens_before) / max(time.perf_counter() - started, 1e-9)
            progress.update(
                task,
                completed=1000 * t.progress(),
                step=t.state.step,
                loss=fmt(t.state.loss, 3),
                speed=f"{speed:,.0f}",
            )

    def on_eval(t, result):
        if result is None:
            return
        progress.update(task, val=fmt(result.nats_per_token, 3))
        if log:
            best = " (best)" if t.improved else ""
            progress.console.print(
                f"step {t.state.step:>6}  train {fmt(t.state.loss, 3)}  "
                f"val {fmt(result.nats_per_token, 4)} nats/token  "
                f"{fmt(result.bits_per_char, 3)} bits/char{best}"
            )

    with stop_on_interrupt(signal.SIGTERM) as should_stop, progress:
        return session.run_loop(on_step, on_eval, should_stop)
