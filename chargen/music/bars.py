"""Bar arithmetic: the length of every bar of a tune in whole notes, and the bars that disagree
with their meter.

``bars`` follows the music token by token (notes, rests, chords, tuplets, broken rhythm, ties,
meter and unit changes); ``bar_problems`` says which bars are too long or too short, allowing
the short bars that folk tunes have at pickups, repeats and endings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from chargen.music.notation import (
    TUPLET_Q,
    body,
    compound,
    default_unit,
    headers,
    meter_length,
    unit_length,
)


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
    measure = Measure(fields.get("M", "none"), fields.get("L", ""))
    for match in _BODY_TOKEN.finditer(body(tune)):
        measure.feed(match)
    return measure.finish()


class Measure:
    """Bar lengths of music fed to it one token (a match of ``_BODY_TOKEN``) at a time."""

    def __init__(self, meter: str, unit: str):
        self.meter = meter_length(meter)
        self.compound = compound(meter)
        self.unit = unit_length(unit) or unit_length(default_unit(meter))
        self.found: list[Bar] = []
        self.current = Bar(Fraction(0), self.meter, "", "")
        self.has_notes = False
        self.tuplet_left, self.tuplet_factor = 0, Fraction(1)
        self.broken_next: Fraction | None = None  # factor for the note after a broken rhythm
        self.last_note: Fraction | None = None  # length of the previous note, for broken rhythm
        self.chord: list[Fraction] | None = None  # lengths of the notes of an open chord

    def feed(self, match: re.Match) -> None:
        handler = getattr(self, f"_{match.lastgroup}", None)
        if handler is not None:
            handler(match)

    def finish(self) -> list[Bar]:
        """The bars measured, the one still open included."""
        if self.has_notes or self.current.rests:
            self.found.append(self.current)
        return self.found

    def _add(self, length: Fraction) -> None:
        if self.tuplet_left > 0:
            length *= self.tuplet_factor
            self.tuplet_left -= 1
        if self.broken_next is not None:
            length *= self.broken_next
            self.broken_next = None
        if not self.has_notes:
            self.current.expected = self.meter
        self.current.length += length
        self.last_note = length
        self.has_notes = True

    def _new_bar(self, opens: str) -> None:
        self.current = Bar(Fraction(0), self.meter, opens, "")
        self.has_notes = False
        self.last_note = None
        self.broken_next = None

    def _field(self, match: re.Match) -> None:
        inner = match.group(0).strip("[]")
        letter, value = inner[0], inner[2:].strip()
        if letter == "M":
            self.meter = meter_length(value)
            self.compound = compound(value)
            if not self.has_notes:
                self.current.expected = self.meter
        elif letter == "L":
            self.unit = unit_length(value) or self.unit

    _line_field = _field

    def _bar(self, match: re.Match) -> None:
        if self.has_notes or self.current.rests:
            self.current.closes = match.group(0)
            self.found.append(self.current)
        self._new_bar(match.group(0))

    def _newline(self, match: re.Match) -> None:
        # A line break is no bar line, but many collections (Essen's among them) end a line
        # with a complete bar and no bar line: close the bar there when it is exactly full.
        current = self.current
        if self.has_notes and current.expected is not None and current.length == current.expected:
            self.found.append(current)
            self._new_bar("")

    def _tuplet(self, match: re.Match) -> None:
        p = int(match.group("p"))
        if p < 2:
            self.current.unknown.append(match.group(0))
            return
        q_text, r_text = match.group("q"), match.group("r")
        q = int(q_text) if q_text else TUPLET_Q.get(p, 3 if self.compound else 2)
        self.tuplet_left = int(r_text) if r_text else p
        self.tuplet_factor = Fraction(q, p)

    def _chord_open(self, match: re.Match) -> None:
        self.chord = []

    def _chord_close(self, match: re.Match) -> None:
        if self.chord is None:
            self.current.unknown.append("]")
            return
        inner = self.chord[0] if self.chord else Fraction(0)
        self.chord = None
        if inner:
            self._add(self.unit * inner * _length(match.group("chord_len")))

    def _note(self, match: re.Match) -> None:
        length = _length(match.group("len"))
        if self.chord is not None:
            self.chord.append(length)
        else:
            self._add(self.unit * length)

    def _mrest(self, match: re.Match) -> None:
        self.current.rests += int(match.group("count") or 1)

    def _broken(self, match: re.Match) -> None:
        text = match.group(0)
        if self.last_note is None:
            self.current.unknown.append(text)
            return
        # a>b dots a and halves b (a>>b: double dot, quarter); a<b the other way round
        short = Fraction(1, 2 ** len(text))
        first, second = (2 - short, short) if text[0] == ">" else (short, 2 - short)
        self.current.length += self.last_note * (first - 1)
        self.broken_next = second

    def _other(self, match: re.Match) -> None:
        self.current.unknown.append(match.group(0))


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
