"""ABC notation as text: tunes, headers, cleaning, bar lengths and the music-token pattern.

What this module does, all on plain strings and without music21:

- ``split_tunes`` cuts an ABC file into tunes (each starts at an ``X:`` line);
- ``clean_tune`` turns one tune into the training form: musical headers only (X, T, R, M, L, K)
  in a fixed order, comments, annotations and fingerings dropped, continuations joined, no blank
  line inside (a blank line ends a tune);
- ``headers``/``body``/``renumber`` read and rewrite a tune; ``TUNE_END`` and ``ends_tune`` are the
  end-of-tune rule the sampler stops on;
- ``bars`` measures every bar of a tune in units of a whole note, which is what the validity check
  compares with the meter;
- ``ABC_PATTERN`` is the pre-tokenizer regex of the ``abc`` tokenizer level.

It is not responsible for parsing with music21, for audio or for the command line
(``chargen.music`` and ``chargen.cli_music`` are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

TUNE_END = "\n\n"
"""A tune ends at a blank line: the corpus separates tunes with one, so the model learns it."""

HEADER_ORDER = "XTRMLK"
"""The headers a cleaned tune keeps, in this order (ABC wants X first and K last)."""

REQUIRED_HEADERS = "XTMK"
"""Headers a tune must have to pass the check; L has a default that follows from M."""

BODY_FIELDS = "MLK"
"""Fields kept when they appear inside the music: a change of meter, unit length or key."""

ABC_PATTERN = "|".join(
    [
        r"^[A-Za-z]:(?!\|)",  # a field at the start of a line: X: T: M: K: ... (not "B:|")
        r"(?<=^[MLK]:)[^\n]+",  # the whole value of M:, L:, K: (6/8, 1/8, Dmix)
        r"\[[A-Za-z]:[^\]\n]*\]",  # inline field: [K:G] [M:3/4]
        r'"[^"\n]*"',  # chord symbol or annotation
        r"![^!\s|]+!",  # decoration: !trill! !fermata!
        r"\[\||:*\|+[\]:]*\d*|::+\d*|\[\d+",  # bar lines, repeats, first and second endings
        r"\(\d(?::\d*){0,2}",  # tuplet: (3 (3:2:3
        r"[_^=]*[A-Ga-gzx][,']*",  # note or rest with accidentals and octave marks
        r"\d*/+\d*|\d",  # duration: 2 /2 3/2 // 3/ (single digits: X:1234 is four pieces)
        r"[<>]+",  # broken rhythm
        r"[\s\S]",  # anything else, one character at a time (newlines included)
    ]
)
"""Pieces of the ``abc`` tokenizer level, tried in order at each position.

Every character falls into exactly one piece and no piece spans a newline, so decoding the
pieces gives the text back exactly.
"""

_FIELD_LINE = re.compile(r"^([A-Za-z]):(?!\|)(.*)$")  # "B:|" is music, not a field
_X_LINE = re.compile(r"^X:", re.MULTILINE)
_QUOTED = re.compile(r'"([^"\n]*)"')
_CHORD_SYMBOL = re.compile(
    r"^[A-G][#b]?(?:m|min|maj|dim|aug|sus|M|o|\+)?\d*(?:sus\d|add\d|[#b]\d)*(?:/[A-Ga-g][#b]?)?$"
)
_SPACES = re.compile(r"[ \t]+")
_BANG = re.compile(r"(![^!\s|]+!)|!")  # a decoration, or a stray "!" (old ABC's line break)
_METER = re.compile(r"^\s*(\d+(?:\+\d+)*)\s*/\s*(\d+)\s*$")
_UNIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


# ----------------------------------------------------------------------------- tunes and headers


def split_tunes(text: str) -> list[str]:
    """The tunes of an ABC file, each from its ``X:`` line to the line before the next tune.

    A tune ends at a blank line or at the next ``X:`` line; text before the first ``X:`` (a file
    header) is left out. Text with no ``X:`` line at all counts as one tune, so that a checker
    can say what is wrong with it instead of finding nothing.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = [m.start() for m in _X_LINE.finditer(text)]
    if not starts:
        return [text.strip("\n")] if text.strip() else []
    tunes = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        chunk = text[start:end]
        blank = re.search(r"\n[ \t]*\n", chunk)
        if blank:
            chunk = chunk[: blank.start()]
        tunes.append(chunk.strip("\n"))
    return tunes


def split_header(tune: str) -> tuple[list[str], list[str]]:
    """Header lines (up to and including the first ``K:`` line) and body lines of a tune.

    A tune without ``K:`` has a header of its leading field lines and the rest as body.
    """
    lines = tune.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            return lines[: i + 1], lines[i + 1 :]
    for i, line in enumerate(lines):
        if not _FIELD_LINE.match(line):
            return lines[:i], lines[i:]
    return lines, []


