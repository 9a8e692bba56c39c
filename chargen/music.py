"""Music on top of ABC text: the folk corpus, the validity check, MIDI/WAV/SVG export, novelty.

- ``build_corpus`` reads ABC files (music21's folk collections or the user's own files and
  folders), cleans and deduplicates the tunes and lays them out one per block;
- ``check_tune``/``check_text`` give the validity verdict of each tune: required headers, bars
  that agree with M: and L:, and a parse by music21 under a time limit;
- ``write_midi`` (music21), ``write_wav`` (timidity or fluidsynth) and ``write_svg`` (abcm2ps)
  export a tune;
- ``NoveltyIndex`` says how much of a tune is copied from a corpus.

music21 is imported inside the functions that need it, so importing this module is cheap. This
module does not sample, train or parse command lines; ABC text handling itself is in
``chargen.abc_notation``.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chargen.abc_notation import (
    REQUIRED_HEADERS,
    TUNE_END,
    bar_problems,
    bars,
    body,
    clean_tune,
    headers,
    key_readable,
    meter_length,
    music_key,
    renumber,
    split_tunes,
    unit_length,
)
from chargen.errors import CorpusError, MusicError

FOLK_COLLECTIONS = ("ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk")
"""The folk tune collections in ABC that music21 ships in its corpus folder."""

MAX_TUNE_CHARS = 20_000
"""Longer tunes are not checked: no real folk tune comes near, and they could take long."""

FREE_METERS = ("none", "free")
"""Meters under which bars have no set length."""


# -------------------------------------------------------------------------------------- corpus


def music21_corpus_dir() -> Path:
    try:
        from music21 import common
    except ImportError:
        raise MusicError(
            "the folk collections come with music21: pip install music21 (or chargen[music])"
        ) from None
    return Path(common.getCorpusFilePath())


def collection_files(names: Iterable[str] = FOLK_COLLECTIONS) -> list[Path]:
    """The .abc files of music21's collections ``names``, sorted."""
    root = music21_corpus_dir()
    files = []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            raise MusicError(f"music21 has no collection {name!r} in {root}")
        files += sorted(folder.rglob("*.abc"))
    return files


def abc_files(sources: Iterable[str | Path]) -> list[Path]:
    """The .abc files named by ``sources``: files as given, folders searched for *.abc."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(path.rglob("*.abc"))
            if not found:
                raise CorpusError(f"{path}: no .abc files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CorpusError(f"{path}: no such file or folder")
    return files


def read_abc(path: Path) -> str:
    """A file's text; ABC collections predate UTF-8, so undecodable files are read as Latin-1."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@dataclass
class CorpusReport:
    text: str  # the corpus: tunes separated by a blank line, ending in a newline
    files: int
    tunes_read: int
    written: int
    duplicates: int
    irregular: int  # dropped because their bars disagree with the meter
    dropped: Counter = field(default_factory=Counter)  # other reasons a tune was dropped

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "tunes_read": self.tunes_read,
            "written": self.written,
            "duplicates": self.duplicates,
            "irregular": self.irregular,
            "dropped": dict(self.dropped),
            "chars": len(self.text),
        }


def build_corpus(
    files: Iterable[Path], seed: int = 0, keep_irregular: bool = False
) -> CorpusReport:
    """One training corpus from ABC ``files``: cleaned tunes, duplicates removed, shuffled.

    The order is a shuffle with ``seed`` of the tunes in file order, so the same files give the
    same corpus, and a validation split taken from the end holds tunes from every collection.
    Unless ``keep_irregular``, tunes whose bars disagree with their meter are dropped (real
    transcriptions have such slips; a model should not learn them).
    """
    files = list(files)
    kept: list[str] = []
    seen: set[str] = set()
    report = CorpusReport("", len(files), 0, 0, 0, 0)
    for path in files:
        for raw in split_tunes(read_abc(path)):
            report.tunes_read += 1
            cleaned = clean_tune(raw)
            if cleaned.tune is None:
                report.dropped[cleaned.reason] += 1
                continue
            key = music_key(cleaned.tune)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            if not keep_irregular and bar_problems(bars(cleaned.tune)):
                report.irregular += 1
                continue
            kept.append(cleaned.tune)
    if not kept:
        raise CorpusError("no usable tunes in the given files")
    random.Random(seed).shuffle(kept)
    report.written = len(kept)
    report.text = TUNE_END.join(renumber(t, i + 1) for i, t in enumerate(kept)) + "\n"
    return report


# --------------------------------------------------------------------------------------- check


