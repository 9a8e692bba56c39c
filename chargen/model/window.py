"""The LSTM's recurrence for float32 training on AVX2 CPUs: a compiled kernel per window.

Where a CPU has no bf16 products, training runs torch's float32 LSTM (oneDNN), whose 64 small
products a window, forward and again backward, run at about 60% of the cores' float32 peak on
a 2-core AVX2 machine. ``lstm_window.c`` runs a layer's whole window in one call instead, its
threads meeting once a time step (docs/experiments.md, 2026-12-07, evening). The input's
gates, the recurrent weight's gradient and the output layer stay with torch as large
products, and autograd takes the gradients of everything before the input's gates.

Used when all of these hold: an x86 CPU with AVX2 and FMA, a compiler that builds the kernel
(``chargen.model.native``), a float32 LSTM whose width is a multiple of 16 on the CPU, no
autocast, and gradients being taken. ``CHARGEN_KERNELS=0`` turns it off, as every kernel.
Every sum of the kernel has one order whatever the thread count.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from chargen.model import native
from chargen.model.lnlstm import LayerNormLSTM

SOURCE = Path(__file__).with_name("lstm_window.c")
FLAGS = ("-O2", "-shared", "-fPIC", "-fopenmp", "-mavx2", "-mfma")
CPU_FLAGS = ("avx2", "fma")
UNITS = 16  # the kernel's block of hidden units: the width must be a multiple of it


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it cannot be built or run here."""
    lib = native.load(SOURCE, FLAGS, CPU_FLAGS)
    if lib is not None:
        size, pointer = ctypes.c_int, ctypes.c_void_p
        lib.lstm_window_forward.argtypes = [size] * 4 + [pointer] * 9
        lib.lstm_window_backward.argtypes = [size] * 4 + [pointer] * 9
        lib.lnlstm_window_forward.argtypes = [size] * 4 + [pointer] * 15
        lib.lnlstm_window_backward.argtypes = [size] * 4 + [pointer] * 17
        for function in ("lstm", "lnlstm"):
            for part in ("forward", "backward"):
                getattr(lib, f"{function}_window_{part}").restype = ctypes.c_int
    return lib


def usable(rnn: nn.Module, x: torch.Tensor) -> bool:
    """Whether a training forward of ``rnn`` on ``x`` can run on the kernel."""
    return (
        isinstance(rnn, nn.LSTM)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and rnn.weight_hh_l0.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and rnn.hidden_size % UNITS == 0
        and rnn.proj_size == 0
        and not rnn.bidirectional
        and rnn.bias
        and kernel() is not None
    )


def _call(function, steps: int, batch: int, hidden: int, tensors: tuple[torch.Tensor, ...]):
    """Calls a kernel function on torch's thread count with ``tensors``' addresses, or on one
    thread where OpenMP gives fewer than that (a thread limit, dynamic teams): every sum has
    one order, so the result is the same."""
    for tensor in tensors:
        assert tensor.is_contiguous() and tensor.dtype == torch.float32
    addresses = [tensor.data_ptr() for tensor in tensors]
    refused = function(steps, batch, hidden, torch.get_num_threads(), *addresses)
    if refused == -1:
        refused = function(steps, batch, hidden, 1, *addresses)
    if refused == -1:
        raise RuntimeError("the LSTM kernel got no OpenMP thread to run on")
    if refused:
        raise MemoryError("the LSTM kernel could not allocate its buffers")


