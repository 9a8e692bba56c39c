"""The music commands: ``chargen corpus folk``, ``chargen abc check`` and ``abc stats``, and the
tunes that ``chargen sample`` writes for a tune model (``sample_tunes``).

Like every command module, it parses options, calls the library (``chargen.music``, the model's
``tunes``) and renders the results; music21 and torch are imported inside commands so that
``chargen --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import click

from chargen.cli.base import CONTEXT, ChargenGroup, CliError, echo_json, json_line, write_output

DEFAULT_CORPUS = "corpora/folk.abc"
FOLK_COLLECTIONS = ("ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk")
"""music21's folk collections (``chargen.music.folk`` holds the same names; a test keeps them
equal, and this copy keeps --help free of the library's imports)."""

RHYTHMS = ("reel", "jig", "slip jig", "hornpipe", "strathspey", "air", "song")
"""The rhythms a folk corpus's R: says (``chargen.music.notation.RHYTHMS``; a test keeps them
equal)."""


# ---------------------------------------------------------------------------------- corpus


@click.group(context_settings=CONTEXT, cls=ChargenGroup)
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
@click.option(
    "--style",
    metavar="NAME",
    help="The tradition of the tunes in SOURCES (written as their O: field; e.g. irish), so that "
    "a model can be asked for it. music21's collections have theirs.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tune order.")
@click.option(
    "--keep-irregular",
    is_flag=True,
    help="Keep tunes whose bars disagree with their meter (dropped by default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON on stdout.")
def corpus_folk(sources, output, collections, style, seed, keep_irregular, as_json):
    """Build an ABC training corpus: one cleaned tune per block, duplicates removed.

    Without SOURCES, reads the folk collections that music21 ships (about 12,800 tunes);
    SOURCES are your own .abc files or folders of them. Keeps the X, O, R, T, M, L and K
    headers: O: is the tradition (irish, scottish, english, american, german, chinese; --style
    for your own tunes), R: the rhythm, one of reel, jig, slip jig, hornpipe, strathspey,
    waltz, march, slide, air, song (other spellings are mapped, unknown ones dropped), so that
    a model trained on the corpus can be asked for them. Drops fingerings, annotations,
    comments and other fields, and shuffles the tunes with --seed, so that the validation
    split at the end holds whole tunes from every collection. The same input always gives
    the same corpus.

    \b
    Examples:
      chargen corpus folk
      chargen corpus folk --collection oneills1850 -o corpora/oneill.abc
      chargen corpus folk my_tunes/ more.abc --style irish -o corpora/mine.abc
    """
    from chargen.cli.console import counting_progress
    from chargen.files import write_atomic
    from chargen.music.folk import Source, abc_files, build_corpus, collection_sources

    if sources:
        files = [Source(path, style) for path in abc_files(sources)]
    else:
        files = collection_sources(collections or FOLK_COLLECTIONS)
    with counting_progress("Reading tunes", len(files), "files", not as_json) as advance:
        report = build_corpus(files, seed, keep_irregular, on_file=advance)
    path = Path(output)
    if not path.resolve().parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, report.text.encode("utf-8"))
    counts = report.as_dict() | {"output": str(path)}
    if as_json:
        echo_json(counts)
        return
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items()))
    click.echo(
        f"Read {report.tunes_read:,} tunes from {report.files:,} files; dropped "
        f"{report.duplicates:,} duplicates, {report.irregular:,} with bars that disagree with "
        f"their meter{', ' + dropped if dropped else ''}.\n"
        f"Wrote {report.written:,} tunes ({len(report.text):,} characters) to {path}\n"
        f"Rhythms (R:): {_counts(report.rhythms)}\n"
        f"Traditions (O:): {_counts(report.styles)}\n"
        f"Train on it: chargen train {path} --level abc --name folk --time 14m",
        err=True,
    )


def _counts(counter) -> str:
    return ", ".join(f"{name or 'none'} {n:,}" for name, n in counter.most_common())


# ------------------------------------------------------------------------------------- abc


