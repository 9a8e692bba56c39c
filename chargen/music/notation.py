"""ABC notation as text: tunes, headers, cleaning, meters, keys and unit lengths.

What this module does, all on plain strings and without music21:

- ``split_tunes`` cuts an ABC file into tunes (each starts at an ``X:`` line);
- ``clean_tune`` turns one tune into the training form: musical headers only (X, T, R, M, L, K)
  in a fixed order, comments, annotations and fingerings dropped, continuations joined, no blank
  line inside (a blank line, ``TUNE_END``, ends a tune);
- ``headers``/``body``/``renumber`` read and rewrite a tune;
- ``meter_length``, ``unit_length`` and ``key_readable`` read header values.

Bar lengths are measured in ``chargen.music.bars``; parsing with music21 and export are elsewhere
in ``chargen.music``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from chargen.text.tokenizer import PIECE_END

TUNE_END = PIECE_END
"""A tune ends at a blank line: the corpus separates tunes with one, so the model learns it."""

HEADER_ORDER = "XORTMLK"
"""The headers a cleaned tune keeps, in this order: X first and K last, as ABC wants; the origin
(O:) and rhythm (R:) before the title, so that a model writes a title that suits them."""

REQUIRED_HEADERS = "XTMK"
"""Headers a tune must have to pass the check; L has a default that follows from M."""

BODY_FIELDS = "MLK"
"""Fields kept when they appear inside the music: a change of meter, unit length or key."""

FIELD_LINE = re.compile(r"^([A-Za-z]):(?!\|)(.*)$")  # "B:|" is music, not a field
_X_LINE = re.compile(r"^X:", re.MULTILINE)
_QUOTED = re.compile(r'"([^"\n]*)"')
_CHORD_SYMBOL = re.compile(
    r"^[A-G][#b]?(?:m|min|maj|dim|aug|sus|M|o|\+)?\d*(?:sus\d|add\d|[#b]\d)*(?:/[A-Ga-g][#b]?)?$"
)
_SPACES = re.compile(r"[ \t]+")

BAR_LINE = re.compile(r"\[\||:*\|+[\]:]*\d*|::+\d*|\[\d+")
"""A bar line: plain, double, final, repeats (``|:`` ``:|`` ``::``), endings (``|1`` ``[2``);
the same as the ``abc`` tokenizer's bar-line piece."""

SECTION_END = re.compile(r":\||\|\||\|\]|::")
"""What in a bar line ends a part: an end repeat, a double or a final bar line (a bar line with
an ending number, ``:|2``, ends a first ending, not a part)."""

TUPLET_Q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}
"""How many notes' time a tuplet of p notes takes, where ``(p`` gives no q (for 5, 7 and 9: 2
in simple meter, 3 in compound)."""
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
        if not FIELD_LINE.match(line):
            return lines[:i], lines[i:]
    return lines, []


def headers(tune: str) -> dict[str, str]:
    """The header fields of a tune, letter to value (stripped); the first of a repeated field."""
    found: dict[str, str] = {}
    for line in split_header(tune)[0]:
        match = FIELD_LINE.match(line)
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
        match = FIELD_LINE.match(line)
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


RHYTHMS = {
    "reel": ("reel",),
    "jig": ("jig", "double jig", "single jig"),
    "slip jig": ("slip jig", "slipjig", "hop jig"),
    "hornpipe": ("hornpipe", "clog"),
    "strathspey": ("strathspey", "highland fling", "fling"),
    "air": ("air", "slow air"),
    "song": ("song", "lied", "ballad", "ballade"),
}
"""The rhythms a cleaned tune's R: names, and spellings the collections use for each: they
write ``reel``, ``Reel``, ``double jig``, ``Liebes - Lied`` and some hundreds more. These are the
rhythms music21's collections have at least twenty tunes of (counts in docs/music.md); they have
three waltzes, two slides, one march, and no polka or mazurka."""


RHYTHM_METERS = {
    "reel": ("C|", "2/2", "C", "4/4", "2/4"),
    "jig": ("6/8", "12/8"),
    "slip jig": ("9/8",),
    "hornpipe": ("C|", "2/2", "C", "4/4", "2/4"),
    "strathspey": ("C", "4/4", "C|", "2/2"),
}
"""The meters a dance rhythm is written in: a jig in 3/4 is no jig. Counted in corpora/folk.abc
(2026-11-30): 450 of 483 jigs are in 6/8 (22 in 9/8, 11 in 2/4 or C|), all 91 slip jigs in 9/8,
reels 402 in C| and 241 in 2/4, hornpipes 233 in 2/4 and 227 in C|, strathspeys 34 in C and 13
in C|. Airs and songs take any meter."""


DANCE_STYLES = ("irish", "american")
"""The traditions in which the corpus has the rhythms of ``RHYTHM_METERS``: in corpora/folk.abc
every reel, jig, slip jig, hornpipe and strathspey but two hornpipes is Irish or American
(Aird's Scottish airs and the English tunes have no R:, the German and Chinese tunes are all
songs). A dance asked for without a style gets one of these; ``--style scottish`` still asks
for a Scottish one."""


def rhythm_of(value: str) -> str | None:
    """The rhythm an R: value names (a key of ``RHYTHMS``), or None where it names none."""
    squeezed = " ".join(re.sub(r"[-\]\[]", " ", value.lower()).split())
    for rhythm, spellings in RHYTHMS.items():
        if squeezed in spellings:
            return rhythm
    return None


