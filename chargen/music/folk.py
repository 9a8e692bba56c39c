"""The folk corpus: ABC tunes from music21's collections or the user's files, cleaned and shuffled.

``build_corpus`` reads ABC files, cleans every tune into the training form
(``chargen.music.notation.clean_tune``), drops duplicates and tunes whose bars disagree with their
meter, and lays the rest out one per block. music21 is needed only for its collections, and is
imported when they are asked for. Nothing here trains, samples or writes files.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chargen.errors import CorpusError, MusicError
from chargen.files import read_text
from chargen.music.bars import bar_problems, bars
from chargen.music.notation import (
    TUNE_END,
    clean_tune,
    headers,
    music_key,
    renumber,
    split_tunes,
)

FOLK_COLLECTIONS = ("ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk")
"""The folk tune collections in ABC that music21 ships in its corpus folder."""

STYLES = ("irish", "scottish", "english", "american", "german", "chinese")
"""The traditions of music21's collections, written as a cleaned tune's O: field."""

_FILE_STYLES = (  # (start of a file's path in music21's corpus, its style), first match wins
    ("oneills1850/", "irish"),  # O'Neill's Music of Ireland
    ("airdsAirs/", "scottish"),  # Aird's Selection of Scotch, English, Irish and Foreign Airs
    ("ryansMammoth/", "american"),  # Ryan's Mammoth Collection, Boston 1883
    ("miscFolk/americanfife", "american"),
    ("miscFolk/northumbrian", "english"),
    ("essenFolksong/han", "chinese"),  # the Essen collection's Han Chinese songs
    ("essenFolksong/irl", "irish"),
    ("essenFolksong/", "german"),  # the rest of Essen: German, Lorraine, Luxembourg songs
)


@dataclass(frozen=True)
class Source:
    """An ABC file and what its tunes are: their tradition and, where the whole file is one
    kind (Essen's songs), their rhythm."""

    path: Path
    style: str | None = None
    rhythm: str | None = None


def collection_sources(names: Iterable[str] = FOLK_COLLECTIONS) -> list[Source]:
    """The files of music21's collections ``names``, each with its style."""
    root = music21_corpus_dir()
    sources = []
    for path in collection_files(names):
        relative = path.relative_to(root).as_posix()
        style = next((s for start, s in _FILE_STYLES if relative.startswith(start)), None)
        rhythm = "song" if relative.startswith("essenFolksong/") else None
        sources.append(Source(path, style, rhythm))
    return sources


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
    rhythms: Counter = field(default_factory=Counter)  # tunes written, by R: ("" for none)
    styles: Counter = field(default_factory=Counter)  # tunes written, by O: ("" for none)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "tunes_read": self.tunes_read,
            "written": self.written,
            "duplicates": self.duplicates,
            "irregular": self.irregular,
            "dropped": dict(self.dropped),
            "rhythms": dict(self.rhythms.most_common()),
            "styles": dict(self.styles.most_common()),
            "chars": len(self.text),
        }


def build_corpus(
    sources: Iterable[Source | Path],
    seed: int = 0,
    keep_irregular: bool = False,
    on_file: Callable[[int], None] = lambda done: None,
) -> CorpusReport:
    """One training corpus from ABC files (``Source``s, or paths of tunes with no style):
    cleaned tunes, duplicates removed, shuffled. ``on_file`` is told how many files are done.

    The order is a shuffle with ``seed`` of the tunes in file order, so the same files give the
    same corpus, and a validation split taken from the end holds tunes from every collection.
    Unless ``keep_irregular``, tunes whose bars disagree with their meter are dropped (real
    transcriptions have such slips; a model should not learn them).
    """
    sources = [s if isinstance(s, Source) else Source(Path(s)) for s in sources]
    kept: list[str] = []
    seen: set[str] = set()
    report = CorpusReport("", len(sources), 0, 0, 0, 0)
    for done, source in enumerate(sources, 1):
        for raw in split_tunes(read_text(source.path, legacy=True)):
            report.tunes_read += 1
            tune = _usable(raw, source, seen, report, keep_irregular)
            if tune is not None:
                kept.append(tune)
                fields = headers(tune)
                report.rhythms[fields.get("R", "")] += 1
                report.styles[fields.get("O", "")] += 1
        on_file(done)
    if not kept:
        raise CorpusError("no usable tunes in the given files")
    random.Random(seed).shuffle(kept)
    report.written = len(kept)
    report.text = TUNE_END.join(renumber(t, i + 1) for i, t in enumerate(kept)) + "\n"
    return report


def _usable(
    raw: str, source: Source, seen: set[str], report: CorpusReport, keep_irregular: bool
) -> str | None:
    """The cleaned tune, or None (counted in ``report``) where it is dropped or seen before."""
    cleaned = clean_tune(raw, origin=source.style, rhythm=source.rhythm)
    if cleaned.tune is None:
        report.dropped[cleaned.reason] += 1
        return None
    key = music_key(cleaned.tune)
    if key in seen:
        report.duplicates += 1
        return None
    seen.add(key)
    if not keep_irregular and bar_problems(bars(cleaned.tune)):
        report.irregular += 1
        return None
    return cleaned.tune
