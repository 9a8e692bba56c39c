"""The ``chargen`` command line: parse options, call the library, render results.

Commands: ``train``, ``sample``, ``eval`` and the ``checkpoints`` group (``list``, ``show``,
``rm``, ``prune``). Library errors (``ChargenError``) become one-line ``Error: ...`` messages here
and nowhere else. torch is imported inside commands, so ``chargen --help`` starts fast.
"""

from __future__ import annotations

import glob
import json
import math
import shlex
import signal
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

from chargen import __version__
from chargen.config import (
    CELLS,
    LEVELS,
    SCHEDULES,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    parse_duration,
)
from chargen.errors import ChargenError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CliError(click.ClickException):
    """A one-line ``Error: ...`` with the exit code of the library error behind it."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ChargenGroup(click.Group):
    """Turns every error into one line on stderr instead of a traceback or a usage block."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ChargenError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}", 1) from None
        except MemoryError:
            raise CliError(_OUT_OF_MEMORY, 1) from None
        except RuntimeError as exc:
            if _is_out_of_memory(exc):
                raise CliError(_OUT_OF_MEMORY, 1) from None
            raise

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that handles click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "chargen"
            click.echo(f"Error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


_OUT_OF_MEMORY = "out of memory: use a smaller model (--hidden, --layers) or --batch-size"


def _is_out_of_memory(exc: RuntimeError) -> bool:
    message = str(exc)
    return "can't allocate memory" in message or "out of memory" in message.lower()


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ChargenError as exc:
            self.fail(str(exc), param, ctx)


def _root(ctx: click.Context) -> Path:
    from chargen.checkpoint import checkpoint_root

    return checkpoint_root(ctx.obj.get("checkpoint_dir") if ctx.obj else None)


def _dir_flag(ctx: click.Context) -> str:
    """`` --checkpoint-dir DIR`` when runs are not in the default place, for hints to copy."""
    from chargen.checkpoint import DEFAULT_DIR

    root = _root(ctx)
    return "" if root == Path(DEFAULT_DIR) else f" --checkpoint-dir {shlex.quote(str(root))}"


def _store_checkpoint_dir(ctx: click.Context, param, value):
    if value is not None:
        ctx.ensure_object(dict)["checkpoint_dir"] = value


checkpoint_dir_option = click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    expose_value=False,
    callback=_store_checkpoint_dir,
    help="Where runs live (default ./checkpoints; env CHARGEN_CHECKPOINTS).",
)
"""The group's --checkpoint-dir, accepted after the command name too."""


weights_option = click.option(
    "--weights", type=click.Choice(["best", "last"]), default="best", show_default=True
)


def device_option(default: str, help: str | None = None):
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda", "mps"]),
        default=default,
        show_default=True,
        help=help,
    )


def _echo_json(data) -> None:
    """One line of strict JSON: NaN and infinity (which JSON lacks) become null."""
    click.echo(json.dumps(_finite(data), ensure_ascii=False, allow_nan=False))


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@click.group("chargen", cls=ChargenGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="chargen")
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    envvar="CHARGEN_CHECKPOINTS",
    help="Where runs live (default ./checkpoints; env CHARGEN_CHECKPOINTS).",
)
@click.pass_context
def cli(ctx: click.Context, checkpoint_dir: str | None):
    """Train recurrent neural networks on text and generate more of it.

    \b
    Quick start:
      chargen train corpora/harbour.txt --name harbour --time 2m
      chargen sample harbour --prime "NELL:" --length 400
      chargen eval harbour held_out.txt
      chargen checkpoints list
    """
    ctx.ensure_object(dict)
    ctx.obj["checkpoint_dir"] = checkpoint_dir


# ----------------------------------------------------------------------------------- train

