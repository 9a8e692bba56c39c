"""``chargen sample``: text from a model, streamed or in batches; whole tunes from a tune model."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click

from chargen.cli.base import (
    CONTEXT,
    CliError,
    check_output_path,
    checkpoint_dir_option,
    device_option,
    given,
    json_line,
    load_model,
    stop_on_interrupt,
    weights_option,
    write_output,
)
from chargen.cli.music import RHYTHMS
from chargen.config import SampleConfig

TUNE_OPTIONS = ("midi", "wav", "svg", "meter", "key", "rhythm", "style", "bars", "parts")
TUNE_OPTIONS += ("free", "valid_only")


@click.command(context_settings=CONTEXT)
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
    help="Characters to generate per sample (tokens at the word and abc levels; tunes: a cap "
    "on a tune's tokens, default 1200).",
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
@click.option("--rhythm", type=click.Choice(RHYTHMS), help="ABC: the kind of tune (R:).")
@click.option("--style", help="ABC: the tradition (O:): irish, scottish, english, american, ...")
@click.option("--bars", type=click.IntRange(1, 256), help="ABC: bars per tune, e.g. 16.")
@click.option(
    "--parts", type=click.IntRange(1, 8), help="ABC: parts per tune, each ending in :| or ||."
)
@click.option(
    "--free", is_flag=True, help="ABC: no grammar; tunes may break their bars (for comparison)."
)
@click.option("--valid-only", is_flag=True, help="ABC: resample tunes that fail 'abc check'.")
@checkpoint_dir_option
@click.pass_context
def sample(ctx, run, beam, **options):
    """Generate text from RUN (a run name or directory; default: the latest run).

    For a run trained on ABC tunes, --num N gives N complete tunes, each ended by the
    model (--length caps its tokens, default 1200; temperature default 0.5). A grammar
    keeps every tune valid as it is written: bars that agree with the meter, the headers
    and form asked for.

    \b
    Examples:
      chargen sample harbour --prime "NELL:" --temperature 0.8 --length 500
      chargen sample bard --num 5 --stop $'\\n\\n' --seed 1
      chargen sample bard --temperature 0 --length 200        # greedy
      chargen sample bard --json --num 3 > samples.jsonl
      chargen sample bard --beam 8 --prime "ROMEO:" --length 100   # most likely text
      chargen sample folk --num 10 --midi out/ --meter 6/8 --key D  # ABC tunes
      chargen sample folk --rhythm jig --style irish --bars 16 --parts 2 --num 5
    """
    tune_options = {name: options.pop(name) for name in TUNE_OPTIONS}
    output, as_json = options.pop("output"), options.pop("as_json")
    weights, device = options.pop("weights"), options.pop("device")
    config = SampleConfig(**options)
    config.validate()
    if beam is not None and config.num > 1:
        raise CliError("--beam finds one most likely continuation; drop --num", 2)
    check_output_path(output)
    music_options = [f"--{n.replace('_', '-')}" for n, v in tune_options.items() if v]
    if music_options and beam is not None:
        raise CliError(f"--beam writes text, not tunes: drop {', '.join(music_options)}", 2)
    model = load_model(ctx, run, weights, device)
    if beam is None and (music_options or model.writes_tunes):
        _tunes(ctx, model, config, tune_options | {"output": output, "as_json": as_json})
        return
    stream = config.num == 1 and not as_json and output is None
    with stop_on_interrupt() as should_stop:
        if beam is not None:
            found = model.beam(
                config.prime, config.length, beam, stop=config.stop, should_stop=should_stop
            )
            samples = iter([found])
        else:
            on_text = _write_piece if stream else None
            samples = model.samples(config, on_text=on_text, should_stop=should_stop)
        if stream:
            for sample in samples:
                if beam is not None:
                    _write_piece(0, sample.text)
            sys.stdout.write("\n")
        else:
            written = write_output(_rendered(samples, as_json), output)
        interrupted = should_stop()
    if interrupted:
        click.echo("\nInterrupted: keeping the text generated so far", err=True)
    if output is not None:
        click.echo(f"Wrote {written} sample{'s' if written != 1 else ''} to {output}", err=True)


def _tunes(ctx, model, config: SampleConfig, options: dict) -> None:
    """Whole tunes, at the tunes' own default cap and temperature unless they were given."""
    from chargen.cli.music import TuneOptions, sample_tunes
    from chargen.music.tunes import TUNE_CAP, TUNE_TEMPERATURE

    cap = config.length if given(ctx, "length") else TUNE_CAP
    temperature = config.temperature if given(ctx, "temperature") else TUNE_TEMPERATURE
    sample_tunes(model, config, TuneOptions(**options), cap, temperature)


def _rendered(samples, as_json: bool) -> Iterator[str]:
    """Each sample as the text to write: a JSON line, or its text (a blank line between)."""
    for i, sample in enumerate(samples):
        if as_json:
            record = {
                "text": sample.text,
                "tokens": sample.tokens,
                "mean_logprob": sample.mean_logprob,
            }
            yield json_line(record) + "\n"
        else:
            yield ("\n" if i else "") + sample.text + "\n"


def _write_piece(index: int, piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
