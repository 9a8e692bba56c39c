"""The music commands: ``chargen corpus folk``, ``chargen abc check``, and tune sampling.

Registers its commands on ``chargen.cli.cli`` when imported (``cli.py`` imports it last), and
gives ``chargen sample`` its complete-tune mode (``sample_tunes``). Like ``cli.py`` it only parses
options, calls the library (``chargen.music``, ``chargen.tunes``) and renders results; music21
and torch are imported inside commands so that ``chargen --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from chargen.cli import CONTEXT, ChargenGroup, CliError, _echo_json, cli
from chargen.music import FOLK_COLLECTIONS

DEFAULT_CORPUS = "corpora/folk.abc"
TUNE_CAP = 1200
"""Default cap on a tune's tokens: about five times an average folk tune, above the longest."""
TUNE_TEMPERATURE = 0.5
"""Default temperature for tunes. A tune must keep its meter in every bar, and a lower
temperature keeps more of them right: from a folk model trained 14 minutes, 91-98 of 100 tunes
passed ``abc check`` at 0.5 against 79-84 at the text default 0.8, with no exact copies
(benchmarks/music.py, seeds 1-3)."""


def is_tune_run(run, tokenizer) -> bool:
    """A run trained on ABC tunes: the abc level, or any level on a .abc corpus."""
    return tokenizer.level == "abc" or str(run.info.get("corpus") or "").endswith(".abc")


# ---------------------------------------------------------------------------------- corpus


@cli.group(context_settings=CONTEXT, cls=ChargenGroup)
def corpus():
    """Build training corpora."""


@corpus.command("folk", context_settings=CONTEXT)
@click.argument("sources", nargs=-1, type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=DEFAULT_CORPUS,
    show_default=True,
    help="Where to write the corpus.",
)
@click.option(
    "--collection",
    "collections",
    multiple=True,
    type=click.Choice(FOLK_COLLECTIONS),
    help="A music21 collection to use (repeat; default: all five). Ignored with SOURCES.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tune order.")
@click.option(
    "--keep-irregular",
    is_flag=True,
    help="Keep tunes whose bars disagree with their meter (dropped by default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON on stdout.")
def corpus_folk(sources, output, collections, seed, keep_irregular, as_json):
    """Build an ABC training corpus: one cleaned tune per block, duplicates removed.

    Without SOURCES, reads the folk collections that music21 ships (about 12,800 tunes);
    SOURCES are your own .abc files or folders of them. Keeps the X, T, R, M, L and K
    headers, drops fingerings, annotations, comments and other fields, and shuffles the
    tunes with --seed, so that the validation split at the end holds whole tunes from every
    collection. The same input always gives the same corpus.

    \b
    Examples:
      chargen corpus folk
      chargen corpus folk --collection oneills1850 -o corpora/oneill.abc
      chargen corpus folk my_tunes/ more.abc -o corpora/mine.abc
    """
    from chargen.checkpoint import write_atomic
    from chargen.music import abc_files, build_corpus, collection_files

    files = abc_files(sources) if sources else collection_files(collections or FOLK_COLLECTIONS)
    report = build_corpus(files, seed=seed, keep_irregular=keep_irregular)
    path = Path(output)
    if not path.resolve().parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, report.text.encode("utf-8"))
    counts = report.as_dict() | {"output": str(path)}
    if as_json:
        _echo_json(counts)
        return
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items()))
    click.echo(
        f"Read {report.tunes_read:,} tunes from {report.files:,} files; dropped "
        f"{report.duplicates:,} duplicates, {report.irregular:,} with bars that disagree with "
        f"their meter{', ' + dropped if dropped else ''}.\n"
        f"Wrote {report.written:,} tunes ({len(report.text):,} characters) to {path}\n"
        f"Train on it: chargen train {path} --level abc --name folk --time 10m",
        err=True,
    )


# ------------------------------------------------------------------------------------- abc


