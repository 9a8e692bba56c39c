"""Is a tune valid? Required headers, readable values, bars that agree with the meter, and a parse
by music21 under a time limit.

``check_tune`` gives the verdict on one tune; ``summarize`` counts the verdicts. music21 is
imported only when a tune is parsed. Nothing here writes files or samples.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from chargen.errors import MusicError
from chargen.music.bars import bar_problems, bars
from chargen.music.notation import (
    FIELD_LINE,
    REQUIRED_HEADERS,
    body,
    engravable,
    headers,
    key_readable,
    meter_length,
    split_header,
    unit_length,
)

MAX_TUNE_CHARS = 20_000
"""Longer tunes are not checked: no real folk tune comes near, and they could take long."""

FREE_METERS = ("none", "free")
"""Meters under which bars have no set length."""


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
    check.problems += _stray_lines(tune)
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
    check.problems += tie_problems(body(tune))
    check.problems += length_problems(body(tune))
    # music21 only for tunes that pass every check above: its opinion cannot save a tune that
    # fails them, and an absurd tune can make it take seconds and gigabytes.
    if parse and not check.problems:
        try:
            score = parse_with_music21(tune, timeout)
            check.parsed = bool(len(score.recurse().notes))
            if not check.parsed:
                check.problems.append("music21 finds no notes in it")
        except MusicError as exc:
            check.parsed = False
            check.problems.append(str(exc))
    return check


_TIE_TOKENS = re.compile(
    r'"[^"\n]*"|![^!\n]*!|\[[A-Za-z]:[^\]\n]*\]|\[[\d|]|[_^=]*[A-Ga-gz][,\']*|[-\[\]{}]'
)  # what is skipped (chord symbols, decorations, inline fields, endings), notes, ties, groups


def tie_problems(music: str) -> list[str]:
    """Ties that do not join a note to the same note (``B-d``, a tie before a rest, a chord or
    the end): engravers such as abcm2ps refuse them ("Bad tie"). The same note is its letter and
    octave with its accidental or none; ties after chords are not followed."""
    problems, last, tied, depth = [], None, None, 0
    for match in _TIE_TOKENS.finditer(music):
        token = match.group()
        if token[0] in '"![' and len(token) > 1:
            continue
        if token in "[{":
            if tied is not None and token == "[":
                problems.append(f"a tie from {tied} to a chord")
                tied = None
            depth += 1
        elif token in "]}":
            depth, last = max(depth - 1, 0), None
        elif token == "-":
            tied = last if depth == 0 else None
        elif depth == 0:
            if tied is not None and not _same_note(tied, token):
                problems.append(f"a tie from {tied} to {token}")
            last, tied = (None if token == "z" else token), None
    if tied is not None:
        problems.append(f"a tie from {tied} to nothing")
    return problems


_NOTE_LENGTH = re.compile(r'"[^"\n]*"|![^!\n]*!|(?:[_^=]*[A-Ga-gz][,\']*|\])(\d+)(/*)(\d*)')


def length_problems(music: str) -> list[str]:
    """Notes no engraver can write as one note: ``F5`` (five units: neither plain, dotted nor
    double-dotted) needs two tied notes on the page; abcm2ps refuses it."""
    problems = []
    for match in _NOTE_LENGTH.finditer(music):
        top, slashes, bottom = match.groups()
        if top is None or len(slashes) > 1 or bottom == "0" or top == "0":
            continue
        value = Fraction(int(top), int(bottom) if bottom else 2 ** len(slashes))
        if not engravable(value):
            problems.append(f"{match.group()}: a length no single note has")
    return problems


def _same_note(tied: str, note: str) -> bool:
    bare = tied.lstrip("_^=")
    return note in (tied, bare) if bare != tied else note == tied


def _stray_lines(tune: str) -> list[str]:
    """Lines of the header that are no field, and a title that is only a number: what a sampler
    that primes with a whole ``X:1`` line made of the number the model went on writing."""
    head, _ = split_header(tune)
    problems = [
        f"line {i + 1} is neither a header field nor music: {line[:20]!r}"
        for i, line in enumerate(head)
        if line.strip() and not FIELD_LINE.match(line)
    ]
    title = headers(tune).get("T", "")
    if title.strip().isdigit():
        problems.append(f"the title is only a number: T:{title}")
    return problems


def music21_available() -> bool:
    """Whether music21 can be imported here (for the parse and MIDI)."""
    try:
        import music21  # noqa: F401
    except ImportError:
        return False
    return True


def summarize(checks: list[TuneCheck]) -> dict:
    valid = sum(c.valid for c in checks)
    return {
        "tunes": len(checks),
        "valid": valid,
        "valid_fraction": valid / len(checks) if checks else 0.0,
        "bars": sum(c.bars for c in checks),
    }
