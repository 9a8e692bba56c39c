"""How new is a tune? The longest stretch of its music found in a corpus, the share of its 8-grams
of music tokens found there, and whether it is an exact copy of a corpus tune."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from chargen.music.notation import body, music_key, split_tunes

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