class Recurrence(torch.autograd.Function):
    """One LSTM layer's recurrence over a window: from the input's gates ``xg`` (B, T, 4H, both
    biases included), ``weight_hh`` (4H, H) and the first states ``h0``, ``c0`` (B, H), the
    hidden states (B, T, H) and the last cell state (B, H), as torch's LSTM computes them."""

    @staticmethod
    def forward(ctx, xg, weight_hh, h0, c0):
        batch, steps, gates = xg.shape
        hidden = gates // 4
        xg = xg.detach().contiguous()
        weight = weight_hh.detach().contiguous()
        h0, c0 = h0.detach().contiguous(), c0.detach().contiguous()
        packed_forward = torch.empty_like(weight)
        packed_backward = torch.empty_like(weight)
        hs = xg.new_empty(batch, steps, hidden)
        cs = xg.new_empty(batch, steps, hidden)
        acts = torch.empty_like(xg)
        tensors = (weight, packed_forward, packed_backward, xg, h0, c0, hs, cs, acts)
        _call(kernel().lstm_window_forward, steps, batch, hidden, tensors)
        ctx.save_for_backward(h0, c0, hs, cs, acts, packed_backward)
        return hs, cs[:, -1].clone()

    @staticmethod
    def backward(ctx, dhs, dc_last):
        h0, c0, hs, cs, acts, packed_backward = ctx.saved_tensors
        batch, steps, hidden = hs.shape
        dhs = torch.zeros_like(hs) if dhs is None else dhs.float().contiguous()
        dc_last = torch.zeros_like(c0) if dc_last is None else dc_last.float().contiguous()
        dg = torch.empty_like(acts)
        dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
        tensors = (packed_backward, acts, cs, c0, dhs, dc_last, dg, dh0, dc0)
        _call(kernel().lstm_window_backward, steps, batch, hidden, tensors)
        h_prev = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1)
        d_weight_hh = dg.view(-1, 4 * hidden).t() @ h_prev.view(-1, hidden)
        return dg, d_weight_hh, dh0, dc0


