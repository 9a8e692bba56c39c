"""Corpora of any size: files, folders and globs, read as a stream, cached as token arrays.

``prepare`` turns corpus sources into a tokenizer and two memory-mapped token arrays (training
and validation) without ever holding the whole text in memory: files are read and decoded in
chunks, the vocabulary is counted chunk by chunk, and tokens are written to disk as they are
made. The arrays are cached under a key of the corpus content and the tokenizer, so a second
``train`` on the same corpus reads them back instead of tokenizing again.

Memory stays flat in the corpus size; the arrays are ``uint16`` when the vocabulary allows and
``uint32`` otherwise. This module knows nothing about models or training.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from chargen.errors import CorpusError, TokenizerError
from chargen.files import (
    BOM,
    cache_root,
    clean_leftovers,
    not_utf8,
    read_capped,
    staged_directory,
    write_atomic,
)
from chargen.text.tokenizer import Tokenizer

CHUNK_BYTES = 1 << 24  # 16 MB of a file at a time
CACHE_VERSION = 2  # 2: entries carry a checksum of their tokens

Progress = Callable[[int], None]  # called with bytes processed since the last call
PhaseProgress = Callable[[str, int], None]  # the same, with the pass: hashing, vocabulary, tokens


# ---------------------------------------------------------------------------- sources


def expand_sources(specs: list[str]) -> list[Path]:
    """Files named directly, every non-hidden file under named folders, and glob matches.

    The order is the order given, folders and globs sorted, so a corpus is read the same way
    each time.
    """
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            paths.append(path)
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CorpusError(f"{spec}: the folder has no files")
            paths.extend(found)
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                raise CorpusError(f"{spec}: no file matches")
            paths.extend(found)
        else:
            raise CorpusError(f"{spec}: no such file, folder or pattern")
    return list(dict.fromkeys(paths))


def iter_text(paths: list[Path], progress: Progress | None = None, digest=None) -> Iterator[str]:
    """The text of ``paths`` in chunks, decoded as UTF-8; files are joined by a line break
    where one does not already end with one. A byte-order mark starting a file is dropped."""
    last = "\n"
    for path in paths:
        decoder = codecs.getincrementaldecoder("utf-8")()
        lines_before, offset, line_start, first = 0, 0, 0, True
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed below, also on errors)
        except OSError as exc:
            raise CorpusError(f"{path}: cannot read: {exc.strerror}") from None
        with handle:
            while True:
                data = handle.read(CHUNK_BYTES)
                final = not data
                if digest is not None:
                    digest.update(data if data else b"\x00end of file\x00")
                try:
                    text = decoder.decode(data, final=final)
                except UnicodeDecodeError as exc:
                    at = max(exc.start - (len(exc.object) - len(data)), 0)  # within this chunk
                    raise not_utf8(path, data, at, offset, lines_before, line_start) from None
                if first and text:
                    text = text.removeprefix(BOM)
                    first = False
                    if last != "\n":
                        yield "\n"
                if text:
                    last = text[-1]
                    yield text
                if progress:
                    progress(len(data))
                if final:
                    break
                lines_before += data.count(b"\n")
                if (newline := data.rfind(b"\n")) >= 0:
                    line_start = offset + newline + 1
                offset += len(data)


def _split_chunks(paths, cut: int, progress=None) -> Iterator[tuple[str, str]]:
    """``(train_piece, val_piece)`` per chunk, cutting the text after ``cut`` characters."""
    seen = 0
    for text in iter_text(paths, progress):
        at = min(max(cut - seen, 0), len(text))
        seen += len(text)
        yield text[:at], text[at:]


class _LineAligner:
    """Re-cuts a stream of text to end at line breaks, so no word is split between two pieces
    (every tokenizer level starts a new piece after a newline)."""

    def __init__(self) -> None:
        self.carry = ""

    def feed(self, chunk: str) -> str:
        text = self.carry + chunk
        cut = text.rfind("\n") + 1
        self.carry = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        text, self.carry = self.carry, ""
        return text


def _line_aligned(chunks: Iterator[str]) -> Iterator[str]:
    aligner = _LineAligner()
    for chunk in chunks:
        if piece := aligner.feed(chunk):
            yield piece
    if rest := aligner.flush():
        yield rest


# ---------------------------------------------------------------------------- preparing


@dataclass(frozen=True)
class TokenArrays:
    """Training and validation token ids (memory-mapped) and the characters each covers."""

    train: np.ndarray
    val: np.ndarray
    train_chars: int
    val_chars: int
    digest: str  # content hash of the corpus text
    notes: tuple[str, ...] = ()  # what the user should know: damaged cache entries rebuilt


def corpus_digest(paths: list[Path], progress: Progress | None = None) -> tuple[str, int, bool]:
    """A content hash of the corpus (its files' bytes in order), its length in characters, and
    whether any of it is more than whitespace."""
    digest = hashlib.sha256()
    chars, blank = 0, True
    for text in iter_text(paths, progress, digest):  # hashes the bytes as they are read
        chars += len(text)
        blank = blank and not text.strip()
    return digest.hexdigest(), chars, not blank


def train_tokenizer(paths, cut, level, vocab_size, min_freq, progress=None) -> Tokenizer:
    """The tokenizer of ``level`` built from the first ``cut`` characters, read as a stream."""
    train_chunks = _line_aligned(train for train, _ in _split_chunks(paths, cut, progress))
    if level == "char":
        counts = np.zeros(0x110000, dtype=np.int64)
        for chunk in train_chunks:
            codes = np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32)
            counts += np.bincount(codes, minlength=0x110000)
        return Tokenizer.from_characters("".join(chr(c) for c in np.flatnonzero(counts)))
    return Tokenizer.train_from_chunks(train_chunks, level, vocab_size, min_freq)


def prepare(
    sources: list[Path],
    tokenizer: Tokenizer | None,
    level: str,
    vocab_size: int,
    min_freq: int,
    val_frac: float,
    boundary: str | None = None,
    cache: Path | None = None,
    progress: PhaseProgress | None = None,
) -> tuple[Tokenizer, TokenArrays]:
    """Tokenizer and token arrays for ``sources``; ``tokenizer`` None builds one from the
    training part. The last ``val_frac`` of the characters is validation; with ``boundary``
    (the blank line between ABC tunes) the cut moves to just after the next one, so both parts
    hold whole pieces. Results are cached under ``cache`` (default ``cache_root()``)."""
    cache = cache or cache_root()

    def phase(name: str) -> Progress | None:
        return (lambda n: progress(name, n)) if progress else None

    digest, chars, has_text = corpus_digest(sources, phase("hashing"))
    if not has_text:
        raise CorpusError(
            f"{sources[0] if len(sources) == 1 else 'the corpus'}: empty or only whitespace; "
            "give a file with text"
        )
    cut = int(chars * (1.0 - val_frac))
    if boundary:
        cut = _cut_at_boundary(sources, cut, boundary, chars)
    notes: list[str] = []
    if cache.is_dir():
        clean_leftovers(cache)
    if tokenizer is None:
        vocab_file = cache / f"vocab-{_key(digest, 'vocab', level, vocab_size, min_freq, cut)}.json"
        tokenizer = _cached_vocabulary(vocab_file, level, notes)
        if tokenizer is None:
            tokenizer = train_tokenizer(
                sources, cut, level, vocab_size, min_freq, phase("vocabulary")
            )
            vocab_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(vocab_file, tokenizer.to_json().encode("utf-8"))
    entry = cache / f"tokens-{_key(digest, 'tokens', tokenizer.to_json(), cut)}"
    arrays = None
    if entry.exists() or entry.is_symlink():
        try:
            arrays = _open_entry(entry, digest, tokenizer.vocab_size)
        except _Damaged as exc:
            notes.append(f"the token cache {entry} was damaged ({exc}); rebuilt it")
    if arrays is None:
        _encode_to_cache(sources, tokenizer, cut, entry, phase("tokens"))
        arrays = _open_entry(entry, digest, tokenizer.vocab_size)
    return tokenizer, replace(arrays, notes=tuple(notes))


def _cached_vocabulary(path: Path, level: str, notes: list[str]) -> Tokenizer | None:
    """The vocabulary cached at ``path``; None (and a note) where it is missing or damaged."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return Tokenizer.from_json(read_capped(path, 256 << 20, TokenizerError), level)
    except TokenizerError as exc:
        notes.append(f"the vocabulary cache {path} was damaged ({exc}); rebuilt it")
        return None


def encode_to_file(
    sources: list[Path], tokenizer: Tokenizer, path: Path, progress: Progress | None = None
) -> tuple[np.ndarray, int]:
    """The tokens of ``sources`` written to ``path`` chunk by chunk and mapped back: memory
    stays flat whatever the size of the text. Returns the ids and how many are ``<unk>``."""
    dtype = _dtype(tokenizer.vocab_size)
    count, unknown = 0, 0
    with open(path, "wb") as out:
        for chunk in _line_aligned(iter_text(sources, progress)):
            for piece in _pieces_of(chunk):
                ids = tokenizer.encode(piece)
                unknown += int(np.count_nonzero(ids == 0))
                out.write(ids.astype(dtype).tobytes())
                count += len(ids)
    if count == 0:
        return np.zeros(0, dtype=dtype), 0
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,)), unknown


