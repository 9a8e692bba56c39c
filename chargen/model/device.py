"""Where tensors live and in what precision: device choice, bf16 support, thread count.

Kept apart so training, sampling and evaluation pick hardware the same way.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from chargen.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU for ``auto``; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            "--device mps: Apple's MPS backend is not available here; use --device cpu"
        )
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(device: torch.device, precision: str) -> bool:
    if precision == "fp32":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_bf16()
    else:
        supported = False
    if precision == "bf16" and not supported:
        raise UsageError(f"--precision bf16: {device.type} here has no bf16 support; use fp32")
    return supported


def autocast(device: torch.device, bf16: bool):
    """A context that runs matmuls in bf16 when ``bf16`` is set, else a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
