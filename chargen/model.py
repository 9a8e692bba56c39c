"""The recurrent language model: embedding, stacked recurrent cells, output projection.

One interface for every cell type: ``forward(ids, hidden) -> (logits, hidden)`` and
``init_hidden(batch)``. The loss is computed by the caller. The cells are torch's fused
implementations; ``rnn`` is the plain recurrence h_t = tanh(W_hh h_{t-1} + W_xh x_t + b).
"""

from __future__ import annotations

import torch
from torch import nn

from chargen.config import CELLS, ModelConfig
from chargen.errors import UsageError

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

CELL_TYPES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
assert tuple(CELL_TYPES) == CELLS, "config.CELLS and the registry must list the same cells"


class RNNLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise UsageError("the model needs a vocabulary; build the tokenizer first")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        # torch applies its own dropout only between stacked layers; self.dropout covers the
        # embedding and the last layer's output.
        self.rnn = CELL_TYPES[config.cell](
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            # Weight tying: one matrix embeds and un-embeds tokens (Press & Wolf 2017,
            # "Using the Output Embedding to Improve Language Models"; Inan et al. 2017).
            self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        if self.config.cell == "lstm":
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
        self, ids: torch.Tensor, hidden: Hidden | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        out, hidden = self.rnn(x, hidden)  # (B, T, H)
        return self.head(self.dropout(out)), hidden  # (B, T, V)

    def init_hidden(self, batch: int) -> Hidden:
        # new_zeros: the state follows the weights' device and dtype.
        weight = self.head.weight
        zeros = weight.new_zeros(self.config.num_layers, batch, self.config.hidden_size)
        if self.config.cell == "lstm":
            return zeros, zeros.clone()
        return zeros

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


def select_hidden(hidden: Hidden, index: torch.Tensor) -> Hidden:
    """Rows ``index`` of the batch dimension of a hidden state."""
    if isinstance(hidden, tuple):
        return tuple(h[:, index] for h in hidden)
    return hidden[:, index]
