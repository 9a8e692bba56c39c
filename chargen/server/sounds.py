"""The notes the page plays tunes with, synthesised here rather than downloaded.

abcjs plays a tune from one recorded sample per note, which it fetches as
``<soundFontUrl><instrument>-mp3/<note>.mp3`` (by default from a soundfont site on the internet).
The server answers those requests itself with a short plucked tone for the note, as WAV: the
browser decodes audio by its content, whatever the name says. Nothing is fetched from elsewhere,
and the page plays tunes on a machine with no internet.
"""

from __future__ import annotations

import functools
import io
import re
import wave

import numpy as np

RATE = 22_050  # samples per second: plenty for a tone whose highest harmonic is a few kHz
SECONDS = 2.0  # abcjs cuts a sample at the note's end; the longest folk notes are shorter
_NOTE = re.compile(r"^([A-G])(b?)(-?\d)$")
_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def midi_number(note: str) -> int | None:
    """The MIDI number of a note name as abcjs spells it (``C4``, ``Gb5``: flats, no sharps);
    None for anything else."""
    match = _NOTE.match(note)
    if match is None:
        return None
    letter, flat, octave = match.groups()
    number = 12 * (int(octave) + 1) + _STEPS[letter] - (1 if flat else 0)
    return number if 0 <= number <= 127 else None


@functools.lru_cache(maxsize=128)
def note_wav(number: int) -> bytes:
    """A plucked tone of MIDI note ``number`` as a 16-bit mono WAV file: harmonics falling off
    as 1/k, each dying away faster the higher it is, after a 5 ms attack."""
    frequency = 440.0 * 2 ** ((number - 69) / 12)
    t = np.arange(int(RATE * SECONDS)) / RATE
    tone = np.zeros_like(t)
    for k in range(1, 7):
        if k * frequency < RATE / 2:  # no harmonic above the Nyquist frequency
            tone += np.sin(2 * np.pi * k * frequency * t) / k * np.exp(-t * (1.5 + k))
    tone *= np.minimum(t / 0.005, 1.0)
    samples = (tone / np.abs(tone).max() * 0.6 * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(RATE)
        file.writeframes(samples.tobytes())
    return out.getvalue()