@cli.group("abc", context_settings=CONTEXT, cls=ChargenGroup)
def abc_group():
    """Work with tunes in ABC notation."""


@abc_group.command("check", context_settings=CONTEXT)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tune, then a summary.")
@click.option(
    "--corpus",
    "corpus_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Also report how much of each tune is copied from this corpus.",
)
@click.option("--no-parse", is_flag=True, help="Skip the music21 parse (headers and bars only).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds music21 may spend on one tune.",
)
def abc_check(file, as_json, corpus_file, no_parse, timeout):
    """Check every tune of FILE: headers, bars against M: and L:, a music21 parse.

    A tune is valid when it has X:, T:, M: and K:, music21 parses it, and every bar has
    the length its meter asks for (a pickup, the last bar, and bars next to repeats,
    endings and double bars may be short).

    \b
    Examples:
      chargen abc check out/tunes.abc
      chargen abc check out/tunes.abc --corpus corpora/folk.abc --json
    """
    from chargen.abc_notation import split_tunes
    from chargen.console import console, table
    from chargen.data import read_text
    from chargen.music import NoveltyIndex, check_tune, summarize

    tunes = split_tunes(read_text(file))
    checks = [check_tune(t, i + 1, not no_parse, timeout) for i, t in enumerate(tunes)]
    index = NoveltyIndex(read_text(corpus_file)) if corpus_file else None
    novelty = [index.novelty(t) for t in tunes] if index else [None] * len(tunes)
    summary = summarize(checks)
    if index:
        summary["exact_copies"] = sum(n.exact_copy for n in novelty)
    if as_json:
        for check, found in zip(checks, novelty, strict=True):
            _echo_json(check.as_dict() | ({"novelty": found.as_dict()} if found else {}))
        _echo_json({"summary": summary})
        return
    columns = ["#", "title", "verdict", "bars", "problems"]
    if index:
        columns[4:4] = ["longest copy", "8-grams copied"]
    rows = []
    for check, found in zip(checks, novelty, strict=True):
        row = [str(check.number), check.title[:40], "valid" if check.valid else "invalid"]
        row.append(str(check.bars))
        if found:
            copy = f"{found.longest_copy}/{found.music_chars}"
            row += [
                copy + (" (exact copy)" if found.exact_copy else ""),
                f"{found.copied_ngrams:.0%}",
            ]
        row.append("; ".join(check.problems[:3]) + (" ..." if len(check.problems) > 3 else ""))
        rows.append(row)
    console.print(table(file, columns, rows))
    line = (
        f"{summary['valid']} of {summary['tunes']} tunes valid "
        f"({summary['valid_fraction']:.1%}), {summary['bars']:,} bars"
    )
    if index:
        line += f", {summary['exact_copies']} exact copies of corpus tunes"
    console.print(line)


# ------------------------------------------------------------------------------ sample tunes


def tune_fields(prime: str, meter: str | None, key: str | None) -> tuple[dict[str, str], str]:
    """Headers to impose and music to start from, from --prime, --meter and --key."""
    from chargen.abc_notation import parse_header_text

    fields, music = parse_header_text(prime.replace("\\n", "\n"))
    fields.pop("X", None)
    for letter, value, option in (("M", meter, "--meter"), ("K", key, "--key")):
        if value is None:
            continue
        value = value.strip()
        if letter in fields and fields[letter] != value:
            raise CliError(f"{option} {value} contradicts {letter}:{fields[letter]} in --prime", 2)
        fields[letter] = value
    if "M" in fields:
        from chargen.abc_notation import meter_length

        if meter_length(fields["M"]) is None and fields["M"] not in ("none", "C", "C|"):
            raise CliError(f"cannot read the meter {fields['M']!r}; write it like 6/8, 3/4 or C", 2)
    if music.strip() and "K" not in fields:
        raise CliError("music in --prime needs a key first: a K: line or --key", 2)
    return fields, music