_D = TrainConfig()
_M = ModelConfig()
# CLI option name -> TrainConfig field, for options whose names differ from the field.
_TRAIN_FIELDS = {"window": "seq_len", "time": "time_limit", "warmup": "warmup_steps"}
_MODEL_FIELDS = {"layers": "num_layers", "hidden": "hidden_size", "embedding": "embedding_dim"}


@cli.command(context_settings=CONTEXT)
@click.argument("corpus", nargs=-1, metavar="[CORPUS]...")
@click.option("--name", help="Run name (default: the corpus file name without extension).")
@click.option("--resume", is_flag=True, help="Continue the run NAME where it stopped.")
@click.option("--force", is_flag=True, help="Replace an existing run of the same name.")
@click.option(
    "--level",
    type=click.Choice(LEVELS),
    default=_D.level,
    show_default=True,
    help="Tokenizer level.",
)
@click.option(
    "--vocab-size",
    type=click.IntRange(2),
    default=_D.vocab_size,
    show_default=True,
    help="Word level: vocabulary cap, <unk> included.",
)
@click.option(
    "--min-freq",
    type=click.IntRange(1),
    default=_D.min_freq,
    show_default=True,
    help="Word level: drop tokens seen fewer times.",
)
@click.option(
    "--cell", type=click.Choice(CELLS), default=_M.cell, show_default=True, help="Recurrent cell."
)
@click.option("--layers", type=click.IntRange(1), default=_M.num_layers, show_default=True)
@click.option(
    "--hidden",
    type=click.IntRange(1),
    default=_M.hidden_size,
    show_default=True,
    help="Hidden state size.",
)
@click.option(
    "--embedding",
    type=click.IntRange(1),
    default=_M.embedding_dim,
    show_default=True,
    help="Token embedding size.",
)
@click.option(
    "--dropout", type=click.FloatRange(0, 1, max_open=True), default=_M.dropout, show_default=True
)
@click.option("--tie-weights", is_flag=True, help="Share input and output embeddings.")
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
    default=_D.lr,
    show_default=True,
    help="Peak learning rate.",
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
    default=_D.decay_frac,
    show_default=True,
    help="wsd: the last part of the run (by --time, --max-steps or --epochs) that decays.",
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
@click.option("--time", type=Duration(), help="Stop after this long: 90s, 10m, 1h.")
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
      chargen train --name bard --resume --time 10m
      chargen train books/ 'more/*.txt' --name library
      torchrun --standalone --nproc-per-node 2 -m chargen train big.txt --batch-size 64
    """
    from chargen.console import ReadingProgress, console, fmt, training_progress
    from chargen.distributed import barrier, finish, shutdown
    from chargen.session import default_run_name, save_checkpoint, start_training

    if resume and force:
        raise CliError("--resume and --force contradict each other; choose one", 2)
    for spec in corpus:
        if not Path(spec).exists() and not glob.has_magic(spec):
            raise CliError(f"{spec}: no such file or folder", 2)
    if name is None:
        if not corpus:
            raise CliError("missing CORPUS (or --name NAME --resume to continue a run)", 2)
        name = default_run_name(corpus[0])
    model_values, train_values, given = {}, {}, {}
    for option, value in options.items():
        is_model = option in ("cell", "dropout", "tie_weights") or option in _MODEL_FIELDS
        field = (_MODEL_FIELDS if is_model else _TRAIN_FIELDS).get(option, option)
        (model_values if is_model else train_values)[field] = value
        if ctx.get_parameter_source(option) == ParameterSource.COMMANDLINE:
            given[field] = value
    train_config = TrainConfig(**train_values)
    if not train_config.has_limit:
        train_config.epochs = 10.0
    reading = ReadingProgress(corpus) if not quiet and console.is_terminal else None
    try:
        session = start_training(
            corpus,
            name,
            _root(ctx),
            ModelConfig(**model_values),
            train_config,
            resume=resume,
            force=force,
            given=given,
            progress=reading.advance if reading else None,
        )
    finally:
        if reading:
            reading.close()
    trainer, run = session.trainer, session.run
    main = session.world.is_main  # under torchrun, only rank 0 writes, logs and draws
    log = not quiet and main
    for warning in session.warnings if main else []:
        console.print(f"[yellow]warning:[/] {warning}")
    if log:
        model = trainer.model
        verb = (
            f"Resuming {run.name} at step {session.resumed_from_step}"
            if resume
            else (f"Training {run.name}")
        )
        console.print(
            f"{verb}: {model.config.cell} {model.config.num_layers}x{model.config.hidden_size}, "
            f"{model.num_parameters():,} parameters, {session.tokenizer.vocab_size} tokens "
            f"({trainer.config.level}), {len(session.corpus.train):,} training tokens, "
            f"batch {trainer.batches.batch_size * session.world.size}x{trainer.config.seq_len}, "
            f"on {trainer.device.type}"
            f"{f' x {session.world.size} processes' if session.world.active else ''}"
            f"{' (bf16)' if trainer.bf16 else ''}"
            f"{f', {trainer.workers.count} worker threads' if trainer.workers.count > 1 else ''}"
        )

    stop_requested = []

    def request_stop(signum, frame):
        if stop_requested:  # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop_requested.append(signum)

    started = time.perf_counter()
    tokens_before = trainer.state.tokens_seen
    progress = training_progress(enabled=log and console.is_terminal)
    task = progress.add_task(
        name, total=1000, step=trainer.state.step, loss="-", val="-", speed="-"
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
        if main:
            save_checkpoint(session, result, status="training")
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

    previous_int = signal.signal(signal.SIGINT, request_stop)
    previous_term = signal.signal(signal.SIGTERM, request_stop)
    try:
        with progress:
            state = trainer.run(on_step, on_eval, should_stop=lambda: bool(stop_requested))
        status = "interrupted" if state.stop_reason == "interrupted" else "finished"
        if main:
            save_checkpoint(session, None, status=status)
        # Tear the process group down together: a process that leaves while rank 0 still saves
        # can die in gloo's teardown ("terminate called without an active exception").
        barrier(session.world)
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
        trainer.close()
        shutdown(session.world)
    if not main:
        finish(session.world)
        return

    seconds = time.perf_counter() - started
    tokens = state.tokens_seen - tokens_before
    if status == "interrupted":  # said even with --quiet: the user asked for this stop
        console.print(
            f"Interrupted at step {state.step}; saved a resumable checkpoint in {run.path}\n"
            f"Continue with: chargen train --name {run.name} --resume{_dir_flag(ctx)}"
        )
    elif log:
        console.print(
            f"Done ({state.stop_reason}) at step {state.step} in {seconds:.0f}s "
            f"({state.elapsed:.0f}s of training in all): best val "
            f"{fmt(state.best_val_loss)} nats/token, {fmt(state.best_val_bpc, 3)} bits/char. "
            f"Saved in {run.path}"
        )
    if as_json:
        _echo_json(
            {
                "name": run.name,
                "path": str(run.path),
                "status": status,
                "stop_reason": state.stop_reason,
                "steps": state.step,
                "tokens_seen": state.tokens_seen,
                "best_val_loss": state.best_val_loss,
                "best_val_bpc": state.best_val_bpc,
                "tokens_per_sec": tokens / seconds if seconds > 0 else None,
                # the training steps alone, without validation passes and saving
                "step_tokens_per_sec": (
                    tokens / trainer.step_seconds if trainer.step_seconds > 0 else None
                ),
                "seconds": seconds,
            }
        )
    finish(session.world)


# ---------------------------------------------------------------------------------- sample


@cli.command(context_settings=CONTEXT)
@click.argument("run", required=False)
@click.option("--prime", default="", help="Text to start from; the model continues it.")
@click.option(
    "-t",
    "--temperature",
    type=click.FloatRange(0),
    default=SampleConfig.temperature,
    show_default=True,
    help="0 is greedy; higher is more adventurous. Tunes (ABC runs) default to 0.5.",
)
@click.option("--top-k", type=click.IntRange(1), help="Draw only from the k likeliest tokens.")
@click.option(
    "--top-p",
    type=click.FloatRange(0, 1, min_open=True),
    help="Draw only from the likeliest tokens holding this much probability.",
)
@click.option(
    "-n",
    "--length",
    type=click.IntRange(1),
    default=SampleConfig.length,
    show_default=True,
    help="Tokens to generate per sample (tunes: a cap per tune, default 1200).",
)
@click.option(
    "--num",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Samples, generated together as one batch.",
)
@click.option("--seed", type=int, help="Seed for a reproducible sample.")
@click.option("--stop", help="End each sample at the first occurrence of this text (excluded).")
@weights_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the samples to this file instead of stdout.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per sample: text, tokens, mean log-probability.",
)
@device_option("cpu", "cpu is fastest for a few streams; a GPU pays off for large --num.")
@click.option(
    "--beam",
    type=click.IntRange(1),
    help="Beam search of this width for the most likely continuation instead of sampling "
    "(conservative: safe, often repetitive text).",
)
@click.option(
    "--midi",
    type=click.Path(file_okay=False),
    help="ABC: also write DIR/tunes.abc and one DIR/tune-NNN.mid per tune.",
)
@click.option("--wav", is_flag=True, help="ABC: also render each MIDI file to WAV (timidity).")
@click.option("--svg", is_flag=True, help="ABC: also engrave sheet music as SVG (abcm2ps).")
@click.option("--meter", help="ABC: the meter of every tune (M:), e.g. 6/8.")
@click.option("--key", help="ABC: the key of every tune (K:), e.g. D or Ador.")
@click.option("--valid-only", is_flag=True, help="ABC: resample tunes that fail 'abc check'.")
@checkpoint_dir_option
@click.pass_context
def sample(
    ctx,
    run,
    prime,
    temperature,
    top_k,
    top_p,
    length,
    num,
    seed,
    stop,
    weights,
    output,
    as_json,
    device,
    beam,
    midi,
    wav,
    svg,
    meter,
    key,
    valid_only,
):
    """Generate text from RUN (a run name or directory; default: the latest run).

    For a run trained on ABC tunes, --num N gives N complete tunes, each ended by the
    model (--length caps its tokens).

    \b
    Examples:
      chargen sample harbour --prime "NELL:" --temperature 0.8 --length 500
      chargen sample bard --num 5 --stop $'\\n\\n' --seed 1
      chargen sample bard --temperature 0 --length 200        # greedy
      chargen sample bard --json --num 3 > samples.jsonl
      chargen sample bard --beam 8 --prime "ROMEO:" --length 100   # most likely text
      chargen sample folk --num 10 --midi out/ --meter 6/8 --key D  # ABC tunes
    """
    from chargen.sample import Sample, beam_search, prime_ids
    from chargen.sample import sample as generate_samples
    from chargen.session import load_for_inference

    config = SampleConfig(
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num=num,
        seed=seed,
        prime=prime,
        stop=stop,
    )
    config.validate()
    if beam is not None and num > 1:
        raise CliError("--beam finds one most likely continuation; drop --num", 2)
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise CliError(f"{output}: its directory does not exist", 2)
    found, model, tokenizer, torch_device, _ = load_for_inference(run, _root(ctx), weights, device)
    from chargen.cli_music import is_tune_run, sample_tunes

    music_options = midi or wav or svg or meter or key or valid_only
    if music_options and beam is not None:
        raise CliError("--beam cannot be combined with --midi, --meter, --key or --valid-only", 2)
    tune_mode = beam is None and (music_options or is_tune_run(found, tokenizer))

    stream = num == 1 and not as_json and output is None
    out = sys.stdout

    def on_text(index, piece):
        out.write(piece)
        out.flush()

    interrupted = []

    def request_stop(signum, frame):
        if interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        interrupted.append(signum)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        if tune_mode:
            sample_tunes(
                model,
                tokenizer,
                config,
                torch_device,
                cap_given=ctx.get_parameter_source("length") == ParameterSource.COMMANDLINE,
                temperature_given=(
                    ctx.get_parameter_source("temperature") == ParameterSource.COMMANDLINE
                ),
                output=output,
                as_json=as_json,
                midi=midi,
                wav=wav,
                svg=svg,
                meter=meter,
                key=key,
                valid_only=valid_only,
                should_stop=lambda: bool(interrupted),
            )
            return
        if beam is not None:
            ids, logprob = beam_search(
                model, prime_ids(tokenizer, prime), beam, length, torch_device
            )
            text = tokenizer.decode(ids)
            if stop and stop in text:
                text = text[: text.index(stop)]
            samples = [Sample(prime + text, len(ids), logprob / max(len(ids), 1))]
            if stream:
                on_text(0, samples[0].text)
        else:
            samples = generate_samples(
                model,
                tokenizer,
                config,
                torch_device,
                on_text=on_text if stream else None,
                should_stop=lambda: bool(interrupted),
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        click.echo("\nInterrupted: keeping the text generated so far", err=True)
    if stream:
        out.write("\n")
        return
    if as_json:
        lines = [
            json.dumps(
                {"text": s.text, "tokens": s.tokens, "mean_logprob": s.mean_logprob},
                ensure_ascii=False,
            )
            for s in samples
        ]
        rendered = "\n".join(lines) + "\n"
    else:
        rendered = "\n\n".join(s.text for s in samples) + "\n"
    if output is None:
        out.write(rendered)
    else:
        from chargen.files import write_atomic

        write_atomic(Path(output), rendered.encode("utf-8"))
        click.echo(f"Wrote {len(samples)} sample{'s' if num > 1 else ''} to {output}", err=True)


# ------------------------------------------------------------------------------------ eval


@cli.command("eval", context_settings=CONTEXT)
@click.argument("args", nargs=-1, required=True, metavar="[RUN] FILE...")
@weights_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
@device_option("auto")
@checkpoint_dir_option
@click.pass_context
def eval_(ctx, args, weights, as_json, device):
    """Score unseen text: loss in nats/token, bits per character, perplexity.

    RUN is a run name or directory (default: the latest run); each FILE is a UTF-8 text.

    \b
    Examples:
      chargen eval bard held_out.txt
      chargen eval held_out.txt                    # the latest run
      chargen eval bard a.txt b.txt --json
    """
    first = Path(args[0])
    names_a_run = (first / "run.json").is_file() or (_root(ctx) / args[0] / "run.json").is_file()
    if len(args) >= 2 and not first.is_file():
        run_spec, files = args[0], args[1:]
    elif len(args) == 1 and names_a_run:
        raise CliError(f"give a text file to evaluate {args[0]!r} on: chargen eval RUN FILE", 2)
    else:
        run_spec, files = None, args
    _report_scores(ctx, run_spec, files, weights, as_json, device, per_line=False)


@cli.command(context_settings=CONTEXT)
@click.argument("run")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--per-line", is_flag=True, help="Score every line on its own.")
@weights_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (or line).")
@device_option("auto")
@checkpoint_dir_option
@click.pass_context
def score(ctx, run, files, per_line, weights, as_json, device):
    """Score files, or each of their lines, with the model RUN.

    Lower bits per character means the model finds the text more likely: a
    line in the model's own language or style scores low.

    \b
    Examples:
      chargen score bard sonnets.txt
      chargen score english mixed.txt --per-line --json
    """
    _report_scores(ctx, run, files, weights, as_json, device, per_line)


def _report_scores(ctx, run_spec, files, weights, as_json, device, per_line) -> None:
    from chargen.console import console, fmt, table
    from chargen.data import EVAL_STREAMS, Stream, read_text
    from chargen.score import score_texts
    from chargen.session import load_for_inference
    from chargen.train import evaluate
    from chargen.workers import plan as plan_workers

    for file in files:
        path = Path(file)
        if not path.exists():
            raise CliError(f"{file}: no such file", 2)
        if not path.is_file():
            raise CliError(f"{file}: not a file", 2)
    run, model, tokenizer, torch_device, loaded = load_for_inference(
        run_spec, _root(ctx), weights, device
    )
    rows = []  # (file, line number or None, result)
    workers = plan_workers(torch_device, rows=1 if per_line else EVAL_STREAMS)
    with workers:
        for file in files:
            text = read_text(file)
            unknown = tokenizer.unknown_pieces(text)
            if unknown and not as_json:
                console.print(
                    f"[yellow]note:[/] {file}: {len(unknown)} kinds of token the model "
                    "never saw were scored as <unk>"
                )
            if per_line:
                lines = text.splitlines()
                results = score_texts(model, tokenizer, lines, torch_device)
                rows += [(file, i + 1, r) for i, r in enumerate(results)]
            else:
                stream = Stream.of(tokenizer, text)
                rows.append((file, None, evaluate(model, stream, torch_device, workers=workers)))
    if as_json:
        for file, line, result in rows:
            record = {"run": run.name, "weights": loaded, "file": file}
            if line is not None:
                record["line"] = line
            _echo_json(
                record
                | {
                    "nats_per_token": result.nats_per_token,
                    "bits_per_char": result.bits_per_char,
                    "perplexity": result.perplexity,
                    "tokens": result.tokens,
                    "chars": result.chars,
                }
            )
        return
    columns = ["file", "line"] if per_line else ["file"]
    rendered = [
        [file, *([str(line)] if per_line else [])]
        + [
            fmt(r.nats_per_token),
            fmt(r.bits_per_char, 3),
            fmt(r.perplexity, 2),
            f"{r.tokens:,}",
        ]
        for file, line, r in rows
    ]
    console.print(
        table(
            f"{run.name} ({loaded} weights)",
            [*columns, "nats/token", "bits/char", "perplexity", "tokens"],
            rendered,
        )
    )


@cli.command(context_settings=CONTEXT)
@click.argument("text", required=False)
@click.option(
    "-f", "--file", type=click.Path(exists=True, dir_okay=False), help="Read the text from here."
)
@click.option(
    "-m",
    "--model",
    "models",
    multiple=True,
    help="A run to compare (repeat; default: every run in the checkpoint directory).",
)
@weights_option
@click.option("--json", "as_json", is_flag=True, help="The ranking as a JSON array on stdout.")
@checkpoint_dir_option
@click.pass_context
def identify(ctx, text, file, models, weights, as_json):
    """Rank models by how likely they find a text: which language, author or tradition is it?

    The confidence of each model is the softmax of the models' log-likelihoods of the
    whole text (equal priors).

    \b
    Examples:
      chargen identify "Je pense, donc je suis" -m english -m french -m german
      chargen identify --file tune.abc --checkpoint-dir traditions/
    """
    from chargen.checkpoint import list_runs, load_model, resolve_run
    from chargen.console import console, fmt, table
    from chargen.data import read_text
    from chargen.score import identify as rank

    if (text is None) == (file is None):
        raise CliError("give the text either as an argument or with --file, not both", 2)
    if file is not None:
        text = read_text(file)
    root = _root(ctx)
    runs = [resolve_run(m, root) for m in models] if models else list_runs(root)
    if len(runs) < 2:
        raise CliError(f"identify compares at least two models; found {len(runs)} (add -m RUN)", 2)
    loaded = {run.name: load_model(run, weights) for run in runs}
    ranked = rank(text, loaded)
    if as_json:
        _echo_json(
            [
                {
                    "run": r.name,
                    "confidence": r.confidence,
                    "bits_per_char": r.score.bits_per_char,
                    "nats": r.score.nats,
                    "tokens": r.score.tokens,
                }
                for r in ranked
            ]
        )
        return
    rows = [
        [r.name, f"{r.confidence:.1%}", fmt(r.score.bits_per_char, 3), f"{r.score.nats:,.1f}"]
        for r in ranked
    ]
    console.print(table(None, ["model", "confidence", "bits/char", "total nats"], rows))


# ----------------------------------------------------------------------------- checkpoints


@cli.group(context_settings=CONTEXT, cls=ChargenGroup)
def checkpoints():
    """List, inspect, remove and prune saved runs."""


def _summary(run) -> dict:
    state = run.info.get("state", {})
    return {
        "name": run.name,
        "path": str(run.path),
        "level": run.info["train"].get("level"),
        "cell": run.info["model"].get("cell"),
        "layers": run.info["model"].get("num_layers"),
        "hidden": run.info["model"].get("hidden_size"),
        "parameters": run.info.get("parameters"),
        "steps": state.get("step", 0),
        "tokens_seen": state.get("tokens_seen", 0),
        "best_val_loss": state.get("best_val_loss"),
        "best_val_bpc": state.get("best_val_bpc"),
        "status": run.info.get("status"),
        "resumable": run.info.get("resumable", False),
        "corpus": run.info.get("corpus"),
        "updated": run.info.get("updated"),
        "disk_bytes": run.disk_bytes(),
    }


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


@checkpoints.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="A JSON array on stdout.")
@checkpoint_dir_option
@click.pass_context
def checkpoints_list(ctx, as_json):
    """List runs, most recently updated first.

    \b
    Example:
      chargen checkpoints list
    """
    from chargen.checkpoint import scan_runs
    from chargen.console import console, fmt, table

    root = _root(ctx)
    found, damaged = scan_runs(root)
    runs = [_summary(r) for r in found]
    for path in damaged:
        console.print(
            f"[yellow]warning:[/] {path.name}: damaged run, not listed "
            f"(inspect {path / 'run.json'}, or delete it: chargen checkpoints rm {path.name})"
        )
    if as_json:
        _echo_json(runs)
        return
    if not runs:
        console.print(f"No runs in {root}. Train one: chargen train CORPUS --name NAME")
        return
    rows = [
        [
            r["name"],
            r["level"],
            f"{r['cell']} {r['layers']}x{r['hidden']}",
            f"{r['parameters']:,}",
            f"{r['steps']:,}",
            fmt(r["best_val_loss"]),
            fmt(r["best_val_bpc"], 3),
            r["status"] or "-",
            _when(r["updated"]),
        ]
        for r in runs
    ]
    console.print(
        table(
            str(root),
            [
                "name",
                "level",
                "cell",
                "params",
                "steps",
                "best val",
                "bits/char",
                "status",
                "updated",
            ],
            rows,
        )
    )


@checkpoints.command("show", context_settings=CONTEXT)
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Config, summary and metrics as JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Also draw the loss curves to this PNG (needs matplotlib).",
)
@checkpoint_dir_option
@click.pass_context
def checkpoints_show(ctx, run, as_json, plot):
    """Show a run's config, metrics and validation loss curve.

    \b
    Example:
      chargen checkpoints show bard --plot bard.png
    """
    from chargen.checkpoint import read_metrics, resolve_run
    from chargen.console import console, fmt, loss_chart

    found = resolve_run(run, _root(ctx))
    metrics = read_metrics(found)
    summary = _summary(found)
    if plot:
        _plot(metrics, plot, found.name)
    if as_json:
        _echo_json(
            {
                **summary,
                "model": found.info["model"],
                "train": found.info["train"],
                "metrics": metrics,
            }
        )
        return
    console.print(f"[bold]{found.name}[/]  {found.path}")
    for key in ("status", "corpus", "resumable"):
        console.print(f"  {key:<12} {summary[key]}")
    for key in ("parameters", "steps", "tokens_seen"):
        console.print(f"  {key:<12} {summary[key] or 0:,}")
    console.print(
        f"  {'best val':<12} {fmt(summary['best_val_loss'])} nats/token, "
        f"{fmt(summary['best_val_bpc'], 3)} bits/char"
    )
    console.print(f"  {'disk':<12} {summary['disk_bytes'] / 1e6:.1f} MB")
    console.print(f"  {'model':<12} {_as_flags(found.info['model'], skip={'vocab_size'})}")
    console.print(f"  {'training':<12} {_as_flags(found.info['train'])}")
    if metrics:
        console.print("\nValidation loss (nats/token):")
        console.print(loss_chart([m["step"] for m in metrics], [m["val_loss"] for m in metrics]))


def _as_flags(config: dict, skip: frozenset | set = frozenset()) -> str:
    """A config as the command-line flags that give it."""
    from chargen.config import option_name

    flags = []
    for field, value in config.items():
        if field in skip or value is None or value is False:
            continue
        if field == "time_limit":
            value = f"{value:g}s"
        flags.append(option_name(field) if value is True else f"{option_name(field)} {value}")
    return " ".join(flags)


def _plot(metrics: list[dict], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError(
            "--plot needs matplotlib: pip install matplotlib (or chargen[plot])", 1
        ) from None
    figure, axes = plt.subplots(figsize=(7, 4))
    steps = [m["step"] for m in metrics]
    axes.plot(steps, [m["train_loss"] for m in metrics], label="train")
    axes.plot(steps, [m["val_loss"] for m in metrics], label="validation")
    axes.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    click.echo(f"Wrote {path}", err=True)


@checkpoints.command("rm", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@checkpoint_dir_option
@click.pass_context
def checkpoints_rm(ctx, runs, yes):
    """Delete runs.

    \b
    Example:
      chargen checkpoints rm old-run other-run --yes
    """
    from chargen.checkpoint import find_run_dir, remove_run

    found = [find_run_dir(name, _root(ctx)) for name in runs]  # damaged runs too
    names = ", ".join(path.name for path in found)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(f"refusing to delete {names} without confirmation; add --yes", 2)
        click.confirm(f"Delete {names}?", abort=True, err=True)
    for path in found:
        remove_run(path)
        click.echo(f"Deleted {path.name} ({path})", err=True)


@checkpoints.command("prune", context_settings=CONTEXT)
@click.argument("runs", nargs=-1)
@click.option("--all", "all_runs", is_flag=True, help="Prune every finished run.")
@click.option("--best-only", is_flag=True, help="Also delete the last weights, keep the best.")
@click.option("--force", is_flag=True, help="Prune named runs even if they could be resumed.")
@checkpoint_dir_option
@click.pass_context
def checkpoints_prune(ctx, runs, all_runs, best_only, force):
    """Free disk: drop resume state (optimizer moments) from finished runs.

    A pruned run still samples and evaluates but can no longer be resumed.

    \b
    Examples:
      chargen checkpoints prune bard
      chargen checkpoints prune --all --best-only
    """
    from chargen.checkpoint import list_runs, prune_run, resolve_run

    root = _root(ctx)
    if all_runs:
        found = [r for r in list_runs(root) if r.info.get("status") == "finished"]
    elif runs:
        found = [resolve_run(name, root) for name in runs]
    else:
        raise CliError("name the runs to prune, or use --all", 2)
    total = 0
    for run in found:
        freed = prune_run(run, best_only=best_only, force=force)
        total += freed
        click.echo(f"{run.name}: freed {freed / 1e6:.1f} MB", err=True)
    click.echo(f"Freed {total / 1e6:.1f} MB in {len(found)} run(s)", err=True)


from chargen import cli_music  # noqa: E402,F401  (registers the music commands)
