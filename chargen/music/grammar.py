"""Tunes right by construction: which tokens may come next in a tune, so that it is always valid.

``TuneGrammar`` follows a tune token by token as it is written and says, before each token,
which tokens may come next (``allowed``):

- the header: the X: number (digits, the model's own; renumbered later), then the fields in
  ``HEADER_ORDER``, each once, T:, M:, L: and K: never skipped, each value one the model's
  vocabulary has for that field (or the one a caller asked for), and a title that starts with
  a letter;
- the music: notes, rests, chords, tuplets, broken rhythm, ties, slurs, grace notes, rolls and
  chord symbols, with the arithmetic of ``chargen.music.bars``: no note that would overflow its
  bar, no bar line that closes a bar early (except where the check allows a short bar: a pickup,
  next to repeats, endings and double bars), no field lines or inline fields, nothing the check
  cannot read;
- the end (the blank line): after whole bars, and where a ``Form`` is asked for, only when the
  tune has its number of bars and parts.

A tune written under the grammar passes ``chargen.music.check``'s header and bar checks; a
property test walks random allowed tokens to hold it to that. Masks are cached by state, so a
step costs a dictionary lookup for most tokens. Nothing here samples or imports torch's model.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from chargen.errors import UsageError
from chargen.music.bars import STRUCTURAL
from chargen.music.notation import (
    BAR_LINE,
    DANCE_STYLES,
    HEADER_ORDER,
    RHYTHM_METERS,
    RHYTHMS,
    SECTION_END,
    TUPLET_Q,
    compound,
    default_unit,
    engravable,
    key_readable,
    meter_length,
    unit_length,
)
from chargen.text.tokenizer import Tokenizer

REQUIRED = "TMLK"
"""Header fields every tune writes (X: comes with the prompt)."""

MAX_NUMBER_DIGITS = 6
MAX_TITLE_TOKENS = 60
MAX_CHORD_NOTES = 4
MAX_GRACE_NOTES = 4
MAX_SLURS = 2
CADENCE_BARS = 32
"""Bars after which a tune may end anywhere: a model kept from ending off the tonic may
wander on; twice the corpus's median tune is long enough to wait for a cadence."""
MAX_CACHED_MASKS = 20_000  # about 20 MB with a vocabulary of 700 tokens

_NOTE = re.compile(r"^(?:[_^=]{0,2}[A-Ga-g][,']*|z)$")  # a note or a rest (not x: invisible)
_DURATION = re.compile(r"^(\d*)(/+)(\d*)$|^([1-9])$")
_TUPLET = re.compile(r"^\((\d)(?::(\d*))?(?::(\d*))?$")
_CHORD_SYMBOL = re.compile(r'^"[A-G][#b]?(?:m|min|maj|dim|aug|sus|add)?\d*(?:/[A-G][#b]?)?"$')
_FIELD = re.compile(r"^([A-Za-z]):$")
_STYLE_WORD = re.compile(r"^[a-z][a-z ]{2,}$")
_ENDING = re.compile(r"\d")


@dataclass(frozen=True)
class Form:
    """The shape a tune is asked to have: ``bars`` bars of music (a pickup and the short bar
    that completes it count as one), in ``parts`` parts (each ended by a repeat sign or a
    double or final bar line); None leaves it to the model."""

    bars: int | None = None
    parts: int | None = None

    def __post_init__(self):
        if self.bars is not None and not 1 <= self.bars <= 256:
            raise UsageError("--bars must be between 1 and 256")
        if self.parts is not None and not 1 <= self.parts <= 8:
            raise UsageError("--parts must be between 1 and 8")
        if self.bars and self.parts and self.bars % self.parts:
            raise UsageError(
                f"--bars {self.bars} cannot split into {self.parts} equal parts; "
                "give a multiple of --parts"
            )

    def part_bars(self, part: int) -> int | None:
        """Bars the tune has at the end of part ``part`` (from 1), where bars are asked for."""
        if self.bars is None:
            return None
        return self.bars * part // (self.parts or 1)