@dataclass
class TuneCheck:
    """The verdict on one tune."""

    number: int  # position in the file, from 1
    title: str
    bars: int
    problems: list[str]
    parsed: bool | None = None  # music21 parsed it; None when not tried

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "number": self.number,
            "title": self.title,
            "valid": self.valid,
            "bars": self.bars,
            "parsed": self.parsed,
            "problems": self.problems,
        }


class _TimeUp(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in music21 eats it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_TimeUp`` in the block after ``seconds`` (main thread on Unix; else no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def alarm(signum, frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_with_music21(tune: str, timeout: float = 10.0):
    """The music21 score of ``tune``; ``MusicError`` saying why when it does not parse."""
    try:
        from music21 import converter
    except ImportError:
        raise MusicError("checking with music21 needs it: pip install music21") from None
    quiet = io.StringIO()
    try:
        with (
            time_limit(timeout),
            contextlib.redirect_stderr(quiet),
            contextlib.redirect_stdout(quiet),
        ):
            return converter.parseData(tune, format="abc")
    except _TimeUp:
        raise MusicError(f"music21 took more than {timeout:g}s") from None
    except RecursionError:
        raise MusicError("music21 cannot parse it (too deeply nested)") from None
    except Exception as exc:  # music21 raises many kinds on malformed ABC; all mean "invalid"
        message = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        reason = f"{type(exc).__name__} {message}".strip()
        raise MusicError(f"music21 cannot parse it: {reason}") from None


def check_tune(tune: str, number: int = 1, parse: bool = True, timeout: float = 10.0) -> TuneCheck:
    """Required headers, readable M: and L:, bars that agree with them, and a music21 parse."""
    fields = headers(tune)
    check = TuneCheck(number, fields.get("T", ""), 0, [])
    if len(tune) > MAX_TUNE_CHARS:
        check.problems.append(f"longer than {MAX_TUNE_CHARS:,} characters; not checked")
        return check
    missing = [f for f in REQUIRED_HEADERS if f not in fields]
    if missing:
        check.problems.append("missing header " + ", ".join(f"{f}:" for f in missing))
    meter = fields.get("M")
    if meter is not None and meter.lower() not in FREE_METERS and meter_length(meter) is None:
        check.problems.append(f"unreadable meter M:{meter}")
    if "K" in fields and not key_readable(fields["K"]):
        check.problems.append(f"unreadable key K:{fields['K']}")
    if "L" in fields and unit_length(fields["L"]) is None:
        check.problems.append(f"unreadable unit length L:{fields['L']}")
    measured = bars(tune)
    check.bars = sum(max(bar.rests, 1) for bar in measured)
    if not re.search(r"[A-Ga-g]", body(tune)) or not measured:
        check.problems.append("no music")
    for bar_number, problem in bar_problems(measured):
        check.problems.append(f"bar {bar_number}: {problem}")
    if parse and "K" in fields:
        try:
            score = parse_with_music21(tune, timeout)
            check.parsed = bool(len(score.recurse().notes))
            if not check.parsed:
                check.problems.append("music21 finds no notes in it")
        except MusicError as exc:
            check.parsed = False
            check.problems.append(str(exc))
    return check


def check_text(text: str, parse: bool = True, timeout: float = 10.0) -> list[TuneCheck]:
    """The verdict on every tune of an ABC file's text."""
    return [check_tune(t, i + 1, parse, timeout) for i, t in enumerate(split_tunes(text))]


def summarize(checks: list[TuneCheck]) -> dict:
    valid = sum(c.valid for c in checks)
    return {
        "tunes": len(checks),
        "valid": valid,
        "valid_fraction": valid / len(checks) if checks else 0.0,
        "bars": sum(c.bars for c in checks),
    }


# -------------------------------------------------------------------------------------- export


def write_midi(tune: str, path: str | Path) -> Path:
    """A standard MIDI file of ``tune`` (through music21)."""
    score = parse_with_music21(tune)
    path = Path(path)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            score.write("midi", fp=str(path))
        return path
    except Exception:  # music21's MIDI writer fails in its own ways on odd scores
        pass
    # Most failures are repeats music21 cannot expand (an end repeat with no matching start):
    # play the music straight through instead.
    from music21 import bar

    for measure in score.recurse().getElementsByClass("Measure"):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(measure, side), bar.Repeat):
                setattr(measure, side, bar.Barline("regular"))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            score.write("midi", fp=str(path))
    except Exception as exc:
        message = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise MusicError(f"cannot write MIDI: {type(exc).__name__} {message}".strip()) from None
    return path


SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)


def check_tools(wav: bool = False, svg: bool = False) -> None:
    """Raise ``MusicError`` naming the package to install when an export's tool is missing."""
    try:
        import music21  # noqa: F401
    except ImportError:
        raise MusicError("writing tunes needs music21: pip install music21") from None
    if wav and not shutil.which("timidity") and not (shutil.which("fluidsynth") and _soundfont()):
        raise MusicError(
            "--wav needs timidity (Debian package timidity) or fluidsynth with a General "
            "MIDI soundfont (Debian packages fluidsynth and fluid-soundfont-gm)"
        )
    if svg and not shutil.which("abcm2ps"):
        raise MusicError("--svg needs abcm2ps (Debian package abcm2ps)")


def _soundfont() -> str | None:
    return next((s for s in SOUNDFONTS if Path(s).is_file()), None)


def write_wav(midi: str | Path, path: str | Path) -> Path:
    """A WAV rendering of a MIDI file, with timidity or else fluidsynth and a GM soundfont."""
    midi, path = Path(midi), Path(path)
    check_tools(wav=True)
    if shutil.which("timidity"):
        command = ["timidity", "-Ow", "-o", str(path), str(midi)]
    else:
        command = ["fluidsynth", "-ni", "-F", str(path), "-r", "44100", _soundfont(), str(midi)]
    _run_tool(command, path)
    return path


def write_svg(tune: str, path: str | Path) -> Path:
    """Sheet music of ``tune`` as SVG, engraved by abcm2ps."""
    check_tools(svg=True)
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "tune.abc"
        source.write_text(tune + "\n", encoding="utf-8")
        _run_tool(["abcm2ps", "-g", "-O", str(Path(scratch) / "page"), str(source)], None)
        pages = sorted(Path(scratch).glob("page*.svg"))
        if not pages:
            raise MusicError("abcm2ps wrote no sheet music for this tune")
        shutil.move(str(pages[0]), path)  # a folk tune fits on one page
    return path


def _run_tool(command: list[str], output: Path | None, timeout: float = 120.0) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MusicError(f"{command[0]} took more than {timeout:g}s") from None
    if done.returncode != 0 or (output is not None and not output.is_file()):
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise MusicError(f"{command[0]} failed: {detail[-1] if detail else done.returncode}")


# ------------------------------------------------------------------------------------- novelty

NGRAM = 8
"""Music tokens per n-gram in the copied-share figure."""

_MUSIC_TOKEN = re.compile(r"[_^=]*[A-Ga-gzx][,']*\d*/*\d*|[<>]+|\(\d|[|:\[\]]+\d*")
"""Notes with accents and lengths, broken rhythm, tuplets and bar lines: what makes a melody."""


@dataclass
class Novelty:
    longest_copy: int  # longest stretch of the tune's music (spaces removed) found in the corpus
    music_chars: int  # length of the tune's music (spaces removed)
    copied_ngrams: float  # share of the tune's 8-grams of music tokens found in the corpus
    exact_copy: bool  # meter, unit, key and music equal to a corpus tune

    def as_dict(self) -> dict:
        return {
            "longest_copy": self.longest_copy,
            "music_chars": self.music_chars,
            "copied_ngrams": self.copied_ngrams,
            "exact_copy": self.exact_copy,
        }


def _music(tune: str) -> str:
    return re.sub(r"\s+", "", body(tune))


def _ngram_hashes(tune: str) -> np.ndarray:
    tokens = _MUSIC_TOKEN.findall(_music(tune))
    grams = {hash(tuple(tokens[i : i + NGRAM])) for i in range(len(tokens) - NGRAM + 1)}
    return np.fromiter(grams, dtype=np.int64, count=len(grams))


class NoveltyIndex:
    """What a corpus holds, for asking how much of a new tune is copied from it."""

    def __init__(self, corpus_text: str):
        tunes = split_tunes(corpus_text)
        self.keys = {music_key(t) for t in tunes}
        # One string of all music, tunes separated by a character no music contains, so that a
        # copied stretch never spans two tunes.
        self.music = "\x00".join(_music(t) for t in tunes)
        hashes = [_ngram_hashes(t) for t in tunes]
        self.ngrams = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.int64)

    def novelty(self, tune: str) -> Novelty:
        music = _music(tune)
        grams = _ngram_hashes(tune)
        copied = float(np.isin(grams, self.ngrams).mean()) if len(grams) else 0.0
        return Novelty(self._longest_copy(music), len(music), copied, music_key(tune) in self.keys)

    def _longest_copy(self, music: str) -> int:
        """Longest substring of ``music`` that occurs in the corpus: slide a window that only
        grows, so it takes at most 2 * len(music) substring searches."""
        best, start = 0, 0
        while start + best < len(music):
            if music[start : start + best + 1] in self.music:
                best += 1
            else:
                start += 1
        return best