def _pieces_of(text: str, size: int = 1 << 20) -> Iterator[str]:
    """``text`` (which ends at a line break) in pieces of about ``size`` characters, each ending
    at a line break: encoding a piece takes memory in proportion to it (the char level makes a
    4-byte and an 8-byte copy of every character)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _cut_at_boundary(sources, cut: int, boundary: str, chars: int) -> int:
    """The first position after ``cut`` that follows a ``boundary``; ``cut`` where none does
    (or where the boundary ends the text, leaving no validation)."""
    seen, tail = 0, ""
    for text in iter_text(sources):
        window = tail + text
        start = seen - len(tail)  # text position of window[0]
        at = window.find(boundary, max(cut - len(boundary) + 1 - start, 0))
        if at >= 0:
            end = start + at + len(boundary)
            return end if end < chars else cut
        tail = window[-(len(boundary) - 1) :] if len(boundary) > 1 else ""
        seen += len(text)
    return cut


def _key(*parts) -> str:
    text = json.dumps([CACHE_VERSION, *parts])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _encode_to_cache(sources, tokenizer: Tokenizer, cut: int, entry: Path, progress) -> None:
    """Encode the corpus chunk by chunk into ``entry/{train,val}.bin``, built in a temporary
    folder and renamed into place so an interrupted run leaves no half-written entry."""
    dtype = _dtype(tokenizer.vocab_size)
    counts = {"train": 0, "val": 0}
    chars = {"train": 0, "val": 0}
    aligners = {"train": _LineAligner(), "val": _LineAligner()}
    with staged_directory(entry) as staging:
        with (
            open(staging / "train.bin", "wb") as train_out,
            open(staging / "val.bin", "wb") as val_out,
        ):
            outputs = {"train": train_out, "val": val_out}

            def write(part: str, text: str) -> None:
                ids = tokenizer.encode(text).astype(dtype)
                outputs[part].write(ids.tobytes())
                counts[part] += len(ids)
                chars[part] += len(text)

            for pair in _split_chunks(sources, cut, progress):
                for part, text in zip(("train", "val"), pair, strict=True):
                    if text and (piece := aligners[part].feed(text)):
                        write(part, piece)
            for part, aligner in aligners.items():
                if rest := aligner.flush():
                    write(part, rest)
        meta = {
            "dtype": dtype.name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "train_chars": chars["train"],
            "val_chars": chars["val"],
            "checksum": _checksum(staging),
        }
        (staging / "meta.json").write_text(json.dumps(meta))


class _Damaged(Exception):
    """A cache entry that cannot be trusted, and why."""


_META_COUNTS = ("train_tokens", "val_tokens", "train_chars", "val_chars")


def _open_entry(entry: Path, digest: str, vocab_size: int) -> TokenArrays:
    """The token arrays of a cache entry, checked before they are trusted: its description,
    the sizes of its files, the checksum of their bytes, and every id below ``vocab_size``."""
    try:
        meta = json.loads(read_capped(entry / "meta.json", 1 << 16, TokenizerError))
    except (TokenizerError, ValueError) as exc:
        raise _Damaged(f"meta.json: {exc}") from None
    if (
        not isinstance(meta, dict)
        or meta.get("dtype") not in ("uint16", "uint32")
        or not all(type(meta.get(k)) is int and meta[k] >= 0 for k in _META_COUNTS)
        or not isinstance(meta.get("checksum"), str)
    ):
        raise _Damaged("meta.json is not a description of token arrays")
    dtype = np.dtype(meta["dtype"])
    for name, count in (("train.bin", meta["train_tokens"]), ("val.bin", meta["val_tokens"])):
        path = entry / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size != count * dtype.itemsize:
            raise _Damaged(f"{name} is not {count:,} tokens long")
    if _checksum(entry) != meta["checksum"]:
        raise _Damaged("its tokens do not match their checksum")

    def load(name: str, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=dtype)
        ids = np.memmap(entry / name, dtype=dtype, mode="r", shape=(count,))
        if int(ids.max()) >= vocab_size:
            raise _Damaged(f"{name} holds ids outside the vocabulary")
        return ids

    return TokenArrays(
        train=load("train.bin", meta["train_tokens"]),
        val=load("val.bin", meta["val_tokens"]),
        train_chars=meta["train_chars"],
        val_chars=meta["val_chars"],
        digest=digest,
    )


def _checksum(entry: Path) -> str:
    """BLAKE2b of the bytes of ``train.bin`` then ``val.bin``: a gigabyte in about a second."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("train.bin", "val.bin"):
        with open(entry / name, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        digest.update(b"\x00")
    return digest.hexdigest()
