"""Compiled kernels: C files built with the system's compiler on first use, cached on disk.

A kernel is built once per version of its source and flags into ``cache_root()/kernels`` and
loaded with ctypes. Where there is no compiler, the build fails or the CPU lacks what a kernel
needs, ``load`` returns None and callers keep torch's own operators: a kernel only ever makes
something faster. ``CHARGEN_KERNELS=0`` in the environment turns every kernel off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

from chargen.files import cache_root

ENV_SWITCH = "CHARGEN_KERNELS"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _headers(source: Path) -> list[Path]:
    """The headers beside ``source`` that it includes by name (``#include "x.h"``): a change
    to one of them builds the kernel again."""
    names = re.findall(rb'^#include "([^"/]+)"', source.read_bytes(), re.MULTILINE)
    return [source.with_name(name.decode()) for name in names]


def _build(source: Path, flags: list[str], compiler: str, target: Path) -> None:
    """Compiles ``source`` to ``target``, written under another name and renamed, so a process
    that loads it never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.part")
    os.close(handle)
    try:
        command = [compiler, *flags, str(source), "-o", partial]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def load(source: Path, flags: tuple[str, ...], needs: tuple[str, ...]) -> ctypes.CDLL | None:
    """The library built from ``source`` with ``flags``, or None when kernels are switched off,
    the CPU lacks a flag of ``needs`` or the build fails. A failed build leaves a ``.failed``
    file beside where the library would be, with the compiler's complaint, and is not tried
    again for the same source, flags and compiler (``$CC``, else ``cc``); delete the file to
    try again. A missing compiler or a build that timed out is tried again next time. Loading
    is not cached here: callers keep what they load."""
    if os.environ.get(ENV_SWITCH) == "0" or not set(needs) <= cpu_flags():
        return None
    compiler = os.environ.get("CC", "cc")
    try:
        text = source.read_bytes() + b"".join(header.read_bytes() for header in _headers(source))
        key = text + " ".join([compiler, *flags]).encode()
        target = (
            cache_root() / "kernels" / f"{source.stem}-{hashlib.sha256(key).hexdigest()[:16]}.so"
        )
        failed = target.with_suffix(".failed")
        if failed.exists():
            return None
        if not target.exists():
            try:
                _build(source, list(flags), compiler, target)
            except subprocess.CalledProcessError as error:
                # The compiler ran and refused; a missing compiler or a timeout is tried again.
                with contextlib.suppress(OSError):
                    failed.write_bytes((error.stderr or b"")[-4000:])
                return None
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