def sample_tunes(
    model,
    tokenizer,
    config,
    device,
    *,
    cap_given: bool,
    temperature_given: bool,
    output: str | None,
    as_json: bool,
    midi: str | None,
    wav: bool,
    svg: bool,
    meter: str | None,
    key: str | None,
    valid_only: bool,
    should_stop,
) -> None:
    """``chargen sample`` for ABC runs: ``config.num`` complete tunes, optionally exported."""
    from dataclasses import replace

    from chargen.checkpoint import write_atomic
    from chargen.errors import MusicError
    from chargen.music import check_tools, check_tune, write_midi, write_svg, write_wav
    from chargen.tunes import generate_tunes, generate_valid_tunes, numbered

    if (wav or svg) and midi is None:
        raise CliError("--wav and --svg write next to the MIDI files: give --midi DIR", 2)
    if config.stop is not None:
        raise CliError(
            "--stop does not apply to tunes: each tune ends at its own blank line; "
            "cap a tune's length with --length",
            2,
        )
    fields, music = tune_fields(config.prime, meter, key)
    if midi is not None or valid_only:
        check_tools(wav=wav, svg=svg)  # before sampling, not after
    config = replace(
        config,
        prime="",
        stop=None,
        length=config.length if cap_given else TUNE_CAP,
        temperature=config.temperature if temperature_given else TUNE_TEMPERATURE,
    )
    if valid_only:
        tunes, resampled = generate_valid_tunes(
            model,
            tokenizer,
            config,
            lambda tune: check_tune(tune.text).valid,
            fields,
            music,
            device,
            should_stop=should_stop,
        )
    else:
        tunes = generate_tunes(model, tokenizer, config, fields, music, device, should_stop)
    texts = numbered(tunes)
    checks = [check_tune(text, i + 1) for i, text in enumerate(texts)] if valid_only else None
    rendered = "\n\n".join(texts) + "\n"

    exported: list[dict] = [{} for _ in texts]
    if midi is not None:
        folder = Path(midi)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "tunes.abc", rendered.encode("utf-8"))
        for i, text in enumerate(texts):
            stem = folder / f"tune-{i + 1:03d}"
            try:
                midi_file = write_midi(text, stem.with_suffix(".mid"))
                exported[i]["midi"] = str(midi_file)
                if wav:
                    exported[i]["wav"] = str(write_wav(midi_file, stem.with_suffix(".wav")))
                if svg:
                    exported[i]["svg"] = str(write_svg(text, stem.with_suffix(".svg")))
            except MusicError as exc:  # one unplayable tune does not stop the others
                click.echo(f"warning: tune {i + 1}: {exc}", err=True)

    if as_json:
        lines = []
        for i, (tune, text) in enumerate(zip(tunes, texts, strict=True)):
            record = {
                "text": text,
                "tokens": tune.tokens,
                "mean_logprob": tune.mean_logprob,
                "ended": tune.ended,
            }
            if checks is not None:
                record["valid"] = checks[i].valid
            lines.append(json.dumps(record | exported[i], ensure_ascii=False))
        rendered_out = "\n".join(lines) + "\n"
    else:
        rendered_out = rendered
    if output is not None:
        write_atomic(Path(output), rendered_out.encode("utf-8"))
    else:
        sys.stdout.write(rendered_out)

    ended = sum(t.ended for t in tunes)
    message = (
        f"{len(tunes)} tune{'s' if len(tunes) != 1 else ''}: {ended} ended on their own "
        f"before the cap of {config.length} tokens"
    )
    if checks is not None:
        valid = sum(c.valid for c in checks)
        message += f", {valid} valid ({resampled} resampled)"
    if midi is not None:
        written = sum("midi" in e for e in exported)
        message += f"; wrote {Path(midi) / 'tunes.abc'} and {written} MIDI files"
        if wav:
            message += f", {sum('wav' in e for e in exported)} WAV"
        if svg:
            message += f", {sum('svg' in e for e in exported)} SVG"
    if output is not None:
        message += f"; tunes in {output}"
    click.echo(message, err=True)
