"""Choosing tokens from logits: temperature, top-k and top-p, one draw per row.

``choose`` takes every setting as a per-row tensor, so one call serves a batch whose rows belong
to different requests with different settings. Each row's random draws come from its own
counter-based stream (``uniforms``): the t-th draw of a sequence depends only on the sequence's
key and t, so a seeded sequence draws the same numbers alone, in a batch of 64, or beside
strangers on a server (its text is the same wherever its logits are: on CPUs with bf16 the
engine's products change at 16 rows). Nothing here knows about models or text.

On a CPU the last part of a draw (softmax, cumulative sum, search) and the log-probabilities the
engine keeps run in ``draw.c``, built like the model's kernels (``chargen.model.native``): three
calls a step instead of a dozen torch operations of a few microseconds each, which for one
stream are a third of a token's time. torch's operators do the same elsewhere.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chargen.model import native

DRAW_SOURCE = Path(__file__).with_name("draw.c")


@dataclass(frozen=True)
class Settings:
    """Per-row sampling settings as tensors, prepared once for as long as the rows stay the same.

    A setting no row uses is None, so that ``choose`` skips its work entirely.
    """

    divisor: torch.Tensor  # (N, 1): each row's temperature (1 for greedy rows)
    greedy: torch.Tensor | None  # (N,) bool: rows that take the likeliest token
    top_k: torch.Tensor | None  # (N,): k, 0 for no limit
    top_p: torch.Tensor | None  # (N,): p, infinity for no limit
    tiny: bool = False  # some temperature is so small that logits / temperature could overflow

    @classmethod
    def of(cls, configs: list, device: torch.device | str = "cpu") -> Settings:
        """The settings of rows sampled with ``configs`` (anything with ``temperature``,
        ``top_k`` and ``top_p``: a ``SampleConfig``)."""
        temperatures = [c.temperature for c in configs]
        greedy = [t == 0 for t in temperatures]
        divisor = torch.tensor([t if t > 0 else 1.0 for t in temperatures], device=device)
        top_k = [c.top_k or 0 for c in configs]
        top_p = [c.top_p if c.top_p is not None and c.top_p < 1 else math.inf for c in configs]
        return cls(
            divisor[:, None],
            torch.tensor(greedy, device=device) if any(greedy) else None,
            torch.tensor(top_k, device=device) if any(top_k) else None,
            torch.tensor(top_p, device=device) if any(p < 1 for p in top_p) else None,
            tiny=any(0 < t < 1e-3 for t in temperatures),
        )


def choose(logits: torch.Tensor, settings: Settings, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` (N, V), each row with its own ``settings`` and its own
    random draw ``uniform`` (N,) in [0, 1)."""
    if settings.tiny:  # keep logits / temperature finite: the largest becomes 0
        logits = logits - logits.amax(dim=-1, keepdim=True)
    scaled = logits / settings.divisor
    if settings.top_k is not None:
        top_k = settings.top_k
        limited = (top_k > 0) & (top_k < logits.shape[-1])
        largest = int(top_k[limited].max()) if bool(limited.any()) else 0
        if largest:
            values = torch.topk(scaled, largest, dim=-1).values  # (N, largest)
            kth = values.gather(1, (top_k.clamp(1, largest) - 1)[:, None])  # (N, 1)
            kth = torch.where(limited[:, None], kth, -math.inf)
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if settings.top_p is not None:
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= settings.top_p[:, None]
        scaled = torch.full_like(scaled, -math.inf).scatter(
            -1, order, ordered.masked_fill(drop, -math.inf)
        )
    chosen = _inverse_transform(scaled, uniform)
    if settings.greedy is not None:
        chosen = torch.where(settings.greedy, logits.argmax(dim=-1), chosen)
    return chosen


