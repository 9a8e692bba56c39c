"""How much one training step learns with another recurrent cell, at equal steps.

A cell that learns more a step is worth a compiled kernel only if the gain is real, so this
measures it before anyone writes one: each candidate replaces the model's LSTM before
``chargen.train`` builds the trainer, trains the same number of steps with the same schedule
and seed as the default, and is scored by the trainer's own evaluation of the last 10% of the
corpus (what ``chargen eval`` gives). The candidates run as a Python loop over the window, a
quarter of the compiled LSTM's speed or less: the figure to compare is nats/char, not time.

    python benchmarks/cells.py                        # lstm and ln, seeds 1337 7 3: about 30 min
    python benchmarks/cells.py --cells ln-recurrent ln-groups --seeds 1337
    python benchmarks/cells.py --steps 200 --seeds 1  # a quick look

Cells (one layer, ``--hidden`` units):
  lstm          torch's LSTM (the compiled window where it runs)
  lnlstm        chargen's ``--cell lnlstm`` (compiled; its gains, shift and biases not decayed):
                the default where training runs in float32 on the compiled window
  ln            layer-normalised LSTM (Ba, Kiros and Hinton 2016): each gate's W_hh h
                normalised over all units with a learned gain, and the cell normalised with a
                gain and shift before its tanh
  ln-recurrent  the same without the cell's normalisation
  ln-groups     the same, normalised within groups of 8 units (what a kernel could do with no
                exchange between its threads, each owning whole blocks of units)
  ln-input      the state normalised (with a gain) before W_hh instead of the sums after it:
                each thread of a kernel reads the whole state anyway, so it needs no exchange

Results: benchmarks/RESULTS.md and docs/experiments.md (2026-12-07, night and last).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chargen  # noqa: E402
from chargen.model import rnn as rnn_module  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
GROUP = 8
LAYER_NORM_OPTIONS = {  # each candidate's LayerNormLSTM arguments
    "ln": {},
    "ln-recurrent": {"cell_norm": False},
    "ln-groups": {"group": GROUP},
    "ln-input": {"state_norm": True, "cell_norm": False},
}
CELLS = ("lstm", "lnlstm", *LAYER_NORM_OPTIONS)


class LayerNormLSTM(nn.Module):
    """One layer of a layer-normalised LSTM with torch's LSTM interface (batch first, state
    ``(h, c)`` of shape (1, B, H)), gates in torch's order i, f, g, o."""

    def __init__(
        self, inputs: int, hidden: int, cell_norm: bool = True, group: int = 0, state_norm=False
    ):
        super().__init__()
        self.hidden_size, self.group, self.state_norm = hidden, group, state_norm
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden, inputs))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.bias_ih_l0 = nn.Parameter(torch.zeros(4 * hidden))
        self.gain_hh = nn.Parameter(torch.ones(hidden if state_norm else (4, hidden)))
        self.cell_norm = cell_norm
        if cell_norm:
            self.gain_c = nn.Parameter(torch.ones(hidden))
            self.shift_c = nn.Parameter(torch.zeros(hidden))
        bound = hidden**-0.5  # torch's LSTM initialisation
        nn.init.uniform_(self.weight_ih_l0, -bound, bound)
        nn.init.uniform_(self.weight_hh_l0, -bound, bound)
        with torch.no_grad():
            self.bias_ih_l0[hidden : 2 * hidden] = 1.0  # forget gate, as chargen's LSTM

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., H) normalised over its last dimension, or within groups of units."""
        if not self.group:
            return F.layer_norm(x, x.shape[-1:])
        grouped = x.unflatten(-1, (-1, self.group))
        return F.layer_norm(grouped, (self.group,)).flatten(-2)

    def forward(self, x: torch.Tensor, state=None):
        batch, steps, _ = x.shape
        width = self.hidden_size
        if state is None:
            h = c = x.new_zeros(batch, width)
        else:
            h, c = state[0][0], state[1][0]
        inputs = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # (B, T, 4H)
        outputs = []
        for t in range(steps):
            if self.state_norm:
                recurrent = (self._norm(h) * self.gain_hh) @ self.weight_hh_l0.t()
                gates = (inputs[:, t] + recurrent).view(batch, 4, width)
            else:
                recurrent = self._norm((h @ self.weight_hh_l0.t()).view(batch, 4, width))
                gates = inputs[:, t].view(batch, 4, width) + recurrent * self.gain_hh
            i, f, g, o = gates.unbind(1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            shown = self._norm(c) * self.gain_c + self.shift_c if self.cell_norm else c
            h = torch.sigmoid(o) * torch.tanh(shown)
            outputs.append(h)
        return torch.stack(outputs, 1), (h[None], c[None])


@contextlib.contextmanager
def cell(name: str):
    """Models built inside get ``name``'s recurrent module instead of torch's LSTM."""
    original = rnn_module.RNNLanguageModel.__init__

    def build(self, config):
        original(self, config)
        if name in LAYER_NORM_OPTIONS:
            options = LAYER_NORM_OPTIONS[name]
            self.rnn = LayerNormLSTM(config.embedding_dim, config.hidden_size, **options)

    rnn_module.RNNLanguageModel.__init__ = build
    try:
        yield
    finally:
        rnn_module.RNNLanguageModel.__init__ = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=["lstm", "ln"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 7, 3])
    parser.add_argument("--steps", type=int, default=1800, help="about 120 s of the default")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args()
    if not args.corpus.is_file():
        parser.error(f"no corpus at {args.corpus}; give one with --corpus")
    rows = []
    for name in args.cells:
        losses, speeds = [], []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as folder, cell(name):
                summary = chargen.train(
                    args.corpus,
                    name="cells",
                    cell="lnlstm" if name == "lnlstm" else "lstm",  # the others replace an LSTM
                    checkpoint_dir=folder,
                    max_steps=args.steps,
                    seed=seed,
                    hidden=args.hidden,
                    eval_every=10**9,  # one evaluation, at the end
                )
            losses.append(summary.best_val_loss)
            speeds.append(summary.step_tokens_per_sec)
            print(
                f"{name} seed {seed}: {losses[-1]:.4f} nats/char, {speeds[-1]:,.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
        rows.append((name, losses, speeds))
    print(f"\n{args.steps} steps, {args.hidden} units, seeds {' '.join(map(str, args.seeds))}")
    print(f"{'cell':14} {'median':>8} {'lowest – highest':>18} {'tokens/s a step':>16}")
    for name, losses, speeds in rows:
        spread = f"{min(losses):.4f} – {max(losses):.4f}"
        print(
            f"{name:14} {statistics.median(losses):8.4f} {spread:>18} "
            f"{statistics.median(speeds):16,.0f}"
        )


if __name__ == "__main__":
    main()
