"""Files in and out: the one reader of users' text, and writes that a crash never leaves half done.

Everything is written to a temporary file in the destination's folder, flushed to disk and
renamed over the destination; readers see the old file or the new one, never a mix. Text is read
as UTF-8 by ``read_text``, which says where a file is not. Standard library only, so every other
module may use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from chargen.errors import CorpusError

BOM = "\ufeff"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; renamed into place they get this
DIR_MODE = 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the block
    ends without an error and is removed when it raises."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # writers such as safetensors may have made the file anew
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform can open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_directory(path: Path, suffix: str = ".new") -> Iterator[Path]:
    """A hidden folder beside ``path`` to build a new ``path`` in; it replaces ``path`` (and
    whatever was there) when the block ends without an error, and is removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix))
    try:
        os.chmod(staging, DIR_MODE)
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------------------------- reading


def read_text(path: str | Path, legacy: bool = False) -> str:
    """The text of a UTF-8 file, without a leading byte-order mark.

    Raises ``CorpusError`` naming the line and column of the first byte that is not UTF-8; with
    ``legacy`` (old ABC collections, which predate UTF-8), such a file is read as Latin-1 instead.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, not a text file") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if legacy:
            return data.decode("latin-1")
        raise not_utf8(path, data, exc.start) from None
    return text.removeprefix(BOM)


def not_utf8(path, data: bytes, at: int, offset: int = 0, lines: int = 0, line_start: int = 0):
    """The error for a byte at ``data[at]`` that is not UTF-8, saying where it is.

    ``data`` may be one chunk of a file: ``offset`` is where it starts in the file, ``lines`` the
    line breaks before it and ``line_start`` the file offset where the current line began.
    """
    if b"\x00" in data[:65536]:
        return CorpusError(f"{path}: looks like a binary file, not UTF-8 text")
    line = lines + data.count(b"\n", 0, at) + 1
    newline = data.rfind(b"\n", 0, at)
    column = offset + at - (offset + newline + 1 if newline >= 0 else line_start) + 1
    return CorpusError(
        f"{path}: not UTF-8 text (byte 0x{data[at]:02x} at line {line}, column {column}, "
        f"offset {offset + at}); convert it, e.g. iconv -f latin1 -t utf-8"
    )