@click.group("abc", context_settings=CONTEXT, cls=ChargenGroup)
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
    from chargen.cli.console import console, table
    from chargen.files import read_text
    from chargen.music.check import check_tune, summarize
    from chargen.music.export import check_tools
    from chargen.music.notation import split_tunes
    from chargen.music.novelty import NoveltyIndex

    if not no_parse:
        check_tools()  # music21, once, before any tune: not "invalid" for every tune
    tunes = split_tunes(read_text(file))
    checks = [check_tune(t, i + 1, not no_parse, timeout) for i, t in enumerate(tunes)]
    index = NoveltyIndex(read_text(corpus_file)) if corpus_file else None
    novelty = [index.novelty(t) for t in tunes] if index else [None] * len(tunes)
    summary = summarize(checks)
    if index:
        summary["exact_copies"] = sum(n.exact_copy for n in novelty)
    if as_json:
        for check, found in zip(checks, novelty, strict=True):
            echo_json(check.as_dict() | ({"novelty": found.as_dict()} if found else {}))
        echo_json({"summary": summary})
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


@abc_group.command("stats", context_settings=CONTEXT)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--corpus",
    "corpus_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Also give the corpus's figures, and how far FILE's are from them.",
)
@click.option("--json", "as_json", is_flag=True, help="The figures as one JSON object.")
def abc_stats(file, corpus_file, as_json):
    """What the tunes of FILE look like: bars, parts, repeats, endings, range, note lengths.

    Bars count a pickup and the short bar that completes it as one (as --bars does); a part
    ends at a repeat sign or a double or final bar line. With --corpus, each figure is set
    beside the corpus's, with the distance: a difference of medians, of shares in points,
    or of distributions (total variation, 0 to 1).

    \b
    Examples:
      chargen abc stats out/tunes.abc
      chargen abc stats out/tunes.abc --corpus corpora/folk.abc --json
    """
    from chargen.cli.console import console, table
    from chargen.files import read_text
    from chargen.music.notation import split_tunes
    from chargen.music.stats import distances, profile

    found = profile(split_tunes(read_text(file)))
    if not found["tunes"]:
        raise CliError(f"{file}: no tune with a meter and notes in it")
    corpus = profile(split_tunes(read_text(corpus_file))) if corpus_file else None
    apart = distances(found, corpus) if corpus else {}
    if as_json:
        echo_json({"file": found} | ({"corpus": corpus, "distance": apart} if corpus else {}))
        return
    columns = ["figure", Path(file).name] + ([Path(corpus_file).name, "distance"] if corpus else [])
    rows = []
    for name, key in _STATS_ROWS:
        row = [name, _stat(key, found.get(key))]
        if corpus:
            row += [_stat(key, corpus.get(key)), _distance(key, apart.get(key))]
        rows.append(row)
    console.print(table(f"{found['tunes']:,} tunes", columns, rows))


_STATS_ROWS = (
    ("bars (median)", "bars_median"),
    ("bars (quartiles)", "bars_quartiles"),
    ("parts", "parts"),
    ("with repeats", "repeats"),
    ("end on a final bar line", "final_bar"),
    ("end on the tonic", "tonic_end"),
    ("pitch range (median, semitones)", "range_median"),
    ("note lengths (in L: units)", "lengths"),
)