def lstm(
    rnn: nn.LSTM,
    x: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None,
    ids: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``rnn(x, state)`` for a batch-first ``x`` (B, T, E), on the kernel (``usable`` must
    hold). Dropout between stacked layers is torch's, from its global generator, as in
    torch's LSTM.

    Given the token ``ids`` (B, T) and the ``embedding`` weight that ``x`` is the rows of
    (no dropout between them), the first layer's input gates are looked up in a table of every
    token's gates (V x 4H) instead of taking a product for every position: with 65 characters
    and 1,024 positions a step, a sixteenth of the arithmetic, forward and backward."""
    batch = x.shape[0]
    if state is None:
        zeros = x.new_zeros(rnn.num_layers, batch, rnn.hidden_size)
        state = (zeros, zeros)
    out, last_h, last_c = x, [], []
    for k in range(rnn.num_layers):
        if k and rnn.dropout and rnn.training:
            out = F.dropout(out, rnn.dropout)
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        bias = getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}")
        if k == 0 and ids is not None and ids.numel() > embedding.shape[0]:
            xg = F.embedding(ids, F.linear(embedding, w_ih, bias))
        else:
            xg = F.linear(out, w_ih, bias)
        out, c_last = Recurrence.apply(xg, w_hh, state[0][k], state[1][k])
        last_h.append(out[:, -1])
        last_c.append(c_last)
    return out, (torch.stack(last_h), torch.stack(last_c))


def usable_layer_norm(rnn: nn.Module, x: torch.Tensor) -> bool:
    """Whether a forward of the layer-normalised LSTM ``rnn`` on ``x`` can run on the kernel:
    in training, and in evaluation too, where torch has no fused form of this cell to run
    instead (its loop takes several times as long). Under autocast it runs in float32: the
    recurrence has no bf16 form here."""
    return (
        isinstance(rnn, LayerNormLSTM)
        and x.device.type == "cpu"
        and rnn.weight_hh_l0.dtype == torch.float32
        and rnn.hidden_size % UNITS == 0
        and kernel() is not None
    )


class LayerNormRecurrence(torch.autograd.Function):
    """One layer-normalised LSTM layer's recurrence over a window: from the input's gates
    ``xg`` (B, T, 4H, bias included), ``weight_hh`` (4H, H), the gains and shift (4H, H, H)
    and the first states ``h0``, ``c0`` (B, H), the hidden states (B, T, H) and the last cell
    state (B, H), as ``LayerNormLSTM.cell`` computes them step by step."""

    @staticmethod
    def forward(ctx, xg, weight_hh, gain_hh, gain_c, shift_c, h0, c0):
        batch, steps, gates = xg.shape
        hidden = gates // 4
        xg, weight = xg.detach().float().contiguous(), weight_hh.detach().contiguous()
        gains = tuple(p.detach().contiguous() for p in (gain_hh, gain_c, shift_c))
        h0, c0 = h0.detach().float().contiguous(), c0.detach().float().contiguous()
        packed_forward, packed_backward = torch.empty_like(weight), torch.empty_like(weight)
        hs, cs, chat = (xg.new_empty(batch, steps, hidden) for _ in range(3))
        acts, rhat = torch.empty_like(xg), torch.empty_like(xg)
        rstd = xg.new_empty(batch, steps, 5)
        tensors = (weight, packed_forward, packed_backward, xg, *gains, h0, c0, hs, cs, acts)
        _call(kernel().lnlstm_window_forward, steps, batch, hidden, (*tensors, rhat, chat, rstd))
        ctx.save_for_backward(h0, c0, hs, cs, acts, rhat, chat, rstd, packed_backward, *gains)
        ctx.spent = False
        return hs, cs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dhs, dc_last):
        if ctx.spent:  # the kernel wrote over a saved tensor: there is no second time
            raise RuntimeError("the layer-normalised window's backward runs once a forward")
        ctx.spent = True
        h0, c0, hs, cs, acts, rhat, chat, rstd, packed_backward, *gains = ctx.saved_tensors
        batch, steps, hidden = hs.shape
        dhs = torch.zeros_like(hs) if dhs is None else dhs.float().contiguous()
        dc_last = torch.zeros_like(c0) if dc_last is None else dc_last.float().contiguous()
        dg = torch.empty_like(acts)
        d_gain, d_shift = hs.new_empty(5 * hidden), hs.new_empty(hidden)
        dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
        saved = (acts, cs, c0, rhat, chat, rstd, dhs, dc_last)
        tensors = (packed_backward, *gains, *saved, dg, d_gain, d_shift, dh0, dc0)
        _call(kernel().lnlstm_window_backward, steps, batch, hidden, tensors)
        dr = rhat  # the gradient at the recurrent sums, written over their normalised values
        h_prev = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1)
        d_weight_hh = dr.view(-1, 4 * hidden).t() @ h_prev.view(-1, hidden)
        d_gain_hh, d_gain_c = d_gain.split([4 * hidden, hidden])
        return dg, d_weight_hh, d_gain_hh, d_gain_c, d_shift, dh0, dc0


def lnlstm(
    rnn: LayerNormLSTM,
    x: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None,
    ids: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``rnn(x, state)`` on the kernel (``usable_layer_norm`` must hold), as ``lstm`` for
    torch's LSTM: the first layer's input gates from a table of every token's where ``ids``
    and ``embedding`` are given, dropout between layers from torch's global generator."""
    batch = x.shape[0]
    if state is None:
        zeros = x.new_zeros(rnn.num_layers, batch, rnn.hidden_size, dtype=torch.float32)
        state = (zeros, zeros)
    out, last_h, last_c = x, [], []
    with torch.autocast("cpu", enabled=False):
        for k in range(rnn.num_layers):
            if k and rnn.dropout and rnn.training:
                out = F.dropout(out, rnn.dropout)
            w_ih, w_hh, bias, gain_hh, gain_c, shift_c = rnn.layer(k)
            if k == 0 and ids is not None and ids.numel() > embedding.shape[0]:
                xg = F.embedding(ids, F.linear(embedding.float(), w_ih, bias))
            else:
                xg = F.linear(out.float(), w_ih, bias)
            out, c_last = LayerNormRecurrence.apply(
                xg, w_hh, gain_hh, gain_c, shift_c, state[0][k], state[1][k]
            )
            last_h.append(out[:, -1])
            last_c.append(c_last)
    return out, (torch.stack(last_h), torch.stack(last_c))
