"""One-token steps of a trained model: the stepper every generation loop runs on.

The fused ``nn.LSTM`` costs far more in call overhead than in arithmetic when it is called once
per token; ``Stepper`` writes the cell equations out with the trained weights instead (those of
the layer-normalised LSTM too, whose module is a loop in torch). Nothing here trains or chooses
tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chargen.model.lnlstm import EPS
from chargen.model.rnn import LSTMS, Hidden, RNNLanguageModel


class Bf16Product:
    """``x @ weight`` in bfloat16 for a fixed ``weight`` (K, N).

    On a CPU the weight is laid out once in oneDNN's own blocked format, which makes each
    product about 15% faster for 64 streams than ``x.bfloat16() @ weight``. That layout comes
    from torch's private mkldnn operators; where they are missing or refuse (another device,
    another torch), the plain product is used.
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.bfloat16()
        self.packed = None
        if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.t().contiguous(), None)
                probe = torch.ones(1, weight.shape[0], dtype=torch.bfloat16)
                if torch.equal(self._packed_product(probe, packed), probe @ self.weight):
                    self.packed = packed
            except (AttributeError, RuntimeError):
                pass

    @staticmethod
    def _packed_product(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.bfloat16()
        return x @ self.weight if self.packed is None else self._packed_product(x, self.packed)


class Stepper:
    """One-token steps of a trained model, for sampling.

    Calling the fused ``nn.LSTM`` once per token costs far more in call overhead than in
    arithmetic at small batch sizes. This writes the cell equations out with the same weights
    (torch's gate order and biases; ``chargen.model.lnlstm``'s equations for ``lnlstm``) and
    precomputes the first layer's input projection for every token, ``embedding @ W_ih^T +
    b_ih``, so a step is a table lookup and one matrix product per layer. It gives the same
    logits as ``forward`` on one token at a time, in eval mode.

    The last layer's new state goes into two products, the output logits now and its own
    recurrence at the next step. ``chained``, they are made as one, ``h @ [W_out | W_hh]``, and
    the second half is kept for the next call. That call uses it when it gets the very state
    object this call returned (as a sampling loop passes it on); given any other state (rows
    picked out, a state of its own), it multiplies afresh. A state changed in place is not
    noticed: make a new one.
    """

    def __init__(
        self,
        model: RNNLanguageModel,
        bf16: bool = False,
        chained: bool = False,
        never: tuple[int, ...] = (),
    ):
        """``bf16`` runs the matrix products in bfloat16 (state and gates stay float32): over
        twice as fast for many streams on CPUs with native bf16, slower for one stream.
        ``chained`` makes the product ahead, which pays for many streams in bf16 and not for
        one in float32 (docs/experiments.md). The logits of the tokens ``never`` are always
        minus infinity: a generator that must never write them (``<unk>``) need not mask them."""
        self.bf16 = bf16
        self.cell = model.config.cell
        self.num_layers = model.config.num_layers
        self.hidden_size = model.config.hidden_size
        rnn, layers = model.rnn, range(self.num_layers)
        # LSTM and plain RNN add both biases before the nonlinearity, the GRU's second one goes
        # inside its reset gate, and the layer-normalised LSTM has no second one.
        self.adds_b_hh = self.cell in ("rnn", "lstm")
        with torch.no_grad():
            self.w_hh = [getattr(rnn, f"weight_hh_l{k}").t().contiguous() for k in layers]
            self.b_hh = [
                getattr(rnn, f"bias_hh_l{k}").clone() for k in layers if self.cell != "lnlstm"
            ]
            self.w_ih = [getattr(rnn, f"weight_ih_l{k}").t().contiguous() for k in layers]
            self.b_ih = [getattr(rnn, f"bias_ih_l{k}").clone() for k in layers]
            # (V, G): every token's first-layer input projection, G = gates * hidden_size
            self.token_gates = model.embedding.weight @ self.w_ih[0] + self.b_ih[0]
            if self.adds_b_hh:
                self.token_gates += self.b_hh[0]  # folded in once
            # lnlstm: each layer's gain_hh (4, H), gain_c and shift_c (H,)
            self.norms = [
                (gain_hh.view(4, -1).clone(), gain_c.clone(), shift_c.clone())
                for *_, gain_hh, gain_c, shift_c in (
                    map(rnn.layer, layers) if self.cell == "lnlstm" else ()
                )
            ]
            self.w_out = model.head.weight.t().contiguous()  # (H, V)
            self.b_out = model.head.bias.clone()
            self.b_out[list(never)] = -torch.inf  # tokens never to write get no probability
            if self.cell in LSTMS:
                self._double_the_cell_gate()
            self.vocab_size = self.w_out.shape[1]
            # (H, V + G): the last layer's state times the output and recurrent weights at once
            self.w_ahead = torch.cat([self.w_out, self.w_hh[-1]], dim=1) if chained else None
            if bf16:
                self.w_hh = [Bf16Product(w) for w in self.w_hh]
                self.w_ih = [Bf16Product(w) for w in self.w_ih]
                self.w_out = Bf16Product(self.w_out)
                if chained:
                    self.w_ahead = Bf16Product(self.w_ahead)
        # (the state returned last, its last layer's h @ W_hh), for the next call
        self._ahead: tuple[torch.Tensor, torch.Tensor] | None = None

    def _double_the_cell_gate(self) -> None:
        """One sigmoid for all four gates of an LSTM: tanh(x) = 2 sigmoid(2x) - 1, so the cell
        gate's weights and biases are doubled here and its sigmoid mapped back in the step. On
        a CPU, torch's tanh costs several times its sigmoid per element.

        The layer-normalised LSTM normalises ``h @ W_hh`` before its gain: there the gain is
        doubled, not ``W_hh``, whose doubled sums would meet the normalisation's epsilon
        differently. Its cell's gain and shift are doubled too, for the tanh of the output.
        Doubling is exact in floating point, so only the sigmoid's rounding differs."""
        g = slice(2 * self.hidden_size, 3 * self.hidden_size)  # order: i, f, g, o
        scaled = [*self.w_ih, self.token_gates]
        if self.cell == "lstm":
            scaled += self.w_hh
        for tensor in scaled:
            tensor[:, g] *= 2
        for tensor in [*self.b_hh, *self.b_ih]:
            tensor[g] *= 2
        for gain_hh, gain_c, shift_c in self.norms:
            gain_hh[2] *= 2
            gain_c *= 2
            shift_c *= 2

    def _matmul_add(self, added: torch.Tensor, x: torch.Tensor, weight):
        """``added + x @ weight`` in float32, the product in bf16 when asked."""
        if self.bf16:
            return torch.add(added, weight(x))  # float32: one kernel converts and adds
        return torch.addmm(added, x, weight)

    def _matmul(self, x: torch.Tensor, weight) -> torch.Tensor:
        """``x @ weight``, in bf16 when asked: adding it to float32 gives float32."""
        return weight(x) if self.bf16 else x @ weight

    def _recurrent(self, k: int, added: torch.Tensor | None, h_all: torch.Tensor) -> torch.Tensor:
        """``added + h @ W_hh`` for layer ``k`` (the product alone, in bf16 where the products
        are, for ``added`` None), from the product made ahead where it applies."""
        last = k == self.num_layers - 1
        if last and self._ahead is not None and self._ahead[0] is h_all:
            return self._ahead[1] if added is None else added + self._ahead[1]
        if added is None:
            return self._matmul(h_all[k], self.w_hh[k])
        return self._matmul_add(added, h_all[k], self.w_hh[k])

    def __call__(self, ids: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """Logits (N, V) for tokens ``ids`` (N,) and the next hidden state."""
        h_all, c_all = hidden if self.cell in LSTMS else (hidden, None)
        new_h, new_c = [], []
        x = None
        for k in range(self.num_layers):
            if k == 0:
                gates_x = self.token_gates.index_select(0, ids)  # (N, G)
            else:
                gates_x = self._matmul_add(self.b_ih[k], x, self.w_ih[k])
                if self.adds_b_hh:
                    gates_x = gates_x + self.b_hh[k]
            if self.cell in LSTMS:
                cell = self._lstm if self.cell == "lstm" else self._lnlstm
                x, c = cell(k, gates_x, h_all, c_all[k])
                new_c.append(c)
            elif self.cell == "gru":
                x = self._gru(k, gates_x, h_all)
            else:
                x = torch.tanh(self._recurrent(k, gates_x, h_all))
            new_h.append(x)
        if self.w_ahead is None:
            logits = self._matmul_add(self.b_out, x, self.w_out)  # (N, V)
        else:
            both = self._matmul(x, self.w_ahead)  # (N, V + G)
            logits = both[:, : self.vocab_size] + self.b_out
        h_all = _layers(new_h)
        if self.w_ahead is not None:
            self._ahead = (h_all, both[:, self.vocab_size :])
        if self.cell in LSTMS:
            return logits, (h_all, _layers(new_c))
        return logits, h_all

    def _lstm(self, k: int, gates_x, h_all, c) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``k``'s new h and c from its input gates and the previous state."""
        gates = self._recurrent(k, gates_x, h_all)  # (N, 4H), g doubled
        i, f, g_half, o = torch.sigmoid(gates).chunk(4, dim=1)  # g = 2 g_half - 1
        c = torch.addcmul(f * c - i, i, g_half, value=2.0)  # f c + i g
        h = torch.addcmul(-o, o, torch.sigmoid(2.0 * c), value=2.0)  # o tanh(c)
        return h, c

    def _lnlstm(self, k: int, gates_x, h_all, c) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``k``'s new h and c in the layer-normalised LSTM (``chargen.model.lnlstm``):
        each gate's ``h @ W_hh`` normalised over its H units, and the cell before its tanh."""
        gain_hh, gain_c, shift_c = self.norms[k]  # doubled: gain_hh's g row, gain_c, shift_c
        rows, width = c.shape
        recurrent = self._recurrent(k, None, h_all).float().view(rows, 4, width)
        normed = F.layer_norm(recurrent, (width,), eps=EPS)  # (N, 4, H)
        gates = torch.addcmul(gates_x.view(rows, 4, width), normed, gain_hh)  # g doubled
        i, f, g_half, o = torch.sigmoid(gates).unbind(1)  # g = 2 g_half - 1
        c = torch.addcmul(f * c - i, i, g_half, value=2.0)  # f c + i g
        shown = F.layer_norm(c, (width,), gain_c, shift_c, eps=EPS)  # doubled
        h = torch.addcmul(-o, o, torch.sigmoid(shown), value=2.0)  # o tanh(shown / 2)
        return h, c

    def _gru(self, k: int, gates_x, h_all) -> torch.Tensor:
        """Layer ``k``'s new h from its input gates and the previous state."""
        gates_h = self._recurrent(k, self.b_hh[k], h_all)  # (N, 3H)
        xr, xz, xn = gates_x.chunk(3, dim=1)
        hr, hz, hn = gates_h.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return torch.lerp(n, h_all[k], z)  # (1 - z) * n + z * h


def _layers(states: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer states (N, H) as one (layers, N, H) tensor; one layer needs no copy."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)