def clean_tune(
    raw: str, number: int = 1, origin: str | None = None, rhythm: str | None = None
) -> Cleaned:
    """The training form of one tune, or a reason to drop it.

    Keeps X (set to ``number``), O (set to ``origin``, the tradition of the tune's collection;
    none without one), R (``rhythm`` where given, else the one of ``RHYTHMS`` the tune's R:
    names, else none), the first T, M, L and K, in the order of ``HEADER_ORDER``; adds L where
    missing (its default follows from M). In the music: drops comments, ``%%`` directives and
    every field line except a change of M, L or K; drops quoted text other than chord symbols
    (fingerings, tempo words, annotations) and stray ``!``; joins ``\\`` continuations;
    squeezes runs of spaces; removes blank lines. Drops tunes with several voices (V:),
    without M: or K:, or without music.
    """
    lines = _join_continuations([_strip_comment(line) for line in raw.split("\n")])
    head, music = split_header("\n".join(lines))
    try:
        fields = _clean_headers(head)
        kept = _clean_music(music)
    except _Dropped as exc:
        return Cleaned(None, str(exc))
    fields["X"] = str(number)
    fields.pop("O", None)
    if origin:
        fields["O"] = origin
    rhythm = rhythm or rhythm_of(fields.pop("R", ""))
    fields.pop("R", None)
    if rhythm:
        fields["R"] = rhythm
    return Cleaned(header_lines(fields) + "\n".join(kept))


class _Dropped(Exception):
    """A tune that cannot be used, and why."""


def _clean_headers(head: list[str]) -> dict[str, str]:
    """The first T, R, M, L and K of a tune's header; a title and L added where missing."""
    fields: dict[str, str] = {}
    for line in head:
        match = FIELD_LINE.match(line)
        if match is None:
            continue
        letter, value = match.group(1), _SPACES.sub(" ", match.group(2)).strip()
        if letter == "V":
            raise _Dropped("several voices")
        if letter in HEADER_ORDER and letter != "X" and letter not in fields and value:
            fields[letter] = value
    if "K" not in fields:
        raise _Dropped("no K: field")
    if "M" not in fields:
        raise _Dropped("no M: field")
    fields.setdefault("T", "Untitled")
    fields.setdefault("L", default_unit(fields["M"]))
    return fields


def _clean_music(music: list[str]) -> list[str]:
    """The music lines cleaned: M, L and K changes kept, other fields, annotations, fingerings
    and stray ``!`` dropped, spaces squeezed, blank lines removed."""
    kept = []
    for line in music:
        match = FIELD_LINE.match(line)
        if match:
            if match.group(1) == "V":
                raise _Dropped("several voices")
            if match.group(1) in BODY_FIELDS and match.group(2).strip():
                kept.append(f"{match.group(1)}:{match.group(2).strip()}")
            continue
        line = _QUOTED.sub(lambda m: m.group(0) if _CHORD_SYMBOL.match(m.group(1)) else "", line)
        line = _BANG.sub(lambda m: m.group(1) or "", line)
        line = _SPACES.sub(" ", line).strip()
        if line:
            kept.append(line)
    while kept and FIELD_LINE.match(kept[-1]):  # a trailing key change with no music after it
        kept.pop()
    if not any(re.search(r"[A-Ga-g]", line) for line in kept if not FIELD_LINE.match(line)):
        raise _Dropped("no music")
    return kept


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
    if not 0 < numerator <= MAX_BEATS or denominator not in NOTE_VALUES:
        return None
    return Fraction(numerator, denominator)


MAX_BEATS = 64
"""Most beats a meter may have: far past any tune (12/8 is common, 4/1 rare), and a bound on
what a hostile tune can make a parser allocate."""

NOTE_VALUES = (1, 2, 4, 8, 16, 32, 64)
"""Note values a meter's beat or a unit length may be (whole note to sixty-fourth)."""


_KEY = re.compile(r"^\s*(?:([A-G][#b]?)\s*([A-Za-z]*)|none|HP|Hp)(?:\s|$)")
_MODES = ("", "m", "min", "maj", "ion", "dor", "phr", "lyd", "mix", "aeo", "loc")


def key_readable(key: str) -> bool:
    """Whether a K: value names a key: a tonic (with # or b) and an optional mode, or none/HP."""
    match = _KEY.match(key)
    if not match:
        return False
    mode = (match.group(2) or "").lower()
    return mode[:3] in _MODES or mode == "m"


def compound(meter: str) -> bool:
    """Whether ``meter`` is compound (6/8, 9/8, 12/8, 6/4: beats of three): a tuplet's default
    q and a tempo's beat follow from it."""
    match = _METER.match(meter)
    if not match:
        return False
    top = sum(int(n) for n in match.group(1).split("+"))
    return top % 3 == 0 and top > 3 and int(match.group(2)) >= 4


def default_unit(meter: str) -> str:
    """ABC's default unit note length: 1/16 for a meter below 3/4, else 1/8 (free meter: 1/8)."""
    length = meter_length(meter)
    return "1/16" if length is not None and length < Fraction(3, 4) else "1/8"


def unit_length(value: str) -> Fraction | None:
    """The unit note length of an L: value (``1/8``); None where it is unreadable or absurd."""
    match = _UNIT.match(value)
    if not match or not 0 < int(match.group(1)) <= MAX_BEATS:
        return None
    if int(match.group(2)) not in NOTE_VALUES:
        return None
    return Fraction(int(match.group(1)), int(match.group(2)))


def engravable(value: Fraction) -> bool:
    """Whether a note of ``value`` units (a power of two long) is one note on the page: plain,
    dotted or double-dotted (1, 3 or 7 times a power of two). ``F5`` is no such note:
    abcm2ps refuses it ("Note too much dotted"); the corpus has none."""
    odd = value.numerator
    while odd % 2 == 0:
        odd //= 2
    return odd in (1, 3, 7)