def headers(tune: str) -> dict[str, str]:
    """The header fields of a tune, letter to value (stripped); the first of a repeated field."""
    found: dict[str, str] = {}
    for line in split_header(tune)[0]:
        match = _FIELD_LINE.match(line)
        if match and match.group(1) not in found:
            found[match.group(1)] = match.group(2).strip()
    return found


def body(tune: str) -> str:
    """The music of a tune: every line after the header."""
    return "\n".join(split_header(tune)[1])


def renumber(tune: str, number: int) -> str:
    """The tune with its ``X:`` line set to ``number`` (added first if it has none)."""
    if tune.startswith("X:"):
        rest = tune.split("\n", 1)
        return f"X:{number}" + ("\n" + rest[1] if len(rest) > 1 else "")
    return f"X:{number}\n{tune}"


def ends_tune(text: str) -> bool:
    """Whether generated ``text`` has reached the end of its tune."""
    return TUNE_END in text


def header_lines(fields: dict[str, str]) -> str:
    """``fields`` as header lines in ``HEADER_ORDER``, each ending in a newline."""
    return "".join(f"{f}:{fields[f]}\n" for f in HEADER_ORDER if f in fields)


def parse_header_text(text: str) -> tuple[dict[str, str], str]:
    """Header fields at the start of ``text`` (such as a prime ``"M:6/8\\nK:D\\n"``) and the rest.

    Leading lines of the form ``F:value`` are fields; everything from the first other line on is
    returned as the rest (music to continue from).
    """
    fields: dict[str, str] = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        match = _FIELD_LINE.match(line)
        if not match:
            return fields, "\n".join(lines[i:])
        fields[match.group(1)] = match.group(2).strip()
    return fields, ""


# ------------------------------------------------------------------------------------ cleaning


@dataclass(frozen=True)
class Cleaned:
    """A cleaned tune, or why there is none (``tune`` is None and ``reason`` says why)."""

    tune: str | None
    reason: str | None = None


def clean_tune(raw: str, number: int = 1) -> Cleaned:
    """The training form of one tune, or a reason to drop it.

    Keeps X (set to ``number``), the first T, R, M, L and K, in that order; adds L where missing
    (its default follows from M). In the music: drops comments, ``%%`` directives and every field
    line except a change of M, L or K; drops quoted text other than chord symbols (fingerings,
    tempo words, annotations) and stray ``!``; joins ``\\`` continuations; squeezes runs of
    spaces; removes blank lines. Drops tunes with several voices (V:), without M: or K:, or
    without music.
    """
    lines = _join_continuations([_strip_comment(line) for line in raw.split("\n")])
    head, music = split_header("\n".join(lines))
    fields: dict[str, str] = {}
    for line in head:
        match = _FIELD_LINE.match(line)
        if match is None:
            continue
        letter, value = match.group(1), _SPACES.sub(" ", match.group(2)).strip()
        if letter == "V":
            return Cleaned(None, "several voices")
        if letter in HEADER_ORDER and letter != "X" and letter not in fields and value:
            fields[letter] = value
    if "K" not in fields:
        return Cleaned(None, "no K: field")
    if "M" not in fields:
        return Cleaned(None, "no M: field")
    if "T" not in fields:
        fields["T"] = "Untitled"
    if "L" not in fields:
        fields["L"] = default_unit(fields["M"])
    kept = []
    for line in music:
        match = _FIELD_LINE.match(line)
        if match:
            if match.group(1) == "V":
                return Cleaned(None, "several voices")
            if match.group(1) in BODY_FIELDS and match.group(2).strip():
                kept.append(f"{match.group(1)}:{match.group(2).strip()}")
            continue
        line = _QUOTED.sub(lambda m: m.group(0) if _CHORD_SYMBOL.match(m.group(1)) else "", line)
        line = _BANG.sub(lambda m: m.group(1) or "", line)
        line = _SPACES.sub(" ", line).strip()
        if line:
            kept.append(line)
    while kept and _FIELD_LINE.match(kept[-1]):  # a trailing key change with no music after it
        kept.pop()
    if not any(re.search(r"[A-Ga-g]", line) for line in kept if not _FIELD_LINE.match(line)):
        return Cleaned(None, "no music")
    fields["X"] = str(number)
    return Cleaned(header_lines(fields) + "\n".join(kept))


def music_key(tune: str) -> str:
    """What makes two tunes the same music: meter, unit, key and notes, ignoring X, T, R and
    spacing. Used to find duplicates and exact copies."""
    fields = headers(tune)
    notes = re.sub(r"\s+", "", body(tune))
    return f"{fields.get('M', '')}|{fields.get('L', '')}|{fields.get('K', '')}|{notes}"


def _strip_comment(line: str) -> str:
    if line.startswith("%%"):
        return ""
    at = line.find("%")
    return (line if at < 0 else line[:at]).rstrip()


