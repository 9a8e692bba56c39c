"""The LSTM's training window on a compiled kernel (chargen/model/window.py): torch's outputs and
gradients to float32's rounding, the same bits at any thread count, used by the model only where
it applies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.model import rnn as rnn_module
from chargen.model import window
from chargen.model.rnn import RNNLanguageModel
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def kernel():
    if window.kernel() is None:
        pytest.skip("the window kernel needs an x86 CPU with AVX2 and FMA and a C compiler")


def run(lstm, x, state, use_kernel, dh, dc):
    """Outputs and gradients of ``lstm`` on ``x`` from ``state`` for the loss sum(out * dh) +
    sum(c_last * dc): by the kernel or by torch."""
    x = x.detach().clone().requires_grad_()
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    lstm.zero_grad(set_to_none=True)
    out, (h_last, c_last) = (window.lstm if use_kernel else lstm.__class__.forward)(lstm, x, state)
    ((out * dh).sum() + (c_last * dc).sum()).backward()
    grads = [x.grad, *state[0].grad, *state[1].grad]
    grads += [p.grad.clone() for p in lstm.parameters()]  # .double() would convert p.grad
    return [out, h_last, c_last], grads


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 13),
    steps=st.integers(1, 9),
    width=st.integers(1, 20),
    hidden=st.sampled_from([16, 32, 48]),
    layers=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_the_kernel_matches_torchs_lstm_in_float64(
    kernel, batch, steps, width, hidden, layers, seed
):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(width, hidden, num_layers=layers, batch_first=True)
    with torch.no_grad():  # gates far from zero, where the squashing functions bend
        for p in lstm.parameters():
            p.mul_(3)
    x = torch.randn(batch, steps, width)
    state = tuple(torch.randn(layers, batch, hidden) for _ in range(2))
    dh, dc = torch.randn(batch, steps, hidden), torch.randn(layers, batch, hidden)
    assert window.usable(lstm, x.requires_grad_())
    outs, grads = run(lstm, x, state, True, dh, dc)
    wide = lstm.double()
    want_outs, want_grads = run(
        wide, x.double(), tuple(s.double() for s in state), False, dh.double(), dc.double()
    )
    for got, want in zip(outs + grads, want_outs + want_grads, strict=True):
        assert got.dtype == torch.float32
        scale = want.abs().max().item()
        assert (got.double() - want).abs().max().item() <= 2e-5 * scale + 2e-6


def test_the_same_bits_at_one_thread_and_two(kernel):
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(8, 32, batch_first=True)
    x = torch.randn(7, 11, 8)
    state = tuple(torch.randn(1, 7, 32) for _ in range(2))
    dh, dc = torch.randn(7, 11, 32), torch.randn(1, 7, 32)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            outs, grads = run(lstm, x, state, True, dh, dc)
            # the kernel's own results: outputs, state gradients, bias gradients (the weights'
            # and the input's gradients are torch's products)
            results.append(outs + grads[1:3] + [lstm.bias_ih_l0.grad.clone()])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_a_thread_limit_below_torchs_count_runs_the_kernel_on_one_thread(kernel):
    # OMP_THREAD_LIMIT=1 gives a team of one where torch asks for two: the kernel used to refuse
    script = """
import torch
from chargen.model import window
torch.set_num_threads(2)
torch.manual_seed(0)
lstm = torch.nn.LSTM(8, 32, batch_first=True)
x = torch.randn(3, 5, 8, requires_grad=True)
out, _ = window.lstm(lstm, x, None)
out.sum().backward()
print((out - lstm(x)[0]).abs().max().item())
"""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1e-5


def test_only_float32_lstms_of_a_width_of_16s_with_gradients(kernel):
    x = torch.randn(2, 3, 4)
    assert window.usable(torch.nn.LSTM(4, 32, batch_first=True), x)
    assert not window.usable(torch.nn.LSTM(4, 24, batch_first=True), x)
    assert not window.usable(torch.nn.GRU(4, 32, batch_first=True), x)
    assert not window.usable(torch.nn.LSTM(4, 32, batch_first=True).double(), x.double())
    assert not window.usable(torch.nn.LSTM(4, 32, batch_first=True, proj_size=8), x)
    with torch.no_grad():
        assert not window.usable(torch.nn.LSTM(4, 32, batch_first=True), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not window.usable(torch.nn.LSTM(4, 32, batch_first=True), x)


def test_the_model_trains_the_same_with_and_without_the_kernel(kernel, monkeypatch):
    torch.manual_seed(0)
    model = RNNLanguageModel(tiny_model("lstm", vocab_size=30, num_layers=2, hidden_size=32))
    ids = torch.randint(0, 30, (4, 10))
    calls = []
    real = window.lstm

    def counted(*args):
        calls.append(1)
        return real(*args)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        logits, _ = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 30), ids.reshape(-1))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(window, "lstm", counted)
    loss, grads = loss_and_grads()
    assert calls, "the model's training forward did not use the kernel"
    monkeypatch.setattr(window, "usable", lambda rnn, x: False)
    want_loss, want_grads = loss_and_grads()
    assert loss == pytest.approx(want_loss, rel=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert rnn_module.window is window
