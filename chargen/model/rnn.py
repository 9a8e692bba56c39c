"""The recurrent language model: embedding, stacked recurrent cells, output projection.

One interface for every cell type: ``forward(ids, hidden) -> (logits, hidden)`` and
``init_hidden(batch)``. The loss is computed by the caller. The cells are torch's fused
implementations, but for ``lnlstm``, the layer-normalised LSTM of ``chargen.model.lnlstm``;
``rnn`` is the plain recurrence h_t = tanh(W_hh h_{t-1} + W_xh x_t + b).
Also here: the helpers that detach, reset, select and join hidden states.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chargen.config import CELLS, ModelConfig
from chargen.errors import UsageError
from chargen.model import amx, window
from chargen.model.lnlstm import LayerNormLSTM
from chargen.model.ngram import Mixing, NGram

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

MASK_LEVELS = 1 << 16
"""Dropout masks on a CPU compare 16 random bits with a threshold: ``p`` is rounded to a
multiple of 1/65,536."""


def dropout_mask(
    shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` that keeps each element with probability ``1 - p`` (``p``
    rounded to a multiple of 1/65,536), and that probability, to scale the kept ones by.

    On a CPU, torch's ``bernoulli_`` draws each element on its own: 5.7 ms for the (16, 64,
    512) output of a default step, a fifth of the step. Here every 64-bit draw gives four
    16-bit numbers: 0.7 ms for the same mask (docs/experiments.md)."""
    count = math.prod(shape)
    kept = max(1, round((1 - p) * MASK_LEVELS))
    if count == 0 or kept >= MASK_LEVELS:  # 16 bits cannot hold the threshold of p = 0
        return torch.ones(shape, dtype=torch.bool), kept / MASK_LEVELS
    words = torch.randint(-(2**63), 2**63 - 1, (-(-count // 4),), generator=generator)
    halves = words.view(torch.int16)[:count].view(shape)
    return halves < kept - MASK_LEVELS // 2, kept / MASK_LEVELS


CELL_TYPES: dict[str, type[nn.Module]] = {
    "rnn": nn.RNN,
    "lstm": nn.LSTM,
    "gru": nn.GRU,
    "lnlstm": LayerNormLSTM,
}
"""Each cell's module, all with the interface of torch's recurrent layers: built from the
input size, the width, ``num_layers``, ``dropout`` and ``batch_first``; called on (B, T, E)."""
assert tuple(CELL_TYPES) == CELLS, "config.CELLS and the registry must list the same cells"

GATES = {"rnn": 1, "lstm": 4, "gru": 3, "lnlstm": 4}
"""Each cell's gates, stacked in its weights: ``weight_ih_l{k}`` is (gates * hidden, inputs)."""

LSTMS = ("lstm", "lnlstm")
"""The cells with an LSTM's gates (i, f, g, o), a cell state beside ``h`` and a forget gate."""


class RNNLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise UsageError("the model needs a vocabulary; build the tokenizer first")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        # torch applies its own dropout only between stacked layers; forward covers the
        # embedding and the last layer's output.
        self.rnn = CELL_TYPES[config.cell](
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            # Weight tying: one matrix embeds and un-embeds tokens (Press & Wolf 2017,
            # "Using the Output Embedding to Improve Language Models"; Inan et al. 2017).
            self.head.weight = self.embedding.weight
        self._init_weights()
        # The n-gram model mixed in (``chargen.model.ngram``): its counts are attached after
        # building (``counts``); how it is mixed with the network (``ngram.Mixing``) is fitted
        # and saved with the weights: the network alone until an evaluation fits it.
        self.counts: NGram | None = None
        if config.ngram:
            self.register_buffer("ngram_weight", torch.tensor(1.0))
            self.register_buffer("ngram_product", torch.tensor([1.0, 0.0]))

    def _init_weights(self) -> None:
        if self.config.cell in LSTMS:
            # Forget-gate bias of 1 so the cell remembers by default early in training
            # (Jozefowicz et al. 2015, "An Empirical Exploration of Recurrent Network
            # Architectures").
            hidden = self.config.hidden_size
            for name, bias in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        bias[hidden : 2 * hidden].fill_(
                            1.0
                        )  # gate order: input, forget, cell, output

    def forward(
        self,
        ids: torch.Tensor,
        hidden: Hidden | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Hidden]:
        """Logits (B, T, V) for ``ids`` (B, T) and the state after them. In training mode,
        ``generator`` draws the dropout masks of the embedding and the output (torch's global
        generator without one); masks between stacked layers always come from the global one."""
        embedded = self.embedding(ids)
        x = self._dropout(embedded, generator)  # (B, T, E)
        if amx.usable(self.rnn, x):
            out, hidden = amx.lstm(self.rnn, x, hidden)  # the same, on AMX tiles
        elif window.usable(self.rnn, x):  # the same in float32, compiled
            table = (ids, self.embedding.weight) if x is embedded else (None, None)
            out, hidden = window.lstm(self.rnn, x, hidden, *table)
        elif window.usable_layer_norm(self.rnn, x):  # the layer-normalised LSTM, compiled
            table = (ids, self.embedding.weight) if x is embedded else (None, None)
            out, hidden = window.lnlstm(self.rnn, x, hidden, *table)
        else:
            out, hidden = self.rnn(x, hidden)  # (B, T, H)
        return self.head(self._dropout(out, generator)), hidden  # (B, T, V)

    def _dropout(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        p = self.config.dropout
        if not self.training or p == 0:
            return x
        if x.device.type != "cpu":
            if generator is None:
                return F.dropout(x, p)
            return x * torch.empty_like(x).bernoulli_(1 - p, generator=generator) / (1 - p)
        keep, share = dropout_mask(x.shape, p, generator)
        return x * (keep.to(x.dtype) * (1 / share))

    @property
    def draws_from_global_random(self) -> bool:
        """Whether training draws from torch's global generator: dropout between stacked
        layers, which the fused cell takes from nowhere else."""
        return self.config.dropout > 0 and self.config.num_layers > 1

    def init_hidden(self, batch: int) -> Hidden:
        # new_zeros: the state follows the weights' device and dtype.
        weight = self.head.weight
        zeros = weight.new_zeros(self.config.num_layers, batch, self.config.hidden_size)
        if self.config.cell in LSTMS:
            return zeros, zeros.clone()
        return zeros

    @staticmethod
    def shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The shape of every entry of the ``state_dict`` of a model of ``config``, worked out
        without building one (a test holds it to the real thing): a damaged or hostile config
        is checked against saved weights before anything is allocated."""
        vocab, width, hidden = config.vocab_size, config.embedding_dim, config.hidden_size
        gates = GATES[config.cell] * hidden
        shapes = {"embedding.weight": (vocab, width)}
        for k in range(config.num_layers):
            shapes[f"rnn.weight_ih_l{k}"] = (gates, width if k == 0 else hidden)
            shapes[f"rnn.weight_hh_l{k}"] = (gates, hidden)
            shapes[f"rnn.bias_ih_l{k}"] = (gates,)
            if config.cell == "lnlstm":  # one bias, and the normalisations' gains and shift
                shapes[f"rnn.gain_hh_l{k}"] = (gates,)
                shapes[f"rnn.gain_c_l{k}"] = (hidden,)
                shapes[f"rnn.shift_c_l{k}"] = (hidden,)
            else:
                shapes[f"rnn.bias_hh_l{k}"] = (gates,)
        shapes["head.weight"] = (vocab, hidden)
        shapes["head.bias"] = (vocab,)
        if config.ngram:
            shapes["ngram_weight"] = ()
            shapes["ngram_product"] = (2,)
        return shapes

    @property
    def mixing(self) -> Mixing:
        """How the counts are mixed in (the network alone where there are none)."""
        if self.counts is None:
            return Mixing()
        return Mixing(float(self.ngram_weight), *self.ngram_product.tolist())

    @mixing.setter
    def mixing(self, mixing: Mixing) -> None:
        self.ngram_weight.fill_(mixing.weight)
        self.ngram_product.copy_(torch.tensor(mixing.product))

    def undecayed_parameters(self) -> list[nn.Parameter]:
        """The parameters training leaves out of weight decay: the layer-normalised LSTM's
        vectors (its normalisations' gains and shift, every bias). Decay pulls the gains
        towards zero: with it, 1,800 steps on tinyshakespeare scored 1.4580 nats/char, without
        it 1.4422 (docs/experiments.md). The other cells decay everything, as tuned; a plain
        LSTM without decay on its biases scored the same (1.4688 against 1.4692)."""
        if self.config.cell != "lnlstm":
            return []
        return [p for p in self.parameters() if p.dim() == 1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied matrix once


def detach_hidden(hidden: Hidden) -> Hidden:
    """The same state cut from the graph of the window that produced it.

    Truncated BPTT: the next window starts from this state but backpropagates no further, so memory
    and time per step stay bounded while the model still sees context from earlier windows.
    """
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def reset_rows(hidden: Hidden, rows: torch.Tensor) -> Hidden:
    """The state with the streams where ``rows`` (B,) is true set back to zero, the start state."""
    keep = (~rows).to(dtype=hidden[0].dtype if isinstance(hidden, tuple) else hidden.dtype)
    if isinstance(hidden, tuple):
        return tuple(h * keep[None, :, None] for h in hidden)
    return hidden * keep[None, :, None]


def select_hidden(hidden: Hidden, index: torch.Tensor) -> Hidden:
    """Rows ``index`` of the batch dimension of a hidden state."""
    if isinstance(hidden, tuple):
        return tuple(h[:, index] for h in hidden)
    return hidden[:, index]


def join_hidden(parts: list[Hidden]) -> Hidden:
    """The states of groups of streams joined into one, in the order given."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(layer, 1) for layer in zip(*parts, strict=True))
    return torch.cat(parts, 1)