def _join_continuations(lines: list[str]) -> list[str]:
    """ABC's ``\\`` at the end of a line continues the music on the next line."""
    joined: list[str] = []
    carry = ""
    for line in lines:
        if line.endswith("\\"):
            carry += line[:-1] + " "
            continue
        joined.append(carry + line if carry else line)
        carry = ""
    if carry:
        joined.append(carry.rstrip())
    return joined


# ------------------------------------------------------------------------------ meter and bars


def meter_length(meter: str) -> Fraction | None:
    """Length of one bar of ``meter`` in whole notes; None for free meter (``none``, unreadable)."""
    meter = meter.strip()
    if meter == "C":
        return Fraction(1)
    if meter == "C|":
        return Fraction(1)
    match = _METER.match(meter)
    if not match:
        return None
    numerator = sum(int(n) for n in match.group(1).split("+"))
    denominator = int(match.group(2))
    if numerator == 0 or denominator == 0:
        return None
    return Fraction(numerator, denominator)


_KEY = re.compile(r"^\s*(?:([A-G][#b]?)\s*([A-Za-z]*)|none|HP|Hp)(?:\s|$)")
_MODES = ("", "m", "min", "maj", "ion", "dor", "phr", "lyd", "mix", "aeo", "loc")


def key_readable(key: str) -> bool:
    """Whether a K: value names a key: a tonic (with # or b) and an optional mode, or none/HP."""
    match = _KEY.match(key)
    if not match:
        return False
    mode = (match.group(2) or "").lower()
    return mode[:3] in _MODES or mode == "m"


def default_unit(meter: str) -> str:
    """ABC's default unit note length: 1/16 for a meter below 3/4, else 1/8 (free meter: 1/8)."""
    length = meter_length(meter)
    return "1/16" if length is not None and length < Fraction(3, 4) else "1/8"


def unit_length(value: str) -> Fraction | None:
    match = _UNIT.match(value)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        return None
    return Fraction(int(match.group(1)), int(match.group(2)))


@dataclass
class Bar:
    """One bar of music: its length in whole notes and the bar lines around it."""

    length: Fraction
    expected: Fraction | None  # the meter's bar length when the bar started; None: free meter
    opens: str  # the bar line before it ("" at the start of the tune)
    closes: str  # the bar line after it ("" at the end of the tune)
    rests: int = 0  # a multi-bar rest Z4 stands for this many full bars
    unknown: list[str] = field(default_factory=list)  # symbols the measure could not read


_BODY_TOKEN = re.compile(
    r"""
    (?P<field>\[[A-Za-z]:[^\]\n]*\])
  | (?P<line_field>^[A-Za-z]:(?!\|)[^\n]*$)
  | (?P<skip>"[^"\n]*"|![^!\s|]+!|\+[^+\n]*\+|\{[^}\n]*\}|%[^\n]*)
  | (?P<bar>\[\||:*\|+[\]:]*(?:\[?\d+(?:[,-]\d+)*)?|::+|\[\d+(?:[,-]\d+)*)
  | (?P<tuplet>\((?P<p>\d)(?::(?P<q>\d*))?(?::(?P<r>\d*))?)
  | (?P<chord_open>\[)
  | (?P<chord_close>\](?P<chord_len>\d*/*\d*))
  | (?P<note>(?:[_^=]*[A-Ga-g][,']*|[zx])(?P<len>\d*/*\d*))
  | (?P<mrest>[ZX](?P<count>\d*))
  | (?P<broken>[<>]+)
  | (?P<newline>\n)
  | (?P<ignore>[\s()\-.~`yH-Wh-w*&\\])
  | (?P<other>.)
    """,
    re.VERBOSE | re.MULTILINE,
)

_DEFAULT_TUPLET_Q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}


def _length(text: str) -> Fraction:
    """An ABC length multiplier: ``2`` ``/2`` ``3/2`` ``//`` ``/`` ``3/``; empty is 1."""
    if not text:
        return Fraction(1)
    if "/" not in text:
        return Fraction(int(text))
    numerator, _, rest = text.partition("/")
    slashes = 1 + len(rest) - len(rest.lstrip("/"))
    rest = rest.lstrip("/")
    top = int(numerator) if numerator else 1
    if rest:
        return Fraction(top, int(rest))
    return Fraction(top, 2**slashes)


