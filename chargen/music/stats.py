"""Do tunes look like the corpus? Form, endings, range and rhythm of a set of tunes, and how far
each is from another set's.

``tune_shape`` reads one tune: its bars (a pickup and the short bar that completes it count as
one, as ``--bars`` counts them), its parts (each ended by a repeat sign or a double or final
bar line), whether it repeats, ends on a final bar line and on its key's tonic, its pitch range
and its note lengths. ``profile`` sums a set of tunes up; ``distances`` compares two profiles.
Plain strings in, numbers out: no music21.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from chargen.music.bars import bars
from chargen.music.notation import BAR_LINE, SECTION_END, body, headers, meter_length

_NOTE = re.compile(r"(?P<pitch>[_^=]*(?P<letter>[A-Ga-g])(?P<octave>[,']*)|z)(?P<len>\d*/*\d*)")
_SKIP = re.compile(r'"[^"\n]*"|![^!\n]*!|\{[^}\n]*\}|\[[A-Za-z]:[^\]\n]*\]')
_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


@dataclass
class TuneShape:
    bars: int  # bars of music, a pickup and the bar that completes it counted as one
    parts: int
    repeats: bool  # has a repeat sign
    final_bar: bool  # ends on a repeat sign or a double or final bar line
    tonic_end: bool | None  # its last note is the tonic of its key (None: no key or note)
    pitch_range: int | None  # semitones from its lowest note to its highest
    lengths: Counter = field(default_factory=Counter)  # note lengths in units of L:


def tune_shape(tune: str) -> TuneShape | None:
    """The shape of one tune; None for a tune without a readable meter or any note."""
    fields = headers(tune)
    meter = meter_length(fields.get("M", ""))
    music = _SKIP.sub(" ", body(tune))
    notes = list(_NOTE.finditer(music))
    if meter is None or not notes:
        return None
    total = sum((bar.length for bar in bars(tune)), Fraction(0))
    pitches = [_pitch(n) for n in notes if n.group("pitch") != "z"]
    last_letter = next((n.group("letter") for n in reversed(notes) if n.group("letter")), None)
    tonic = fields.get("K", "")[:1].upper()
    return TuneShape(
        bars=math.ceil(total / meter - Fraction(1, 2)),  # a half rounded down, as --bars has it
        parts=_parts(music),
        repeats=":|" in music or "::" in music or "|:" in music,
        final_bar=_ends_on_bar_line(music),
        tonic_end=(last_letter.upper() == tonic) if last_letter and tonic in _STEPS else None,
        pitch_range=max(pitches) - min(pitches) if pitches else None,
        lengths=Counter(_length_name(n.group("len")) for n in notes),
    )


def _pitch(note: re.Match) -> int:
    letter, octave = note.group("letter"), note.group("octave")
    pitch = _STEPS[letter.upper()] + (12 if letter.islower() else 0)
    pitch += 12 * octave.count("'") - 12 * octave.count(",")
    accidental = note.group("pitch")[: -len(letter + octave) or None]
    return pitch + accidental.count("^") - accidental.count("_")


def _parts(music: str) -> int:
    """Sections ended by a repeat sign or a double or final bar line (a first ending's ``:|``
    does not end one), and the music after the last of them, if any."""
    parts, last_end, previous_end = 0, 0, None
    for match in BAR_LINE.finditer(music):
        text = match.group(0)
        ending = bool(re.search(r"\d", text))
        if ending and previous_end is not None and not music[previous_end : match.start()].strip():
            parts -= 1  # ":|" then "[2": the end of a first ending
        if SECTION_END.search(text) and not ending:
            parts += 1
            last_end = match.end()
            previous_end = match.end()
        else:
            previous_end = None
    return parts + bool(_NOTE.search(music[last_end:]))


def _ends_on_bar_line(music: str) -> bool:
    tail = music.rstrip()
    ends = [m for m in BAR_LINE.finditer(tail) if m.end() == len(tail)]
    return bool(ends) and bool(SECTION_END.search(ends[-1].group(0)))


def _length_name(text: str) -> str:
    """A note length multiplier written the way ABC writes it at its simplest: 1, 2, 1/2, 3/2."""
    if not text:
        return "1"
    if "/" not in text:
        return str(int(text))
    top, _, rest = text.partition("/")
    slashes = 1 + len(rest) - len(rest.lstrip("/"))
    bottom = rest.lstrip("/")
    value = Fraction(int(top or 1), int(bottom) if bottom else 2**slashes)
    return str(value)


def profile(tunes: list[str]) -> dict:
    """What a set of tunes looks like: medians and shares, as plain numbers."""
    shapes = [s for s in map(tune_shape, tunes) if s is not None]
    if not shapes:
        return {"tunes": 0}
    lengths = sum((s.lengths for s in shapes), Counter())
    notes = sum(lengths.values())
    tonic = [s.tonic_end for s in shapes if s.tonic_end is not None]
    ranges = [s.pitch_range for s in shapes if s.pitch_range is not None]
    bar_counts = [s.bars for s in shapes]
    return {
        "tunes": len(shapes),
        "bars_median": statistics.median(bar_counts),
        "bars_quartiles": _quartiles(bar_counts),
        "parts": _shares(Counter(min(s.parts, 4) for s in shapes), len(shapes)),
        "repeats": _share(sum(s.repeats for s in shapes), len(shapes)),
        "final_bar": _share(sum(s.final_bar for s in shapes), len(shapes)),
        "tonic_end": _share(sum(tonic), len(tonic)),
        "range_median": statistics.median(ranges) if ranges else None,
        "lengths": _shares(Counter({k: v for k, v in lengths.most_common(8)}), notes),
    }


def distances(found: dict, corpus: dict) -> dict:
    """How far ``found`` is from ``corpus``: differences of medians, of shares in points (0 to
    100), and the total variation distance of distributions (0: the same, 1: disjoint)."""
    if not found.get("tunes") or not corpus.get("tunes"):
        return {}
    return {
        "bars_median": found["bars_median"] - corpus["bars_median"],
        "parts": _variation(found["parts"], corpus["parts"]),
        "repeats": 100 * (found["repeats"] - corpus["repeats"]),
        "final_bar": 100 * (found["final_bar"] - corpus["final_bar"]),
        "tonic_end": 100 * (found["tonic_end"] - corpus["tonic_end"]),
        "range_median": (found["range_median"] or 0) - (corpus["range_median"] or 0),
        "lengths": _variation(found["lengths"], corpus["lengths"]),
    }


def _quartiles(values: list[int]) -> list[float]:
    if len(values) < 2:
        return [float(values[0])] * 3
    return [float(q) for q in statistics.quantiles(values, n=4)]


def _share(count: int, total: int) -> float:
    return round(count / total, 4) if total else 0.0


def _shares(counts: Counter, total: int) -> dict[str, float]:
    return {str(k): _share(v, total) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def _variation(first: dict[str, float], second: dict[str, float]) -> float:
    keys = set(first) | set(second)
    return round(sum(abs(first.get(k, 0.0) - second.get(k, 0.0)) for k in keys) / 2, 4)
