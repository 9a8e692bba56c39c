"""The folk corpus: ABC tunes from music21's collections or the user's files, cleaned and shuffled.

``build_corpus`` reads ABC files, cleans every tune into the training form
(``chargen.music.notation.clean_tune``), drops duplicates and tunes whose bars disagree with their
meter, and lays the rest out one per block. music21 is needed only for its collections, and is
imported when they are asked for. Nothing here trains, samples or writes files.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chargen.errors import CorpusError, MusicError
from chargen.files import read_text
from chargen.music.bars import bar_problems, bars
from chargen.music.notation import TUNE_END, clean_tune, music_key, renumber, split_tunes

FOLK_COLLECTIONS = ("ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk")
"""The folk tune collections in ABC that music21 ships in its corpus folder."""


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
        for raw in split_tunes(read_text(path, legacy=True)):
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
