"""The LSTM's recurrence for training on CPUs with Intel AMX: a compiled kernel per window.

torch's fused LSTM runs each of a window's 64 time steps as its own bf16 product of the
state with the 2 MB recurrent weight, forward and again backward, and those products are
most of a training step. ``lstm_amx.c`` runs the whole window in one call instead: each
thread keeps its slice of the weight in its core's cache and the threads meet once a step
(docs/experiments.md, 2026-12-01 evening). Everything else (the input's and the weight's
gradients, the output layer) stays with torch, as large products.

The kernel is built with the system's C compiler the first time it is needed, into
``cache_root()/kernels``, and used only when all of these hold: an x86 CPU with AMX and
AVX-512 BF16 that the OS lets use its tiles, a compiler that builds the file, bf16
autocast on the CPU, an LSTM whose width is a multiple of 32, and gradients being taken.

For now the kernel is opt-in, with ``CHARGEN_AMX=1`` in the environment (``CHARGEN_KERNELS=0``
turns it off like every compiled kernel): with its gradients summed in float32 it is not yet
faster than torch's LSTM end to end (docs/experiments.md, 2026-12-01 evening). Otherwise
torch's LSTM runs as before.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chargen.model import native

ENV_SWITCH = "CHARGEN_AMX"
SOURCE = Path(__file__).with_name("lstm_amx.c")
FLAGS = ["-O2", "-shared", "-fPIC", "-fopenmp", "-mamx-tile", "-mamx-bf16", "-mavx512f"]
FLAGS += ["-mavx512bw", "-mavx512vl", "-mavx512bf16"]
CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx512bw", "avx512vl")


def _cpu_has_amx() -> bool:
    return set(CPU_FLAGS) <= native.cpu_flags()


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it cannot run here (the reasons are in the module's
    docstring). Built once per version of the source and cached on disk."""
    if os.environ.get(ENV_SWITCH) != "1" or not _cpu_has_amx():
        return None
    lib = native.load(SOURCE, tuple(FLAGS), ())
    if lib is None or lib.amx_request() != 0:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int
    lib.lstm_forward.argtypes = [size] * 4 + [pointer] * 9
    lib.lstm_backward.argtypes = [size] * 4 + [pointer] * 11
    lib.matmul_bf16.argtypes = [size] * 4 + [pointer] * 3
    for function in (lib.lstm_forward, lib.lstm_backward, lib.matmul_bf16):
        function.restype = ctypes.c_int
    return lib


def usable(rnn: nn.Module, x: torch.Tensor) -> bool:
    """Whether a training forward of ``rnn`` on ``x`` can run on the kernel."""
    return (
        isinstance(rnn, nn.LSTM)
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and rnn.hidden_size % 32 == 0
        and rnn.input_size % 16 == 0
        and rnn.proj_size == 0
        and not rnn.bidirectional
        and rnn.bias
        and kernel() is not None
    )


def _address(tensor: torch.Tensor) -> int:
    assert tensor.is_contiguous()
    return tensor.data_ptr()


def _check(status: int) -> None:
    if status:
        raise MemoryError("the LSTM kernel could not allocate its buffers")