def _distance(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("parts", "lengths"):
        return f"{value:.2f} (TV)"
    if key in ("repeats", "final_bar", "tonic_end"):
        return f"{value:+.1f} points"
    return f"{value:+g}"


_SHARES = ("repeats", "final_bar", "tonic_end")  # figures that are fractions of the tunes


def _stat(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:.0%}" for k, v in list(value.items())[:5])
    if isinstance(value, list):
        return " / ".join(f"{v:g}" for v in value)
    if key in _SHARES:
        return f"{value:.0%}"
    return f"{value:g}"


# ------------------------------------------------------------------------------ sample tunes


@dataclass
class TuneOptions:
    """What ``chargen sample`` was asked for beyond the text options, for a tune model."""

    meter: str | None = None
    key: str | None = None
    rhythm: str | None = None
    style: str | None = None
    bars: int | None = None
    parts: int | None = None
    free: bool = False
    valid_only: bool = False
    midi: str | None = None  # folder for tunes.abc and one MIDI file per tune
    wav: bool = False
    svg: bool = False
    output: str | None = None
    as_json: bool = False


def sample_tunes(model, config, options: TuneOptions, cap: int, temperature: float) -> None:
    """``chargen sample`` for a tune model: ``config.num`` complete tunes of at most ``cap``
    tokens at ``temperature``, each written (and exported) as soon as its batch is done."""
    from chargen.cli.base import stop_on_interrupt
    from chargen.music.export import check_tools

    if (options.wav or options.svg) and options.midi is None:
        raise CliError("--wav and --svg write next to the MIDI files: give --midi DIR", 2)
    if config.stop is not None:
        raise CliError(
            "--stop does not apply to tunes: each tune ends at its own blank line; "
            "cap a tune's length with --length",
            2,
        )
    if options.midi is not None or options.valid_only:
        check_tools(wav=options.wav, svg=options.svg)  # before sampling, not after
    from chargen.cli.console import counting_progress

    tally = _Tally()
    bar = counting_progress("Writing tunes", config.num, "tunes ended")
    with stop_on_interrupt() as should_stop, _Exports(options) as exports, bar as advance:
        done = [0]

        def on_done(count: int) -> None:
            done[0] += count
            advance(min(done[0], config.num))

        tunes = model.iter_tunes(
            config.num,
            meter=options.meter,
            key=options.key,
            rhythm=options.rhythm,
            style=options.style,
            bars=options.bars,
            parts=options.parts,
            free=options.free,
            prime=config.prime,
            temperature=temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            seed=config.seed,
            length=cap,
            valid_only=options.valid_only,
            should_stop=should_stop,
            on_done=on_done,
        )
        parts = (tally.render(tune, exports.write(tune), options.as_json) for tune in tunes)
        write_output(parts, options.output)
    click.echo(tally.message(cap, options), err=True)


class _Exports:
    """DIR/tunes.abc (whole once the last tune is in), and each tune's MIDI file, WAV and SVG
    where asked for; a tune that cannot be exported gets a warning and the others go on."""

    def __init__(self, options: TuneOptions):
        self.options = options
        self.abc = None  # the open tunes.abc
        self.count = 0
        self._files = contextlib.ExitStack()

    def __enter__(self) -> _Exports:
        if self.options.midi is not None:
            from chargen.files import atomic_path

            folder = Path(self.options.midi)
            folder.mkdir(parents=True, exist_ok=True)
            path = self._files.enter_context(atomic_path(folder / "tunes.abc"))
            self.abc = self._files.enter_context(open(path, "w", encoding="utf-8"))
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._files.__exit__(*exc)

    def write(self, tune) -> dict:
        if self.abc is None:
            return {}
        from chargen.errors import MusicError
        from chargen.music.export import write_midi, write_svg, write_wav

        self.count += 1
        number = self.count
        self.abc.write(("\n" if number > 1 else "") + tune.text + "\n")
        stem, files = Path(self.options.midi) / f"tune-{number:03d}", {}
        # each export on its own: a tune one tool cannot read may suit another
        steps = [("midi", lambda: write_midi(tune.text, stem.with_suffix(".mid")))]
        if self.options.wav:
            steps.append(("wav", lambda: write_wav(files["midi"], stem.with_suffix(".wav"))))
        if self.options.svg:
            steps.append(("svg", lambda: write_svg(tune.text, stem.with_suffix(".svg"))))
        for kind, step in steps:
            if kind == "wav" and "midi" not in files:
                continue  # already warned: no MIDI file to render
            try:
                files[kind] = str(step())
            except MusicError as exc:  # one unplayable tune does not stop the others
                click.echo(f"warning: tune {number}: no {kind.upper()} file: {exc}", err=True)
        return files


class _Tally:
    """Counts of the tunes written, for the closing line."""

    def __init__(self) -> None:
        self.tunes = self.ended = self.valid = self.resampled = 0
        self.files = {"midi": 0, "wav": 0, "svg": 0}

    def render(self, tune, files: dict, as_json: bool) -> str:
        self.tunes += 1
        self.ended += tune.ended
        self.valid += bool(tune.valid)
        self.resampled += tune.attempts - 1
        for kind in files:
            self.files[kind] += 1
        if as_json:
            return json_line(_record(tune) | files) + "\n"
        return ("\n" if self.tunes > 1 else "") + tune.text + "\n"

    def message(self, cap: int, options: TuneOptions) -> str:
        message = (
            f"{self.tunes} tune{'s' if self.tunes != 1 else ''}: {self.ended} ended on their own "
            f"before the cap of {cap} tokens"
        )
        if options.valid_only:
            message += f", {self.valid} valid ({self.resampled} resampled)"
        if options.midi is not None:
            message += (
                f"; wrote {Path(options.midi) / 'tunes.abc'} and {self.files['midi']} MIDI files"
            )
            if options.wav:
                message += f", {self.files['wav']} WAV"
            if options.svg:
                message += f", {self.files['svg']} SVG"
        if options.output is not None:
            message += f"; tunes in {options.output}"
        return message


def _record(tune) -> dict:
    record = {
        "text": tune.text,
        "tokens": tune.tokens,
        "mean_logprob": tune.mean_logprob,
        "ended": tune.ended,
    }
    if tune.check is not None:
        record["valid"] = tune.check.valid
    return record
