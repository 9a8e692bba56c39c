"""The layer-normalised LSTM (Ba, Kiros and Hinton 2016, "Layer Normalization", section 3.1):
``--cell lnlstm``.

Each gate's recurrent sum ``W_hh h`` is normalised over the hidden units of its row, to zero
mean and unit variance, and scaled by a learned gain before the input's gates are added; the
cell state is normalised the same way, with a gain and a shift, before its tanh:

    i, f, g, o = xg_t + gain_hh * norm(W_hh h_{t-1})       (xg_t = W_ih x_t + b)
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)
    h_t = sigmoid(o) tanh(gain_c * norm(c_t) + shift_c)

On tinyshakespeare it learns 0.015 nats/char more a training step than the plain LSTM
(benchmarks/cells.py, docs/experiments.md, 2026-12-07, night). The statistics span the whole
width, so a compiled window's threads meet three times a step instead of once
(``lstm_window.c``); elsewhere the loop below runs the same equations in torch.

The module has torch's LSTM interface (batch first, state ``(h, c)`` of shape (layers, B, H))
and its parameter names where they mean the same, plus ``gain_hh_l{k}`` (4H), ``gain_c_l{k}``
and ``shift_c_l{k}`` (H). It has one bias a layer: a second would add nothing before a
normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5
"""Added to each variance before its square root, as ``F.layer_norm``'s default."""


class LayerNormLSTM(nn.Module):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        batch_first: bool = True,
    ):
        super().__init__()
        if not batch_first:
            raise ValueError("LayerNormLSTM takes batch-first inputs only")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.dropout = num_layers, dropout
        bound = hidden_size**-0.5  # torch's LSTM initialisation
        for k in range(num_layers):
            inputs = input_size if k == 0 else hidden_size
            weights = {
                f"weight_ih_l{k}": torch.empty(4 * hidden_size, inputs).uniform_(-bound, bound),
                f"weight_hh_l{k}": torch.empty(4 * hidden_size, hidden_size).uniform_(
                    -bound, bound
                ),
                f"bias_ih_l{k}": torch.zeros(4 * hidden_size),
                f"gain_hh_l{k}": torch.ones(4 * hidden_size),
                f"gain_c_l{k}": torch.ones(hidden_size),
                f"shift_c_l{k}": torch.zeros(hidden_size),
            }
            for name, value in weights.items():
                self.register_parameter(name, nn.Parameter(value))

    def layer(self, k: int) -> tuple[torch.Tensor, ...]:
        """Layer ``k``'s weight_ih, weight_hh, bias, gain_hh, gain_c and shift_c."""
        names = ("weight_ih", "weight_hh", "bias_ih", "gain_hh", "gain_c", "shift_c")
        return tuple(getattr(self, f"{name}_l{k}") for name in names)

    def cell(
        self, k: int, gates_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``k``'s next ``h`` and ``c`` (N, H) from its input gates ``gates_x`` (N, 4H,
        bias included) and the state before."""
        _, weight_hh, _, gain_hh, gain_c, shift_c = self.layer(k)
        rows, width = h.shape
        recurrent = F.layer_norm((h @ weight_hh.t()).view(rows, 4, width), (width,), eps=EPS)
        gates = gates_x + recurrent.view(rows, 4 * width) * gain_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        shown = F.layer_norm(c, (width,), eps=EPS) * gain_c + shift_c
        return torch.sigmoid(o) * torch.tanh(shown), c

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The outputs (B, T, H) for a batch-first ``x`` (B, T, E) and the last state. Dropout
        between stacked layers is torch's, from its global generator, as in torch's LSTM."""
        batch, steps, _ = x.shape
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        out, last_h, last_c = x, [], []
        for k in range(self.num_layers):
            if k and self.dropout and self.training:
                out = F.dropout(out, self.dropout)
            weight_ih, _, bias, *_ = self.layer(k)
            gates_x = F.linear(out, weight_ih, bias)  # (B, T, 4H)
            h, c = state[0][k], state[1][k]
            outputs = []
            for t in range(steps):
                h, c = self.cell(k, gates_x[:, t], h, c)
                outputs.append(h)
            out = torch.stack(outputs, 1)
            last_h.append(h)
            last_c.append(c)
        return out, (torch.stack(last_h), torch.stack(last_c))