def pack_b(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (K, N) as the B operand of ``matmul_bf16``: bf16, K padded to a multiple of
    32 with zeros, each two neighbouring rows side by side (see lstm_amx.c)."""
    rows, cols = matrix.shape
    matrix = F.pad(matrix.detach().bfloat16(), (0, 0, 0, -rows % 32))
    tiles = matrix.view(-1, 16, 2, cols // 16, 16)
    return tiles.permute(3, 0, 1, 4, 2).contiguous()


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` from bf16 (M, K) and (K, N) with float32 sums and result, on the tiles; the
    same bits at any thread count. N must be a multiple of 16."""
    a = F.pad(a.detach().bfloat16(), (0, -a.shape[1] % 32)).contiguous()
    rows, inner = a.shape
    out = a.new_empty(rows, b.shape[1], dtype=torch.float32)
    packed = pack_b(b)
    status = kernel().matmul_bf16(
        rows, inner, b.shape[1], torch.get_num_threads(), *map(_address, (a, packed, out))
    )
    _check(status)
    return out


class Recurrence(torch.autograd.Function):
    """One LSTM layer over a window.

    ``x`` (B, T, E); ``weight_ih`` (4H, E); ``bias_ih``, ``bias_hh`` (4H,); ``weight_hh`` (4H, H);
    ``h0``, ``c0`` (B, H). Returns the hidden states (B, T, H) and the last cell state (B, H),
    the first in bf16 (what the next layer or the output layer takes under autocast), the
    second in float32. Products in bf16 with float32 sums, as under autocast."""

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, bias_hh, weight_hh, h0, c0):
        batch, steps, width = x.shape
        gates, hidden = weight_hh.shape
        x16 = x.detach().bfloat16().contiguous()
        w_ih = weight_ih.detach().bfloat16()
        bias = (bias_ih.detach() + bias_hh.detach()).bfloat16()
        xg = torch.addmm(bias, x16.view(-1, width), w_ih.t())
        weight = weight_hh.detach().float().contiguous()
        h0, c0 = h0.detach().float().contiguous(), c0.detach().float().contiguous()
        packed_forward = weight.new_empty(gates * hidden, dtype=torch.bfloat16)
        packed_backward = torch.empty_like(packed_forward)
        hs = weight.new_empty(batch, steps, hidden, dtype=torch.bfloat16)
        cs = weight.new_empty(steps, hidden // 16, batch, 16)
        acts = weight.new_empty(steps, hidden // 16, batch, 4, 16)
        tensors = (xg, weight, packed_forward, packed_backward, h0, c0, hs, cs, acts)
        threads = torch.get_num_threads()
        _check(kernel().lstm_forward(steps, batch, hidden, threads, *map(_address, tensors)))
        ctx.save_for_backward(x16, w_ih, h0, c0, hs, cs, acts, packed_backward)
        ctx.x_dtype = x.dtype
        return hs, cs[-1].transpose(0, 1).reshape(batch, hidden)

    @staticmethod
    def backward(ctx, dhs, dc_last):
        x16, w_ih, h0, c0, hs, cs, acts, packed_backward = ctx.saved_tensors
        batch, steps, hidden = hs.shape
        gates, width = 4 * hidden, x16.shape[-1]
        threads = torch.get_num_threads()
        dhs, dc_last = dhs.bfloat16().contiguous(), dc_last.float().contiguous()
        dh_last = torch.zeros_like(h0)  # the last state's gradient already comes in dhs
        dg = hs.new_empty(batch * steps, gates)
        d_bias = h0.new_empty(gates)
        dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
        tensors = (packed_backward, acts, cs, c0, dhs, dh_last, dc_last, dg, d_bias, dh0, dc0)
        _check(kernel().lstm_backward(steps, batch, hidden, threads, *map(_address, tensors)))
        dx = matmul(dg, w_ih).view(batch, steps, width) if ctx.needs_input_grad[0] else None
        dg_t = dg.t()
        d_weight_ih = matmul(dg_t, x16.view(-1, width))
        h_prev = torch.cat([h0.bfloat16().unsqueeze(1), hs[:, :-1]], dim=1)
        d_weight_hh = matmul(dg_t, h_prev.view(-1, hidden))
        if dx is not None:
            dx = dx.to(ctx.x_dtype)
        # Two tensors for the two biases: the trainer adds and scales gradients in place.
        return dx, d_weight_ih, d_bias, d_bias.clone(), d_weight_hh, dh0, dc0


def lstm(
    rnn: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``rnn(x, state)`` for a batch-first ``x`` (B, T, E), on the kernel (``usable`` must
    hold). Dropout between stacked layers is torch's, from its global generator, as in
    torch's LSTM."""
    batch = x.shape[0]
    if state is None:
        zeros = x.new_zeros(rnn.num_layers, batch, rnn.hidden_size, dtype=torch.float32)
        state = (zeros, zeros)
    out, last_h, last_c = x, [], []
    for k in range(rnn.num_layers):
        if k and rnn.dropout and rnn.training:
            out = F.dropout(out, rnn.dropout)
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
        out, c_last = Recurrence.apply(out, w_ih, b_ih, b_hh, w_hh, state[0][k], state[1][k])
        last_h.append(out[:, -1].float())
        last_c.append(c_last)
    return out, (torch.stack(last_h), torch.stack(last_c))
