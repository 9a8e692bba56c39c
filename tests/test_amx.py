"""The LSTM kernel on AMX tiles (chargen/model/amx.py): the same gradients as torch's LSTM, the
same weights at any thread count, and torch's LSTM wherever the kernel cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from chargen.config import ModelConfig
from chargen.model import amx
from chargen.model.rnn import RNNLanguageModel

amx_lstm, usable = amx.lstm, amx.usable  # the real ones, for tests that wrap them


@pytest.fixture
def needs_kernel(monkeypatch):
    # Built here, not at import, so that it lands in the test's own cache directory.
    monkeypatch.setenv(amx.ENV_SWITCH, "1")
    amx.kernel.cache_clear()
    if amx.kernel() is None:
        pytest.skip("the kernel needs a CPU with AMX and a C compiler")
    yield
    amx.kernel.cache_clear()  # the other tests run without it, as users do by default


def gradients(rnn, x, state, run, dtype):
    """Outputs and gradients of a fixed loss, every tensor in float64 for comparing."""
    rnn = rnn.to(dtype)
    rnn.zero_grad()
    x = x.detach().to(dtype, copy=True).requires_grad_()
    h0, c0 = (s.detach().to(dtype, copy=True).requires_grad_() for s in state)
    out, (h, c) = run(rnn, x, (h0, c0))
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    loss = (out.double() * weights).sum() + h.double().sum() + (c.double() ** 2).sum()
    loss.backward()
    tensors = [out, h, c, x.grad, h0.grad, c0.grad, *(p.grad for p in rnn.parameters())]
    rnn.float()
    return [t.detach().double() for t in tensors]


def kernel_against_float64(batch, steps, width, hidden, layers, seed=0):
    """The largest relative error of the kernel's outputs and gradients against float64. torch's
    own LSTM under bf16 autocast errs by 0.3-1.4% on the same tensors (the biases' gradient,
    a sum with much cancelling, the most)."""
    torch.manual_seed(seed)
    rnn = nn.LSTM(width, hidden, num_layers=layers, batch_first=True)
    x = torch.randn(batch, steps, width)
    state = (torch.randn(layers, batch, hidden) / 2, torch.randn(layers, batch, hidden) / 2)
    exact = gradients(rnn, x, state, lambda r, x, s: r(x, s), torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert amx.usable(rnn, x)
        ours = gradients(rnn, x, state, amx.lstm, torch.float32)
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(ours, exact, strict=True))


def test_the_kernel_matches_torchs_lstm_in_float64(needs_kernel):
    # One row block of 16 streams at the default width, as training runs it.
    assert kernel_against_float64(16, 64, 64, 512, 1) < 0.02


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 40),
    steps=st.integers(1, 9),
    width=st.sampled_from([16, 48]),
    hidden=st.sampled_from([32, 64, 96]),
    layers=st.integers(1, 2),
)
def test_any_batch_window_and_stack_match_float64(
    needs_kernel, batch, steps, width, hidden, layers
):
    # Batches that are not a multiple of 16 pad the last block of rows; windows of 1 have no
    # step to carry; stacked layers feed bf16 outputs to the next layer.
    assert kernel_against_float64(batch, steps, width, hidden, layers) < 0.03


def test_the_thread_count_does_not_change_a_bit(needs_kernel):
    torch.manual_seed(1)
    rnn = nn.LSTM(16, 64, batch_first=True)
    x = torch.randn(37, 9, 16)  # a partial block of rows for the input's gradient
    state = (torch.zeros(1, 37, 64), torch.zeros(1, 37, 64))
    results = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(gradients(rnn, x, state, amx.lstm, torch.float32))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_training_takes_the_kernel_and_learns_as_torchs_lstm_does(needs_kernel, monkeypatch):
    ids = torch.randint(0, 20, (4, 33))
    calls = []
    monkeypatch.setattr(amx, "lstm", lambda *a: calls.append(1) or amx_lstm(*a))
    losses = {}
    for name, use in (("kernel", True), ("torch", False)):
        monkeypatch.setattr(amx, "usable", lambda rnn, x, use=use: use and usable(rnn, x))
        torch.manual_seed(0)
        model = RNNLanguageModel(ModelConfig(vocab_size=20, embedding_dim=16, hidden_size=64))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(30):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, _ = model(ids[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 20), ids[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses[name] = loss.item()
    assert len(calls) == 30
    assert losses["kernel"] < 2.5  # from log(20) = 3.0 at the start
    assert losses["kernel"] == pytest.approx(losses["torch"], abs=0.05)


def test_torchs_lstm_runs_where_the_kernel_cannot():
    rnn = nn.LSTM(16, 64, batch_first=True)
    x = torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not amx.usable(nn.GRU(16, 64, batch_first=True), x)
        assert not amx.usable(nn.LSTM(16, 48, batch_first=True), x)  # not a multiple of 32
        assert not amx.usable(nn.LSTM(12, 64, batch_first=True), torch.randn(2, 3, 12))
        with torch.no_grad():
            assert not amx.usable(rnn, x)  # evaluation and sampling: torch's LSTM
    assert not amx.usable(rnn, x)  # float32 training


def test_without_a_compiler_or_when_switched_off_there_is_no_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(amx, "_cpu_has_amx", lambda: True)
    monkeypatch.setenv(amx.ENV_SWITCH, "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    amx.kernel.cache_clear()
    try:
        assert amx.kernel() is None
        assert not list((tmp_path / "cache").rglob("*.so*"))  # nothing half-built left behind
        monkeypatch.delenv("CC")
        monkeypatch.delenv(amx.ENV_SWITCH)  # off unless asked for
        amx.kernel.cache_clear()
        assert amx.kernel() is None
    finally:
        amx.kernel.cache_clear()