def _inverse_transform(scaled: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Each row's uniform draw located in its cumulative distribution, softmax(scaled): one
    random number per row, where the Gumbel trick needs one per token. The first token whose
    cumulative probability exceeds the draw, so never a token of probability zero."""
    rows, vocab = scaled.shape
    lib = _kernel_for(scaled)
    if lib is not None:
        uniform = uniform.to(torch.float64).contiguous()
        tokens = torch.empty(rows, dtype=torch.int64)
        work = torch.empty(vocab, dtype=torch.float64)
        lib.draw(rows, vocab, scaled.stride(0), *map(_address, (scaled, uniform, work, tokens)))
        return tokens
    cdf = torch.softmax(scaled, dim=-1).cumsum(dim=-1, dtype=wide(scaled.device))  # (N, V)
    target = uniform.to(device=cdf.device, dtype=cdf.dtype)[:, None] * cdf[:, -1:]
    chosen = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab - 1)
    return chosen.squeeze(-1)


def wide(device: torch.device) -> torch.dtype:
    """The precision of cumulative probabilities and kept log-probabilities: float64, float32
    on Apple's MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def log_normalisers(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of each row of ``logits`` (N, V), in ``wide`` precision: a token's
    log-probability is its logit minus its row's normaliser."""
    lib = _kernel_for(logits)
    if lib is None:
        return torch.logsumexp(logits, dim=-1).to(wide(logits.device))
    out = torch.empty(logits.shape[0], dtype=torch.float64)
    lib.log_normalisers(*logits.shape, logits.stride(0), _address(logits), _address(out))
    return out


def picked(logits: torch.Tensor, tokens: torch.Tensor, normalisers: torch.Tensor) -> torch.Tensor:
    """The log-probability of each row's token ``tokens[row]`` (each below V), given the row's
    ``normalisers`` (from ``log_normalisers``), in ``wide`` precision."""
    lib = _kernel_for(logits)
    if lib is None or tokens.dtype != torch.int64 or not tokens.is_contiguous():
        return logits.gather(1, tokens[:, None])[:, 0].to(normalisers.dtype) - normalisers
    rows = logits.shape[0]
    out = torch.empty(rows, dtype=torch.float64)
    tensors = (logits, tokens, normalisers.contiguous(), out)
    lib.picked(rows, logits.stride(0), *map(_address, tensors))
    return out


@functools.cache
def _kernel() -> ctypes.CDLL | None:
    lib = native.load(DRAW_SOURCE, ("-O2", "-shared", "-fPIC", "-lm"), ())
    if lib is not None:
        size, wide, pointer = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
        lib.log_normalisers.argtypes = [size, size, wide, pointer, pointer]
        lib.draw.argtypes = [size, size, wide] + [pointer] * 4
        lib.picked.argtypes = [size, wide] + [pointer] * 4
        for function in (lib.log_normalisers, lib.draw, lib.picked):
            function.restype = None
    return lib


def _kernel_for(rows: torch.Tensor) -> ctypes.CDLL | None:
    """The compiled helpers where they can read ``rows`` (N, V): float32 on the CPU, each row's
    values side by side."""
    if rows.device.type != "cpu" or rows.dtype != torch.float32 or rows.stride(-1) != 1:
        return None
    return _kernel()


def _address(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


# ---------------------------------------------------------------------------- random streams

STREAM_STEP = np.uint64(0x9E3779B97F4A7C15)
"""SplitMix64's increment (the golden ratio in 64 bits): a stream's state advances by it."""
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def sequence_key(seed: int | None, index: int = 0) -> int:
    """The 64-bit key of the random stream of sequence ``index`` of a request with ``seed``
    (any integer); a fresh random key without a seed."""
    if seed is None:
        return secrets.randbits(64)
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stream_start(key: int, position: int = 0) -> int:
    """The state of stream ``key`` before its draw number ``position``."""
    return (key + (position + 1) * int(STREAM_STEP)) & _MASK


def uniforms(states: np.ndarray, count: int) -> torch.Tensor:
    """The next ``count`` draws of streams at ``states`` (uint64, from ``stream_start``):
    float64 in [0, 1), shape (N, count).

    SplitMix64 (Steele, Lea and Flood 2014, "Fast splittable pseudorandom number generators"):
    the n-th output of the generator seeded with ``key`` is a mix of ``key + (n + 1) * step``,
    so every draw of every stream is computed directly from a counter, a whole block of them in a
    few array operations (uint64 arithmetic wraps around, as the mix needs).
    """
    x = states[:, None] + np.arange(count, dtype=np.uint64)[None, :] * STREAM_STEP
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) * 2.0**-53)
