"""``--cell lnlstm``, the layer-normalised LSTM, as a first-class cell: its equations, its saved
shapes, checkpoints, training and resuming, sampling, and the command line."""

from __future__ import annotations

import json

import pytest
import torch

import chargen
from chargen.config import FLOAT32_WIDTH, WIDTH, ModelConfig, TrainConfig
from chargen.generation.engine import Engine
from chargen.model import compiled, window
from chargen.model.compiled import CompiledStepper
from chargen.model.lnlstm import LayerNormLSTM
from chargen.model.rnn import RNNLanguageModel
from chargen.model.stepper import Stepper
from chargen.runs import store as checkpoint
from chargen.text.batches import Batches
from chargen.training.trainer import Trainer
from tests.cli_helpers import run, train
from tests.conftest import VERSE
from tests.helpers import tokenizer_for

TINY = dict(hidden=16, embedding=8, batch_size=4, window=16, eval_every=10, precision="fp32")


def norm(z: torch.Tensor) -> torch.Tensor:
    """``z`` normalised over its last dimension: zero mean, unit biased variance, eps 1e-5."""
    mean = z.mean(-1, keepdim=True)
    return (z - mean) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-5)


def reference(rnn: LayerNormLSTM, x, h0, c0):
    """The cell's equations (Ba et al. 2016, section 3.1) written out one step at a time."""
    width, out, last_h, last_c = rnn.hidden_size, x, [], []
    for k in range(rnn.num_layers):
        weight_ih, weight_hh, bias, gain_hh, gain_c, shift_c = rnn.layer(k)
        h, c, outputs = h0[k], c0[k], []
        for t in range(x.shape[1]):
            recurrent = torch.cat([norm(s) for s in (h @ weight_hh.T).split(width, 1)], 1)
            gates = out[:, t] @ weight_ih.T + bias + gain_hh * recurrent
            i, f, g, o = gates.split(width, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(gain_c * norm(c) + shift_c)
            outputs.append(h)
        out = torch.stack(outputs, 1)
        last_h.append(h)
        last_c.append(c)
    return out, torch.stack(last_h), torch.stack(last_c)


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` with its gains, shifts and biases moved off their starting values (all ones
    or zeros, which would hide a gain applied to the wrong gate)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if any(part in name for part in ("gain", "shift", "bias")):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return module


def make(layers: int = 1, hidden: int = 16, vocab: int = 11) -> RNNLanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        cell="lnlstm", vocab_size=vocab, embedding_dim=8, hidden_size=hidden, num_layers=layers
    )
    return perturbed(RNNLanguageModel(config)).eval()


# ------------------------------------------------------------------------------ the cell


@pytest.mark.parametrize("layers", [1, 2])
def test_the_module_runs_the_layer_normalised_lstm_equations(layers):
    torch.manual_seed(1)
    rnn = perturbed(LayerNormLSTM(5, 12, num_layers=layers))
    x = torch.randn(3, 7, 5)
    h0, c0 = torch.randn(layers, 3, 12), torch.randn(layers, 3, 12)
    out, (h, c) = rnn(x, (h0, c0))
    expected_out, expected_h, expected_c = reference(rnn, x, h0, c0)
    assert torch.allclose(out, expected_out, atol=1e-5)
    assert torch.allclose(h, expected_h, atol=1e-5) and torch.allclose(c, expected_c, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True])  # with gradients, a compiled window may run
def test_the_models_forward_is_the_cells_equations_on_any_path(grad):
    model = make(layers=2).train()  # no dropout: training mode changes only the path
    ids = torch.randint(0, 11, (4, 9))
    state = model.init_hidden(4)
    with torch.set_grad_enabled(grad):
        logits, (h, c) = model(ids, state)
    out, expected_h, expected_c = reference(model.rnn, model.embedding(ids), *state)
    assert torch.allclose(logits, model.head(out), atol=1e-5)
    assert torch.allclose(h, expected_h, atol=1e-5) and torch.allclose(c, expected_c, atol=1e-5)


def test_the_forget_gate_starts_open_and_the_state_is_a_pair():
    torch.manual_seed(0)
    config = ModelConfig(cell="lnlstm", vocab_size=7, hidden_size=6, num_layers=2)
    model = RNNLanguageModel(config)
    for k in range(2):
        bias = getattr(model.rnn, f"bias_ih_l{k}")  # gates i, f, g, o
        assert torch.equal(bias[6:12], torch.ones(6))
        assert torch.equal(bias[:6], torch.zeros(6)) and torch.equal(bias[12:], torch.zeros(12))
    h, c = model.init_hidden(3)
    assert h.shape == c.shape == (2, 3, 6) and h.data_ptr() != c.data_ptr()


@pytest.mark.parametrize("layers", [1, 2])
def test_shapes_worked_out_are_the_lnlstm_state_dict(layers):
    config = ModelConfig(
        cell="lnlstm", vocab_size=11, embedding_dim=5, hidden_size=7, num_layers=layers
    )
    built = {k: tuple(v.shape) for k, v in RNNLanguageModel(config).state_dict().items()}
    assert RNNLanguageModel.shapes(config) == built
    assert built[f"rnn.gain_hh_l{layers - 1}"] == (28,) and built["rnn.shift_c_l0"] == (7,)
    assert not any("bias_hh" in name for name in built)  # one bias a layer


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("chained", [False, True])
def test_the_stepper_gives_the_logits_of_forward(layers, chained):
    model = make(layers)
    ids = torch.randint(0, 11, (5, 10))
    with torch.no_grad():
        expected, _ = model(ids)
        step, hidden, produced = Stepper(model, chained=chained), model.init_hidden(5), []
        for t in range(10):
            logits, hidden = step(ids[:, t], hidden)
            produced.append(logits)
    assert torch.allclose(torch.stack(produced, dim=1), expected, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_the_bf16_stepper_stays_close_to_forward(layers):
    model = make(layers)
    ids = torch.randint(0, 11, (16, 10))
    with torch.no_grad():
        expected, _ = model(ids)
        step, hidden, produced = Stepper(model, bf16=True, chained=True), model.init_hidden(16), []
        for t in range(10):
            logits, hidden = step(ids[:, t], hidden)
            assert logits.dtype == torch.float32
            produced.append(logits)
    produced = torch.stack(produced, dim=1)
    assert torch.allclose(produced, expected, atol=0.05), (produced - expected).abs().max()


def test_the_engine_samples_an_lnlstm_on_the_compiled_step_where_it_builds():
    model = make(hidden=16)
    want = CompiledStepper if compiled.kernel() is not None else Stepper
    assert compiled.available(model, torch.device("cpu")) == (want is CompiledStepper)
    assert isinstance(Engine(model)._stepper(1), want)


# ------------------------------------------------------------------------------ checkpoints


def test_a_saved_lnlstm_loads_with_identical_logits_and_no_pickle(tmp_path, monkeypatch):
    tokenizer = tokenizer_for(VERSE, "char")
    config = ModelConfig(
        cell="lnlstm", vocab_size=tokenizer.vocab_size, embedding_dim=8, hidden_size=12,
        num_layers=2,
    )  # fmt: skip
    train = TrainConfig(batch_size=2, seq_len=8, max_steps=3, eval_every=3, precision="fp32")
    torch.manual_seed(0)
    model = RNNLanguageModel(config)
    trainer = Trainer(
        model, Batches(tokenizer.encode(VERSE), 2, 8, 0), None, train, torch.device("cpu")
    )
    trainer.run()
    saved = checkpoint.create_run(
        tmp_path, "ln", tokenizer, config, train, "verse.txt", model.num_parameters()
    )
    checkpoint.save_best(saved, trainer)

    def refuse(*args, **kwargs):
        raise AssertionError("weights must load without torch.load (pickle)")

    monkeypatch.setattr(torch, "load", refuse)
    loaded, _ = checkpoint.load_model(checkpoint.open_run(saved.path), "best")
    assert loaded.config == config
    ids = torch.tensor([tokenizer.encode("the tide").tolist()])
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("cell", ["lnlstm", "lstm"])
def test_weight_decay_spares_only_the_layer_normalised_lstms_vectors(cell):
    """With no gradient, an AdamW step is its weight decay alone: it shrinks every decayed
    parameter and leaves the undecayed ones (lnlstm's gains, shift and biases) as they were."""
    tokenizer = tokenizer_for(VERSE, "char")
    config = ModelConfig(
        cell=cell, vocab_size=tokenizer.vocab_size, embedding_dim=8, hidden_size=16
    )
    train = TrainConfig(batch_size=2, seq_len=8, weight_decay=0.5, precision="fp32")
    model = RNNLanguageModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    trainer = Trainer(
        model, Batches(tokenizer.encode(VERSE), 2, 8, 0), None, train, torch.device("cpu")
    )
    for p in trainer.params:
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    for name, p in model.named_parameters():
        spared = cell == "lnlstm" and p.dim() == 1
        assert torch.all(p == 1.0) if spared else torch.all(p < 1.0), name


def test_training_an_lnlstm_lowers_its_loss(corpus):
    losses = []
    summary = chargen.train(
        corpus,
        name="ln",
        cell="lnlstm",
        max_steps=60,
        lr=2e-2,
        dropout=0,
        on_step=lambda t: losses.append(t.state.loss),
        **TINY,
    )
    assert summary.status == "finished" and summary.steps == 60
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    assert chargen.load("ln").module.config.cell == "lnlstm"


def test_a_resumed_lnlstm_run_ends_with_the_weights_of_an_uninterrupted_one(corpus):
    """Dropout (0.5 on this small corpus) draws from saved random state: resuming restores it."""
    options = dict(cell="lnlstm", layers=2, max_steps=24, **TINY)
    chargen.train(corpus, name="straight", **options)
    asked = []
    stop_after_13 = lambda: len(asked.append(1) or asked) > 13  # noqa: E731
    stopped = chargen.train(corpus, name="resumed", should_stop=stop_after_13, **options)
    assert stopped.status == "interrupted" and stopped.steps == 13
    assert chargen.train(name="resumed", resume=True).steps == 24
    straight = chargen.load("straight", weights="last").module.state_dict()
    resumed = chargen.load("resumed", weights="last").module.state_dict()
    assert straight.keys() == resumed.keys()
    for name, weight in straight.items():
        assert torch.equal(weight, resumed[name]), name


@pytest.mark.parametrize("compiled_window", [False, True])
def test_a_new_lnlstm_run_takes_the_width_of_an_lstm(corpus, monkeypatch, compiled_window):
    """Both LSTMs train on the compiled window in float32 where it builds, so both get the
    width it trains best."""
    monkeypatch.setattr("chargen.model.device.cpu_has_bf16", lambda: False)
    if not compiled_window:
        monkeypatch.setattr(window, "kernel", lambda: None)
    elif window.kernel() is None:
        pytest.skip("the compiled LSTM window cannot be built here")
    options = {k: v for k, v in TINY.items() if k != "hidden"}
    session = chargen.start(corpus, name="wide", cell="lnlstm", device="cpu", **options)
    try:
        expected = WIDTH if compiled_window else FLOAT32_WIDTH
        assert session.trainer.model.config.hidden_size == expected
    finally:
        session.close()


# ------------------------------------------------------------------------------ command line


def test_the_command_line_trains_lists_and_samples_an_lnlstm(corpus):
    train(corpus, "ln", "--cell", "lnlstm", "--layers", "2")
    listed = json.loads(run("checkpoints", "list", "--json").stdout)
    assert [(r["name"], r["cell"], r["layers"]) for r in listed] == [("ln", "lnlstm", 2)]
    shown = run("checkpoints", "show", "ln")
    assert shown.exit_code == 0 and "lnlstm" in shown.output
    first = run("sample", "ln", "--length", "30", "--seed", "3", "--prime", "The ")
    again = run("sample", "ln", "--length", "30", "--seed", "3", "--prime", "The ")
    assert first.exit_code == 0 and first.stdout.startswith("The ") and len(first.stdout) > 20
    assert first.stdout == again.stdout