def bars(tune: str) -> list[Bar]:
    """Every bar of ``tune`` with its length in whole notes.

    Follows M:, L: and K: changes in the music (inline or on their own line), chords (the length
    of their first note times the chord's own), tuplets, broken rhythm (``>``: dotted then halved),
    multi-bar rests, and grace notes (no length). A line break ends a bar only where the bar is
    exactly full; empty bars (two bar lines in a row) are left out.
    """
    fields = headers(tune)
    meter = meter_length(fields.get("M", "none"))
    unit = unit_length(fields.get("L", "")) or unit_length(default_unit(fields.get("M", "")))
    found: list[Bar] = []
    current = Bar(Fraction(0), meter, "", "")
    has_notes = False
    tuplet_left, tuplet_factor = 0, Fraction(1)
    broken_next: Fraction | None = None  # factor for the note after a broken-rhythm mark
    last_note: Fraction | None = None  # length of the previous note, for broken rhythm
    chord: list[Fraction] | None = None  # lengths of the notes of an open chord

    def add(length: Fraction) -> None:
        nonlocal tuplet_left, broken_next, last_note, has_notes
        if tuplet_left > 0:
            length *= tuplet_factor
            tuplet_left -= 1
        if broken_next is not None:
            length *= broken_next
            broken_next = None
        if not has_notes:
            current.expected = meter
        current.length += length
        last_note = length
        has_notes = True

    for match in _BODY_TOKEN.finditer(body(tune)):
        kind = match.lastgroup
        text = match.group(0)
        if kind in ("field", "line_field"):
            inner = text.strip("[]")
            letter, value = inner[0], inner[2:].strip()
            if letter == "M":
                meter = meter_length(value)
                if not has_notes:
                    current.expected = meter
            elif letter == "L":
                unit = unit_length(value) or unit
        elif kind == "bar":
            if has_notes or current.rests:
                current.closes = text
                found.append(current)
            current = Bar(Fraction(0), meter, text, "")
            has_notes = False
            last_note = None
            broken_next = None
        elif kind == "newline":
            # A line break is no bar line, but many collections (Essen's among them) end a line
            # with a complete bar and no bar line: close the bar there when it is exactly full.
            if has_notes and current.expected is not None and current.length == current.expected:
                found.append(current)
                current = Bar(Fraction(0), meter, "", "")
                has_notes = False
                last_note = None
                broken_next = None
        elif kind == "tuplet":
            p = int(match.group("p"))
            if p < 2:
                current.unknown.append(text)
                continue
            q_text, r_text = match.group("q"), match.group("r")
            compound = meter is not None and meter.denominator == 8 and meter.numerator % 3 == 0
            q = int(q_text) if q_text else _DEFAULT_TUPLET_Q.get(p, 3 if compound else 2)
            tuplet_left = int(r_text) if r_text else p
            tuplet_factor = Fraction(q, p)
        elif kind == "chord_open":
            chord = []
        elif kind == "chord_close":
            if chord is None:
                current.unknown.append("]")
                continue
            inner = chord[0] if chord else Fraction(0)
            chord = None
            if inner:
                add(unit * inner * _length(match.group("chord_len")))
        elif kind == "note":
            length = _length(match.group("len"))
            if chord is not None:
                chord.append(length)
            else:
                add(unit * length)
        elif kind == "mrest":
            current.rests += int(match.group("count") or 1)
        elif kind == "broken":
            if last_note is None:
                current.unknown.append(text)
                continue
            # a>b dots a and halves b (a>>b: double dot, quarter); a<b the other way round
            short = Fraction(1, 2 ** len(text))
            first, second = (2 - short, short) if text[0] == ">" else (short, 2 - short)
            current.length += last_note * (first - 1)
            broken_next = second
        elif kind == "other":
            current.unknown.append(text)
    if has_notes or current.rests:
        found.append(current)
    return found


STRUCTURAL = re.compile(r"[:\]\d]|\|\||\[\|")
"""Bar lines around which a short bar is normal: repeats, endings, double and final bars."""


def bar_problems(measured: list[Bar]) -> list[tuple[int, str]]:
    """(bar number from 1, what is wrong) for bars whose length disagrees with the meter.

    A bar may be short at the start (a pickup) and at the end of the tune, and next to repeat
    signs, first and second endings, and double bars, where pickups and split bars are usual.
    A bar is never allowed to be too long.
    """
    problems = []
    last = len(measured) - 1
    for i, bar in enumerate(measured):
        if bar.unknown:
            shown = " ".join(dict.fromkeys(bar.unknown))
            problems.append((i + 1, f"unreadable symbols: {shown}"))
            continue
        if bar.expected is None or bar.rests:
            continue
        if bar.length > bar.expected:
            problems.append((i + 1, f"too long: {_fmt(bar.length)} for {_fmt(bar.expected)}"))
        elif bar.length < bar.expected:
            near_structure = STRUCTURAL.search(bar.opens) or STRUCTURAL.search(bar.closes)
            if i not in (0, last) and not near_structure:
                problems.append((i + 1, f"too short: {_fmt(bar.length)} for {_fmt(bar.expected)}"))
    return problems


def _fmt(length: Fraction) -> str:
    return f"{length.numerator}/{length.denominator}"
