"""Writing files so that a crash never leaves half of one.

Everything is written to a temporary file in the destination's folder, flushed to disk and
renamed over the destination; readers see the old file or the new one, never a mix. Standard
library only, so every other module may use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
