"""The LSTM's one-token step on a compiled kernel (``lstm_step.c``), for sampling.

Sampling one stream is one small matrix product a token with a weight too big for a core's
cache, plus a dozen torch calls of a few microseconds each. ``CompiledStepper`` does a layer's
product, its cell and the output logits in one call, with the recurrent weights in bf16 split
by hidden unit across the threads: half the bytes of float32 to read a token, and each core's
share stays in its own L2 between tokens where it fits (0.8 MB each for two threads at 448
units; docs/experiments.md, 2026-12-07, later). State, sums and the output layer stay
float32; on 4,000 characters of tinyshakespeare the mean log-loss moved by 2e-6 nats.

The layer-normalised LSTM (``lnlstm``) steps on ``lnlstm_step``: the same products, its threads
meeting twice more a token for the normalisations' statistics.

It takes and gives what ``Stepper`` does, and each row's numbers are the same whatever rows run
beside it. It exists only for LSTMs (plain or layer-normalised) whose width is a multiple of
8, on x86 CPUs with AVX2 and FMA, where the system's C compiler builds the kernel
(``chargen.model.native``); ``available`` says whether that holds.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from chargen.model import native
from chargen.model.rnn import LSTMS, Hidden, RNNLanguageModel

SOURCE = Path(__file__).with_name("lstm_step.c")
FLAGS = ("-O2", "-shared", "-fPIC", "-fopenmp", "-mavx2", "-mfma")
CPU_FLAGS = ("avx2", "fma")
BLOCK = 8  # hidden units a block: the kernel's packing and its width rule


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it cannot be built or run here."""
    lib = native.load(SOURCE, FLAGS, CPU_FLAGS)
    if lib is not None:
        size, pointer = ctypes.c_int, ctypes.c_void_p
        lib.lstm_step.argtypes = [size] * 5 + [pointer] * 2 + [ctypes.c_int64] + [pointer] * 10
        lib.lnlstm_step.argtypes = lib.lstm_step.argtypes + [pointer] * 4
        lib.lstm_step.restype = lib.lnlstm_step.restype = ctypes.c_int
    return lib


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def available(model: RNNLanguageModel, device: torch.device) -> bool:
    """Whether ``model`` can step on the kernel on ``device``."""
    config = model.config
    return (
        device.type == "cpu"
        and model.embedding.weight.device.type == "cpu"
        and config.cell in LSTMS
        and config.hidden_size % BLOCK == 0
        and kernel() is not None
    )


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (K, 4H), gates i, f, g, o side by side, as the kernel reads it: bf16, for each
    block of 8 units and each k the block's 32 gate values in one line, i and f of each unit in
    turn and then g and o, (H / 8, K, 2, 8, 2)."""
    rows, gates = weight.shape
    hidden = gates // 4
    # (k, pair of gates, gate of the pair, block, unit) to (block, k, pair, unit, gate)
    pairs = weight.view(rows, 2, 2, hidden // BLOCK, BLOCK)
    return pairs.permute(3, 0, 1, 4, 2).bfloat16().contiguous()


class CompiledStepper:
    """One-token steps of an LSTM language model on the kernel: ``Stepper``'s interface and
    cell, with bf16 recurrent and input weights."""

    def __init__(self, model: RNNLanguageModel, never: tuple[int, ...] = ()):
        self.lib = kernel()
        config = model.config
        self.num_layers, self.hidden_size = config.num_layers, config.hidden_size
        self.normalised = config.cell == "lnlstm"
        rnn, hidden = model.rnn, config.hidden_size
        doubled = torch.ones(4 * hidden)
        if not self.normalised:  # the cell gate: tanh(x) = 2 sigmoid(2x) - 1
            doubled[2 * hidden : 3 * hidden] = 2
        own = ("gain_hh", "gain_c", "shift_c") if self.normalised else ("bias_hh",)
        with torch.no_grad():
            weights = [
                {
                    name: getattr(rnn, f"{name}_l{k}").float()
                    for name in ("weight_ih", "weight_hh", "bias_ih", *own)
                }
                for k in range(self.num_layers)
            ]
            bias = [(w["bias_ih"] + w.get("bias_hh", 0)) * doubled for w in weights]
            # (V, 4H): every token's first-layer input gates, biases included
            first = weights[0]
            table = model.embedding.weight.float() @ (first["weight_ih"].t() * doubled)
            self.table = (table + bias[0]).contiguous()
            self.w_hh = [pack(w["weight_hh"].t() * doubled) for w in weights]
            self.w_ih = [None] + [pack(w["weight_ih"].t() * doubled) for w in weights[1:]]
            if self.normalised:
                self.norms = [tuple(w[name].clone() for name in own) for w in weights]
            self.bias = [None] + [b.contiguous() for b in bias[1:]]
            head = model.head
            self.vocab_size = head.weight.shape[0]
            padded = -self.vocab_size % 8
            self.w_out = torch.nn.functional.pad(head.weight.float().t(), (0, padded)).contiguous()
            b_out = head.bias.float().clone()
            b_out[list(never)] = -torch.inf  # tokens never to write get no probability
            self.b_out = torch.nn.functional.pad(b_out, (0, padded), value=-torch.inf)
        # the kernel's fixed arguments as ctypes pointers, made once (the tensors stay referenced)
        self.p_start = [_pointer(self.table)] + [_pointer(b) for b in self.bias[1:]]
        self.p_w_ih = [None] + [_pointer(w) for w in self.w_ih[1:]]
        self.p_w_hh = [_pointer(w) for w in self.w_hh]
        self.p_norms = [[_pointer(t) for t in norm] for norm in getattr(self, "norms", ())]
        self.p_output = (_pointer(self.w_out), _pointer(self.b_out))
        self._scratch = torch.empty(0)  # lnlstm_step's, kept between tokens

    def __call__(self, ids: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """Logits (N, V) for tokens ``ids`` (N,) and the next hidden state."""
        h_all, c_all = (_plain(state) for state in hidden)
        if ids.dtype != torch.int64 or not ids.is_contiguous():
            ids = ids.to(torch.int64).contiguous()
        layers, rows, width = h_all.shape
        if (layers, width) != (self.num_layers, self.hidden_size) or c_all.shape != h_all.shape:
            raise ValueError(f"a state of shape {tuple(h_all.shape)} does not fit this model")
        if ids.shape != (rows,):
            raise ValueError(f"{tuple(ids.shape)} ids for a state of {rows} rows")
        new = h_all.new_empty(2, layers, rows, width)  # h and c in one allocation
        logits = self.w_out.new_empty(rows, self.w_out.shape[1])
        for k in range(layers):
            if self._layer(k, ids, h_all, c_all, new, logits):
                raise IndexError(f"a token id outside 0 to {len(self.table) - 1}: {ids.tolist()}")
        return logits[:, : self.vocab_size], (new[0], new[1])

    def _layer(self, k, ids, h_all, c_all, new, logits) -> int:
        """Layer ``k`` into ``new`` (and ``logits`` for the last); the kernel's status."""
        layers, rows, width = h_all.shape
        last = k == layers - 1
        arguments = [
            rows,
            width,
            width if k else 0,
            self.w_out.shape[1],
            torch.get_num_threads(),
            self.p_start[k],
            ids.data_ptr() if k == 0 else None,
            len(self.table),
            new[0, k - 1].data_ptr() if k else None,
            self.p_w_ih[k],
            self.p_w_hh[k],
        ]
        if self.normalised:
            arguments += self.p_norms[k]
        arguments += [
            h_all[k].data_ptr(),
            c_all[k].data_ptr(),
            new[0, k].data_ptr(),
            new[1, k].data_ptr(),
            *(self.p_output if last else (None, None)),
            logits.data_ptr() if last else None,
        ]
        if not self.normalised:
            return self.lib.lstm_step(*arguments)
        size = rows * (8 * width + 5 * width // 4)
        if self._scratch.numel() < size:
            self._scratch = torch.empty(size, dtype=torch.float32)
        return self.lib.lnlstm_step(*arguments, self._scratch.data_ptr())


def _plain(state: torch.Tensor) -> torch.Tensor:
    """``state`` as float32 in one contiguous block, copied only when it is not."""
    if state.dtype != torch.float32 or not state.is_contiguous():
        state = state.float().contiguous()
    return state
