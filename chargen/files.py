"""Files in and out: the one reader of users' text, capped reads of files that may be hostile,
and writes that a crash never leaves half done.

Everything is written to a temporary file in the destination's folder, flushed to disk and
renamed over the destination; readers see the old file or the new one, never a mix. Temporary
files and folders carry their owner (host and process) in their names, so that what a killed
process left behind can be removed safely (``clean_leftovers``). Text is read as UTF-8 by
``read_text``, which says where a file is not; ``read_capped`` reads a regular file of bounded
size and nothing else. Standard library only, so every other module may use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chargen.errors import ChargenError, CorpusError

ENV_CACHE = "CHARGEN_CACHE"


def cache_root() -> Path:
    """``$CHARGEN_CACHE``, else ``$XDG_CACHE_HOME/chargen``, else ``~/.cache/chargen``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chargen"


BOM = "\ufeff"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; renamed into place they get this
DIR_MODE = 0o777 & ~_umask()


def _owner() -> str:
    """This process as it appears in the names of its temporary files: host~pid."""
    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"
    return f"{host}~{os.getpid()}"


def temporary_name(path: Path, kind: str) -> tuple[str, str]:
    """The prefix and suffix of a temporary file or folder beside ``path`` (``kind`` is tmp,
    new or old), owned by this process."""
    return f".{path.name}.{_owner()}.", f".{kind}"


_LEFTOVER = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)~(?P<pid>\d+)\.[^.]+\.(?:tmp|new|old)$")
_UNOWNED = re.compile(r"^\..+\.(?:tmp|new)$")  # made by chargen 0.1, which did not name owners
UNOWNED_AGE = 24 * 3600.0
"""Seconds after which a leftover without an owner in its name is taken for abandoned."""


def clean_leftovers(folder: Path) -> list[str]:
    """Remove the temporary files and folders in ``folder`` that a process which no longer runs
    left behind (a crash, SIGKILL); returns their names. Leftovers of live processes, and of
    processes on other hosts (a shared folder), are left alone."""
    removed = []
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(".")]
    except OSError:
        return removed
    host = _owner().split("~")[0]
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match:
            abandoned = match["host"] == host and not _alive(int(match["pid"]))
        else:
            abandoned = _UNOWNED.match(entry.name) is not None and _age(entry) > UNOWNED_AGE
        if abandoned and _remove(entry):
            removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _age(entry: Path) -> float:
    try:
        return time.time() - entry.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(entry: Path) -> bool:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the block
    ends without an error and is removed when it raises."""
    prefix, suffix = temporary_name(path, "tmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
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
def staged_directory(path: Path) -> Iterator[Path]:
    """A hidden folder beside ``path`` to build a new ``path`` in; it replaces ``path`` (and
    whatever was there) when the block ends without an error, and is removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temporary_name(path, "new")
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=suffix))
    try:
        os.chmod(staging, DIR_MODE)
        yield staging
        if path.exists() or path.is_symlink():
            remove_tree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove the folder ``path`` (a link: the link alone) so that a crash part-way leaves no
    half-removed folder under its name: it is first renamed to a hidden leftover, which
    ``clean_leftovers`` finishes off should the process die."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    prefix, suffix = temporary_name(path, "old")
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=suffix))
    os.replace(path, trash / path.name)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


# ---------------------------------------------------------------------------------- reading


def read_capped(path: Path, limit: int, error: type[ChargenError] = ChargenError) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a link, a device or a pipe) of at most
    ``limit`` bytes; else ``error`` saying why. One open, so the file read is the file checked."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except OSError as exc:
        if path.is_symlink():
            raise error(f"{path}: is a link; refusing to follow it") from None
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: not a regular file; refusing to read it")
        if info.st_size > limit:
            raise error(f"{path}: {info.st_size:,} bytes, more than the {limit:,} it may have")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: grew past {limit:,} bytes while being read")
    return data


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