class Vocabulary:
    """What each token of an abc tokenizer is to the grammar, as masks over the vocabulary."""

    def __init__(self, pieces: tuple[str, ...]):
        self.pieces = pieces
        self.size = len(pieces)
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.fields = {m.group(1): i for i, p in enumerate(pieces) if (m := _FIELD.match(p))}
        self.note = self.where(lambda p: bool(_NOTE.match(p)))
        self.pitch = self.note & self.where(lambda p: "z" not in p)  # notes, not rests
        self.durations = _durations(pieces)  # (id, multiplier)
        # the multipliers a note may have, shortest first (1: no duration written)
        self.lengths = tuple(sorted({Fraction(1)} | {m for _, m in self.durations}))
        self.bars = [(i, p) for i, p in enumerate(pieces) if BAR_LINE.fullmatch(p)]
        self.tuplets = [i for i, p in enumerate(pieces) if (m := _TUPLET.match(p)) and m[1] >= "2"]
        self.broken = [(i, p) for i, p in enumerate(pieces) if p in (">", "<", ">>", "<<")]
        self.chord_symbol = self.where(lambda p: bool(_CHORD_SYMBOL.match(p)))
        self.digits = {i: p for i, p in enumerate(pieces) if len(p) == 1 and p.isdigit()}
        self.title = self.where(lambda p: "\n" not in p and p != "<unk>")
        self.title_first = self.title & self.where(lambda p: p[:1].isalpha() or p[:1] in "\"'(")
        self.values = _header_values(pieces)
        self.kinds = [_kind(p) for p in pieces]
        self.multipliers = dict(self.durations)
        self._scaled: dict[int, tuple] = {}
        self._same: dict[str, np.ndarray] = {}
        self._fillable: dict[tuple, bool] = {}

    def same_pitch(self, piece: str) -> np.ndarray:
        """Notes that repeat ``piece`` after a tie: its letter and octave, with its accidental
        or none (an accidental holds through the bar, and a tied note keeps its own)."""
        found = self._same.get(piece)
        if found is None:
            accidental, rest = re.match(r"([_^=]*)(.*)", piece).groups()
            found = self.where(lambda p: p in (rest, piece) if accidental else p == rest)
            self._same[piece] = found
        return found

    def scaled(self, base: int) -> tuple[tuple[int | None, int], ...]:
        """(duration token, length) of a note of ``base`` ticks with each multiplier that gives
        a whole number of ticks; None stands for no duration written (a multiplier of 1)."""
        found = self._scaled.get(base)
        if found is None:
            found = tuple(
                (token, base * m.numerator // m.denominator)
                for token, m in ((None, Fraction(1)), *self.durations)
                if base * m.numerator % m.denominator == 0
            )
            self._scaled[base] = found
        return found

    def fillable(self, room: int, owed: int, tuplet_note: int, unit: int) -> bool:
        """Whether ``room`` ticks can be filled exactly by ``owed`` notes of ``tuplet_note``
        times a multiplier each, then by notes of ``unit`` times one (the shortest multiplier
        makes any multiple of it)."""
        key = (room, owed, tuplet_note, unit)
        found = self._fillable.get(key)
        if found is None:
            if owed == 0:
                found = (
                    room % max(unit * self.lengths[0].numerator // self.lengths[0].denominator, 1)
                    == 0
                )
            else:
                found = any(
                    self.fillable(room - length, owed - 1, tuplet_note, unit)
                    for _, length in self.scaled(tuplet_note)
                    if 0 < length <= room
                )
            self._fillable[key] = found
        return found

    def units_for(self, meter: str) -> np.ndarray:
        """The L: values under which notes can fill a bar of ``meter`` exactly."""
        bar = meter_length(meter)
        finest = self.lengths[0]

        def fills(piece: str) -> bool:
            unit = unit_length(piece)
            return bar is None or (unit is not None and bar % (unit * finest) == 0)

        return self.where(fills)

    def where(self, test) -> np.ndarray:
        return np.array([test(p) for p in self.pieces], dtype=bool)

    def mask(self, ids) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        mask[list(ids)] = True
        return mask

    def id(self, piece: str) -> int | None:
        return self.ids.get(piece)

    def value_id(self, letter: str, value: str) -> int:
        """The token of a requested header value; ``UsageError`` if the model has none."""
        token = self.ids.get(value)
        if token is None or not self.values[letter][token]:
            known = sorted(self.pieces[i] for i in np.flatnonzero(self.values[letter]))
            shown = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
            name = {"M": "meter", "L": "unit length", "K": "key", "R": "rhythm", "O": "style"}
            raise UsageError(
                f"the model never wrote the {name[letter]} {value!r} in a tune; "
                f"it knows: {shown or 'none'}"
            )
        return token


@functools.lru_cache(maxsize=8)
def vocabulary(pieces: tuple[str, ...]) -> Vocabulary:
    return Vocabulary(pieces)


def _durations(pieces) -> list[tuple[int, Fraction]]:
    found = []
    for i, piece in enumerate(pieces):
        match = _DURATION.match(piece)
        if not match:
            continue
        if match.group(4):
            found.append((i, Fraction(int(match.group(4)))))
            continue
        top, slashes, bottom = match.group(1), match.group(2), match.group(3)
        if (bottom and len(slashes) > 1) or (bottom and int(bottom) == 0) or top == "0":
            continue
        value = Fraction(int(top or 1), int(bottom) if bottom else 2 ** len(slashes))
        if value <= 8 and value.denominator <= 8:
            found.append((i, value))
    return [(i, value) for i, value in found if engravable(value)]


def _header_values(pieces) -> dict[str, np.ndarray]:
    """Tokens that may stand as the whole value of M:, L:, K:, R: and O: (the ``abc`` level cuts
    each value as one token). O: values are the lowercase words no other field uses."""

    def test(letter: str, piece: str) -> bool:
        if letter == "M":
            return meter_length(piece) is not None or piece in ("C", "C|")
        if letter == "L":
            return unit_length(piece) is not None and piece.startswith("1/")
        if letter == "K":
            return key_readable(piece) and piece[:1] in "ABCDEFG" and "\n" not in piece
        if letter == "R":
            return piece in RHYTHMS
        return bool(_STYLE_WORD.match(piece)) and piece not in RHYTHMS and piece != "none"

    return {letter: np.array([test(letter, p) for p in pieces], dtype=bool) for letter in "MLKRO"}


# ---------------------------------------------------------------------------------- music


TICKS = 2**14 * 3**2 * 5 * 7
"""Ticks in a whole note: every length the grammar meets is a whole number of them (units down
to 1/64, multipliers down to 1/8, broken rhythm to 1/4, tuplets of 2 to 9), so that the
arithmetic is on integers."""


def ticks(length: Fraction) -> int | None:
    """``length`` (in whole notes) in ticks; None where it is no whole number of them."""
    value = length * TICKS
    return value.numerator if value.denominator == 1 else None


@dataclass
class Music:
    """Where a tune's music stands: the bar being filled, the note or chord whose length may
    still follow, open tuplets, chords, grace notes and broken rhythm, and the form so far.
    Lengths are in ``TICKS``; ratios (tuplets, broken rhythm) are (numerator, denominator)."""

    meter: int | None  # the bar length; None: free meter
    unit: int
    compound: bool  # 6/8, 9/8, ...: a tuplet's q defaults differ
    filled: int = 0  # complete notes of the current bar
    pending: int | None = None  # a note or chord written whose length may still follow
    last: int | None = None  # the last complete note of this bar (broken rhythm)
    broken: tuple[int, int] | None = None  # the factor of the next note, after > or <
    tuplet_left: int = 0
    tuplet: tuple[int, int] = (1, 1)  # the factor of the open tuplet's notes, q/p
    chord: int = -1  # notes in the open chord; -1: none open
    chord_base: int = 0
    grace: int = -1  # notes in the open grace group; -1: none open
    lead: bool = False  # a decoration or chord symbol was written: a note must follow
    slurs: int = 0
    spaced: bool = False  # the last token was a space
    after_note: bool = False  # the last token ended a note or chord (a tie or > may follow)
    pitch: str | None = None  # the last single note, if it was the last note (not a chord, rest)
    tied: str | None = None  # after a tie: the note the next one must repeat
    has_notes: bool = False  # the current bar has notes
    opens_structural: bool = False  # the current bar opened with a repeat, ending, double bar
    closed: int = 0  # bars closed with notes in them
    bar_run: int = 0  # bar lines in a row
    bars: int = 0  # the length of the closed bars
    sections: int = 0  # parts closed by a repeat sign or a double or final bar line
    line: int = 0  # tokens on the current line
    notes: int = 0  # notes in the tune
    tonic: str = ""  # the letter of the key's tonic (D for K:Dmix)
    last_letter: str = ""  # the letter of the last note (rests and grace notes aside)
    closed_part: bool = False  # the last bar line ended a part, and no note came after it

    def key(self, form: Form) -> tuple:
        """What decides the mask, under ``form``: the bars and parts so far only where a
        form counts them (else every bar would be a new state, and the cache of no use)."""
        return (
            self.meter, self.unit, self.filled, self.pending, self.last, self.broken,
            self.tuplet_left, self.tuplet, self.chord, self.grace, self.lead,
            self.slurs, self.spaced, self.after_note, self.pitch is not None, self.tied,
            self.has_notes, self.opens_structural,
            self.closed == 0, self.closed >= CADENCE_BARS, min(self.bar_run, 2), self.line == 0,
            self.notes > 0,
            self.last_letter == self.tonic, self.closed_part,
            self.bars if form.bars else None, self.sections if form.parts else None,
        )  # fmt: skip

    def copy(self) -> Music:
        return Music(**self.__dict__)

    @property
    def in_group(self) -> bool:
        """Inside a chord, grace notes or a tuplet, or owing a note: no bar line, no line end."""
        return self.chord >= 0 or self.grace >= 0 or self.tuplet_left > 0 or self.lead

    def note_base(self) -> int | None:
        """The length of a note started now, before its own length multiplier (None: no whole
        number of ticks)."""
        top, bottom = self.unit, 1
        if self.tuplet_left > 0:
            top, bottom = top * self.tuplet[0], bottom * self.tuplet[1]
        if self.broken is not None:
            top, bottom = top * self.broken[0], bottom * self.broken[1]
        return top // bottom if top % bottom == 0 else None

    def tuplet_note(self) -> int:
        """The length of an open tuplet's note before its multiplier."""
        return self.unit * self.tuplet[0] // self.tuplet[1]

    def fits(self, length: int, tuplet_after: int, vocab: Vocabulary) -> bool:
        """Whether a note of ``length`` fits in the bar, leaving a room that notes can fill
        exactly: first the ``tuplet_after`` notes still owed to an open tuplet, then any."""
        if self.meter is None:
            return True
        room = self.meter - self.filled - length
        return room >= 0 and vocab.fillable(room, tuplet_after, self.tuplet_note(), self.unit)

    def close_note(self) -> None:
        """The pending note or chord takes its written length (no multiplier followed)."""
        if self.pending is not None:
            self.add(self.pending)
            self.after_note = True

    def add(self, length: int) -> None:
        self.filled += length
        self.last = length
        self.pending = None
        self.has_notes = True

    def start_note(self) -> int:
        """Begin a note or chord: its base length, with the open tuplet and broken rhythm."""
        base = self.note_base() or 0
        if self.tuplet_left > 0:
            self.tuplet_left -= 1
        self.broken = None
        self.lead = False
        self.notes += 1
        return base

    def close_bar(self, piece: str) -> None:
        if self.has_notes:
            self.closed += 1
            self.bars += self.filled
        ending = bool(_ENDING.search(piece))
        if ending and self.closed_part and self.bar_run > 0:
            self.sections -= 1  # ":|" then "[2": the first ending, not the end of a part
        self.closed_part = bool(SECTION_END.search(piece)) and not ending
        self.sections += self.closed_part
        self.filled, self.pending, self.last, self.broken = 0, None, None, None
        self.has_notes = False
        self.opens_structural = bool(STRUCTURAL.search(piece))
        self.bar_run += 1

    def whole_bars(self, length: int) -> int:
        """``length`` in bars, where a pickup and the short bar that completes it make one:
        the nearest whole number, a half rounded down (``chargen.music.stats`` counts so)."""
        return (2 * length + self.meter - 1) // (2 * self.meter) if self.meter else 0

    def bars_with_open(self) -> int:
        """The length of the bars so far, the open bar included."""
        return self.bars + (self.filled if self.has_notes else 0)


class MusicRules:
    """The masks of the music: what may follow a ``Music`` state under a ``Form``."""

    def __init__(self, vocab: Vocabulary, form: Form):
        self.v = vocab
        self.form = form
        v = vocab
        self.single = {p: v.id(p) for p in "\n ()-~.[]{}"}
        self.decorations = (
            v.mask(i for p in ("~", ".") if (i := v.id(p)) is not None) | v.chord_symbol
        )

    def mask(self, music: Music) -> np.ndarray:
        mask = np.zeros(self.v.size, dtype=bool)
        if music.pending is not None:
            plain = False  # whether the note may keep its length (no duration written)
            for token, length in self.v.scaled(music.pending):
                if music.fits(length, music.tuplet_left, self.v):
                    if token is None:
                        plain = True
                    else:
                        mask[token] = True
            if not plain:
                return mask  # the note must take a length that fits
            music = music.copy()
            music.close_note()
        if music.chord >= 0:
            return mask | self._in_chord(music)
        if music.grace >= 0:
            return mask | self._in_grace(music)
        return mask | self._free(music)

    def _in_chord(self, music: Music) -> np.ndarray:
        mask = self.v.pitch.copy() if music.chord < MAX_CHORD_NOTES else np.zeros_like(self.v.note)
        self._allow(mask, "]", music.chord >= 1)
        return mask

    def _in_grace(self, music: Music) -> np.ndarray:
        mask = self.v.pitch.copy() if music.grace < MAX_GRACE_NOTES else np.zeros_like(self.v.note)
        self._allow(mask, "}", music.grace >= 1)
        return mask

    def _free(self, music: Music) -> np.ndarray:
        """Between notes: what may start, follow or end here."""
        note = self._note_fits(music)
        if music.tied is not None:  # the tied note again: no other note, rest, chord or grace
            mask = self.v.same_pitch(music.tied) & note
            if music.lead:
                return mask
        else:
            mask = self.v.note & note
            self._allow(mask, "[", note)
            if music.lead:
                return mask
            self._allow(mask, "{", note and music.broken is None)
        after_note = music.after_note and music.last is not None
        if note and music.broken is None:
            mask |= self.decorations
            self._allow(mask, "(", music.slurs < MAX_SLURS)
            if music.tuplet_left == 0:
                mask |= self._tuplets(music)
        self._allow(mask, ")", music.slurs > 0 and after_note)
        # a tie only where the same note can follow in this bar: a tie across a bar line could
        # meet a bar line the form requires to end a part
        tie = after_note and note and music.broken is None and music.pitch is not None
        self._allow(mask, "-", tie)
        if music.broken is not None:
            return mask  # a broken rhythm's second note
        self._allow(mask, " ", music.line > 0 and not music.spaced)
        if music.tied is not None:
            return mask  # the tied note comes next: no bar line, line break or broken rhythm
        if after_note and music.tuplet_left == 0:
            mask |= self._broken(music)
        if not music.in_group:
            mask |= self._bar_lines(music)
            self._allow(mask, "\n", self._may_break_line(music))
        return mask

    def _allow(self, mask: np.ndarray, piece: str, condition: bool) -> None:
        token = self.single.get(piece)
        if condition and token is not None:
            mask[token] = True

    def _note_fits(self, music: Music) -> bool:
        """Whether a note (or chord) may start: it fits with some length, and the form has
        room for another bar where this one is empty."""
        if not music.has_notes and not self._may_start_bar(music):
            return False
        base = music.note_base()
        if not base:
            return False
        after = max(music.tuplet_left - 1, 0)
        return any(music.fits(length, after, self.v) for _, length in self.v.scaled(base))

    def _may_start_bar(self, music: Music) -> bool:
        part = min(music.sections + 1, self.form.parts or 1)
        target = self.form.part_bars(part)
        if self.form.parts and music.sections >= self.form.parts:
            return False
        return target is None or 2 * music.bars <= (2 * target - 1) * (music.meter or 0)

    def _tuplets(self, music: Music) -> np.ndarray:
        mask = np.zeros(self.v.size, dtype=bool)
        for token in self.v.tuplets:
            opened = music.copy()
            _tuplet(opened, self.v.pieces[token])
            mask[token] = music.meter is not None and self._note_fits(opened)
        return mask

    def _broken(self, music: Music) -> np.ndarray:
        mask = np.zeros(self.v.size, dtype=bool)
        for token, piece in self.v.broken:
            change, second = _broken_rhythm(music.last, piece)
            if change is None:
                continue
            grown = music.copy()
            grown.filled, grown.broken = music.filled + change, second
            if grown.meter is None or (grown.filled < grown.meter and self._note_fits(grown)):
                mask[token] = True
        return mask

    def _bar_lines(self, music: Music) -> np.ndarray:
        mask = np.zeros(self.v.size, dtype=bool)
        if not music.has_notes:  # a bar line after a bar line (":|" then "[2"): a bar follows
            if music.bar_run < 2 and (music.notes == 0 or music.bar_run > 0):
                joined = music.bar_run > 0 and music.line > 0 and not music.spaced
                for token, piece in self.v.bars:
                    if joined and piece[0] != "[":
                        continue  # ":|" then "|:" would read as one bar line, ":||:"
                    allowed = self._section_allowed(music, piece, music.bars)
                    mask[token] = allowed and self._leads_on(music, piece, music_follows=True)
            return mask
        full = music.meter is None or music.filled == music.meter
        pickup = music.closed == 0
        after = music.bars + music.filled
        for token, piece in self.v.bars:
            structural = bool(STRUCTURAL.search(piece)) or music.opens_structural
            if full or pickup or structural:
                allowed = self._section_allowed(music, piece, after)
                mask[token] = allowed and self._leads_on(music, piece)
        return mask

    def _leads_on(self, music: Music, piece: str, music_follows: bool = False) -> bool:
        """Whether, after this bar line, a bar may start or the tune may end: no bar line may
        lead where the form and the ending rule leave no way on. After ``|:``, ``[2`` or a bar
        line with no bar before it (``music_follows``), music must come."""
        if self.form == Form():
            return True  # with no form, a bar may always start
        after = music.copy()
        after.close_bar(piece)
        opens = music_follows or piece.endswith(":") or bool(_ENDING.search(piece))
        return self._may_start_bar(after) or (not opens and self.may_end(after))

    def _section_allowed(self, music: Music, piece: str, bars: int) -> bool:
        """Whether this bar line may close the bar, given the parts and bars asked for."""
        ends_part = bool(SECTION_END.search(piece)) and not _ENDING.search(piece)
        if _ENDING.search(piece):
            return self.form.parts is None and self.form.bars is None or music.bar_run > 0
        parts = self.form.parts
        if parts is not None and ends_part and music.sections >= parts:
            return False
        target = self.form.part_bars(min(music.sections + 1, parts or 1))
        if target is None:
            return True
        reached = music.whole_bars(bars) >= target
        if parts is None:
            return music.whole_bars(bars) <= target
        return ends_part == reached if music.has_notes else not ends_part or reached

    def _may_break_line(self, music: Music) -> bool:
        if music.line == 0:
            return self.may_end(music)
        if not music.has_notes or music.filled != music.meter:
            return True
        return self._leads_on(music, "")  # the line break closes a full bar

    def may_end(self, music: Music) -> bool:
        """Whether the tune may end here (after a line break): on its tonic or at the end of a
        part (a repeat sign, a double or final bar line) in its first ``CADENCE_BARS`` bars,
        anywhere after them; with the bars and parts asked for."""
        if music.notes == 0 or music.in_group or music.broken is not None:
            return False
        cadence = music.last_letter == music.tonic or music.closed_part
        if not cadence and music.closed < CADENCE_BARS:
            return False
        bars = music.whole_bars(music.bars_with_open())
        if self.form.parts is not None and music.sections < self.form.parts:
            return False
        return self.form.bars is None or bars == self.form.bars


# ---------------------------------------------------------------------------------- the tune


@dataclass
class Header:
    """Where a tune's header stands."""

    phase: str = "number"  # number, field, value, title, end of line
    letter: str = "X"  # the field being written
    tokens: int = 0  # tokens of the current value
    seen: str = "X"  # fields written so far, in order
    values: dict[str, str] = field(default_factory=dict)  # values written (M and L matter)


class TuneGrammar:
    """One tune's grammar: ``allowed()`` before each token, ``advance(token)`` after it.

    ``requested`` maps header letters to the values asked for (``{"M": "6/8", "R": "jig"}``);
    ``form`` the bars and parts asked for. Starts after the prompt ``X:``.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        requested: dict[str, str] | None = None,
        form: Form = Form(),
    ):
        self.v = vocabulary(tuple(tokenizer.pieces))
        requested = dict(requested or {})
        self.title = _title_ids(tokenizer, requested.pop("T", None))
        self.requested = {
            letter: self.v.value_id(letter, value) for letter, value in requested.items()
        }
        self.dance = requested.get("R") in RHYTHM_METERS  # asked for a dance: a style that has it
        meter = requested.get("M")  # asked for a meter: a rhythm that has it
        self.rhythms = (
            None
            if meter is None
            else [r for r in RHYTHMS if meter in RHYTHM_METERS.get(r, (meter,))]
        )
        self.rules = MusicRules(self.v, form)
        self.header = Header()
        self.music: Music | None = None
        self.dead_ends = 0  # steps at which the rules allowed nothing (a line end was allowed)
        self._cache = _mask_cache(
            self.v, form, tuple(sorted(self.requested.items())), tuple(self.title or ())
        )

    # ------------------------------------------------------------------ masks

    def allowed(self) -> torch.Tensor | None:
        key = self.music.key(self.rules.form) if self.music is not None else self._header_key()
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > MAX_CACHED_MASKS:
                self._cache.clear()
            array = self.rules.mask(self.music) if self.music else self._header_mask()
            dead = not array.any()
            if dead:  # no way on that the rules know: end the line, or the tune
                array[self.v.ids["\n"]] = True
            found = self._cache[key] = (torch.from_numpy(array), dead)
        self.dead_ends += found[1]
        return found[0]

    def _header_key(self) -> tuple:
        h = self.header
        before = h.values.get({"L": "M", "M": "R"}.get(h.letter, ""))  # what the value depends on
        return ("header", h.phase, h.letter, min(h.tokens, MAX_TITLE_TOKENS), h.seen, before)

    def _header_mask(self) -> np.ndarray:
        h, v = self.header, self.v
        newline = v.mask([v.id("\n")])
        if h.phase == "number":
            digits = [i for i, d in v.digits.items() if h.tokens or d != "0"]
            mask = v.mask(digits) if h.tokens < MAX_NUMBER_DIGITS else np.zeros(v.size, bool)
            return mask | newline if h.tokens else mask
        if h.phase == "title" and self.title is not None:
            title = self.title[h.tokens : h.tokens + 1]
            return v.mask(title) if title else newline
        if h.phase == "title":
            if h.tokens >= MAX_TITLE_TOKENS:
                return newline
            return (v.title | newline) if h.tokens else v.title_first
        if h.phase == "value":
            return self._value_mask()
        if h.phase == "eol":
            return newline
        return v.mask(v.fields[f] for f in self._next_fields() if f in v.fields)

    def _value_mask(self) -> np.ndarray:
        """The values the field being written may take: the one asked for, else those the
        vocabulary has for it that fit what is written or asked (a jig's meter, a dance's
        tradition, a rhythm of the meter asked for), or all of them where none fits."""
        h, v = self.header, self.v
        if h.letter in self.requested:
            return v.mask([self.requested[h.letter]])
        if h.letter == "L":
            return v.values["L"] & v.units_for(h.values.get("M", ""))
        fitting = None
        if h.letter == "M" and h.values.get("R") in RHYTHM_METERS:
            fitting = RHYTHM_METERS[h.values["R"]]
        elif h.letter == "O" and self.dance:
            fitting = DANCE_STYLES
        elif h.letter == "R":
            fitting = self.rhythms
        if fitting is not None:
            mask = v.values[h.letter] & v.mask(v.ids[x] for x in fitting if x in v.ids)
            if mask.any():
                return mask
        return v.values[h.letter]

    def _next_fields(self) -> str:
        """Fields that may start the next header line: any later in the order, up to the first
        one that must be written."""
        after = HEADER_ORDER[HEADER_ORDER.index(self.header.seen[-1]) + 1 :]
        fields = ""
        for letter in after:
            fields += letter
            if letter in REQUIRED or letter in self.requested or letter == "T" and self.title:
                break
        return fields

    # ------------------------------------------------------------------ following the tune

    def advance(self, token: int) -> None:
        piece = self.v.pieces[token]
        if self.music is None:
            self._advance_header(piece)
        else:
            advance_music(self.music, self.v, token)

    def _advance_header(self, piece: str) -> None:
        h = self.header
        if piece == "\n":
            if h.letter == "K":
                self.music = start_music(h.values)
            h.phase, h.tokens = "field", 0
            return
        if h.phase == "field":
            h.letter = piece[0]
            h.seen += h.letter
            h.phase = "title" if h.letter == "T" else "value"
            return
        h.tokens += 1
        if h.phase == "value":
            h.values[h.letter] = piece
            h.phase = "eol"


def _title_ids(tokenizer: Tokenizer, title: str | None) -> list[int] | None:
    if title is None:
        return None
    ids = [int(i) for i in tokenizer.encode(title)]
    if not ids or len(ids) >= MAX_TITLE_TOKENS or "\n" in title:
        raise UsageError(f"a title must be one line of 1 to {MAX_TITLE_TOKENS - 1} tokens")
    return ids


@functools.lru_cache(maxsize=64)
def _mask_cache(vocab: Vocabulary, form: Form, requested: tuple, title: tuple) -> dict:
    """Masks by state, shared by the tunes of one request (same vocabulary, form and headers)."""
    return {}


def start_music(values: dict[str, str]) -> Music:
    """The music of a tune with these header values, before its first note."""
    meter_text = values.get("M", "none")
    meter = meter_length(meter_text)
    unit = unit_length(values.get("L") or default_unit(meter_text)) or Fraction(1, 8)
    music = Music(None if meter is None else ticks(meter), ticks(unit), compound(meter_text))
    music.tonic = values.get("K", "")[:1].upper()
    return music


def advance_music(music: Music, vocab: Vocabulary, token: int) -> None:
    """``music`` after ``token``: the same arithmetic as ``chargen.music.bars.Measure``."""
    piece = vocab.pieces[token]
    if music.pending is not None:
        multiplier = vocab.multipliers.get(token)
        if multiplier is not None:
            music.add(music.pending * multiplier.numerator // multiplier.denominator)
            music.after_note = True
            music.line += 1
            return
        music.close_note()
    kind = vocab.kinds[token]
    music.after_note = music.after_note and piece == ")"  # a note's own end: see close_note
    music.line = 0 if piece == "\n" else music.line + 1
    music.spaced = piece == " "
    if piece != "\n" and piece != " " and kind != "bar":
        music.bar_run = 0
    _MUSIC_STEPS.get(kind, _ignore)(music, piece)


def _kind(piece: str) -> str:
    """What a piece is to the music: note, bar, tuplet, broken, decoration, or itself."""
    if _NOTE.match(piece):
        return "note"
    if BAR_LINE.fullmatch(piece):
        return "bar"
    if _TUPLET.match(piece):
        return "tuplet"
    if piece in (">", "<", ">>", "<<"):
        return "broken"
    if _CHORD_SYMBOL.match(piece) or piece in ("~", "."):
        return "decoration"
    return piece


def _note(music: Music, piece: str) -> None:
    if music.grace < 0 and piece != "z":
        music.last_letter = piece.lstrip("_^=")[0].upper()
        music.closed_part = False
    if music.chord >= 0:
        music.chord += 1
    elif music.grace >= 0:
        music.grace += 1
    else:
        music.pending = music.start_note()
        music.pitch = None if piece == "z" else piece
        music.tied = None


def _chord_open(music: Music, piece: str) -> None:
    music.chord_base = music.start_note()
    music.chord = 0


def _chord_close(music: Music, piece: str) -> None:
    music.chord = -1
    music.pending = music.chord_base
    music.pitch = None  # no tie after a chord: its notes would each need their own


def _grace_open(music: Music, piece: str) -> None:
    music.grace = 0


def _grace_close(music: Music, piece: str) -> None:
    music.grace = -1
    music.lead = True


def _decoration(music: Music, piece: str) -> None:
    music.lead = True


def _tuplet(music: Music, piece: str) -> None:
    match = _TUPLET.match(piece)
    p = int(match.group(1))
    q = int(match.group(2)) if match.group(2) else TUPLET_Q.get(p, 3 if music.compound else 2)
    music.tuplet_left = int(match.group(3)) if match.group(3) else p
    music.tuplet = (q, p)


def _broken_rhythm(last: int, piece: str) -> tuple[int | None, tuple[int, int]]:
    """How much ``a>b`` (or ``a<b``, ``a>>b``) changes the first note ``last``, and the factor
    of the second: ``>`` dots the first and halves the second, ``>>`` double-dots and
    quarters; ``<`` the other way. The change is None where it is no whole number of ticks."""
    parts = 2 ** len(piece)
    change, rest = divmod(last * (parts - 1), parts)
    if rest:
        return None, (1, 1)
    if piece[0] == ">":
        return change, (1, parts)
    return -change, (2 * parts - 1, parts)


def _broken(music: Music, piece: str) -> None:
    change, second = _broken_rhythm(music.last, piece)
    music.filled += change or 0
    music.broken = second


def _slur(music: Music, piece: str) -> None:
    music.slurs += 1 if piece == "(" else -1


def _newline(music: Music, piece: str) -> None:
    # as Measure does: a line break closes a bar that is exactly full
    if music.has_notes and music.meter is not None and music.filled == music.meter:
        music.close_bar("")
        music.bar_run = 0


def _ignore(music: Music, piece: str) -> None:
    pass


def _tie(music: Music, piece: str) -> None:
    music.tied = music.pitch


_MUSIC_STEPS = {
    "note": _note,
    "-": _tie,
    "bar": Music.close_bar,
    "tuplet": _tuplet,
    "broken": _broken,
    "decoration": _decoration,
    "[": _chord_open,
    "]": _chord_close,
    "{": _grace_open,
    "}": _grace_close,
    "(": _slur,
    ")": _slur,
    "\n": _newline,
}


def check_prime(
    tokenizer: Tokenizer, fields: dict[str, str], music: str, form: Form = Form()
) -> None:
    """Refuse music to start tunes with that the grammar would not allow: a bar too long, a
    bar line too early, a symbol the check cannot read; ``UsageError`` saying where."""
    vocab = vocabulary(tuple(tokenizer.pieces))
    state = start_music(fields)
    rules = MusicRules(vocab, form)
    written = ""
    for token in tokenizer.encode(music):
        piece = vocab.pieces[int(token)]
        if not rules.mask(state)[int(token)]:
            where = f"{written}[{piece}]".replace("\n", "\\n")
            raise UsageError(
                f"the music of --prime breaks its bars at {where} (M:{fields.get('M')}, "
                f"L:{fields.get('L') or default_unit(fields.get('M', ''))}); correct it, or "
                "sample with --free"
            )
        advance_music(state, vocab, int(token))
        written += piece
