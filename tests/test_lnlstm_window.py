"""The layer-normalised LSTM's training window on the compiled kernel (``lnlstm_window_*`` in
chargen/model/lstm_window.c): the reference module's outputs and gradients in float64 to
float32's rounding, the same bits at any thread count, used by the model where it applies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.model import window
from chargen.model.lnlstm import LayerNormLSTM


@pytest.fixture(scope="module")
def kernel():
    if window.kernel() is None:
        pytest.skip("the window kernel needs an x86 CPU with AVX2 and FMA and a C compiler")


def run(module, x, state, use_kernel, dh, dc):
    """Outputs and gradients of ``module`` on ``x`` from ``state`` for the loss
    sum(out * dh) + sum(c_last * dc): by the kernel or by the reference loop."""
    x = x.detach().clone().requires_grad_()
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    module.zero_grad(set_to_none=True)
    forward = window.lnlstm if use_kernel else LayerNormLSTM.forward
    out, (h_last, c_last) = forward(module, x, state)
    ((out * dh).sum() + (c_last * dc).sum()).backward()
    grads = [x.grad, *state[0].grad, *state[1].grad]
    grads += [p.grad.clone() for p in module.parameters()]
    return [out, h_last, c_last], grads


def random_module(width, hidden, layers, seed):
    torch.manual_seed(seed)
    module = LayerNormLSTM(width, hidden, num_layers=layers)
    with torch.no_grad():  # gains, shifts and biases away from their starting values
        for name, p in module.named_parameters():
            if name.startswith(("gain", "shift", "bias")):
                p.copy_(torch.randn_like(p))
            else:
                p.mul_(3)
    return module


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 13),
    steps=st.integers(1, 9),
    width=st.integers(1, 20),
    hidden=st.sampled_from([16, 32, 48]),
    layers=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_the_kernel_matches_the_reference_in_float64(
    kernel, batch, steps, width, hidden, layers, seed
):
    module = random_module(width, hidden, layers, seed)
    x = torch.randn(batch, steps, width)
    state = tuple(torch.randn(layers, batch, hidden) for _ in range(2))
    dh, dc = torch.randn(batch, steps, hidden), torch.randn(layers, batch, hidden)
    assert window.usable_layer_norm(module, x.requires_grad_())
    outs, grads = run(module, x, state, True, dh, dc)
    wide = module.double()
    want_outs, want_grads = run(
        wide, x.double(), tuple(s.double() for s in state), False, dh.double(), dc.double()
    )
    for got, want in zip(outs + grads, want_outs + want_grads, strict=True):
        assert got.dtype == torch.float32
        scale = want.abs().max().item()
        assert (got.double() - want).abs().max().item() <= 2e-5 * scale + 2e-6


def test_the_same_bits_at_one_thread_and_two(kernel):
    module = random_module(8, 64, 1, seed=3)
    x = torch.randn(7, 11, 8)
    state = tuple(torch.randn(1, 7, 64) for _ in range(2))
    dh, dc = torch.randn(7, 11, 64), torch.randn(1, 7, 64)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            outs, grads = run(module, x, state, True, dh, dc)
            # the kernel's own results: outputs, the states', the bias's and the gains' gradients
            named = dict(zip((n for n, _ in module.named_parameters()), grads[3:], strict=True))
            own = [named[n] for n in ("bias_ih_l0", "gain_hh_l0", "gain_c_l0", "shift_c_l0")]
            results.append(outs + grads[1:3] + own)
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_only_float32_modules_of_a_width_of_16s(kernel):
    x = torch.randn(2, 3, 4)
    assert window.usable_layer_norm(LayerNormLSTM(4, 32), x)
    assert not window.usable_layer_norm(LayerNormLSTM(4, 24), x)
    assert not window.usable_layer_norm(torch.nn.LSTM(4, 32, batch_first=True), x)
    assert not window.usable_layer_norm(LayerNormLSTM(4, 32).double(), x.double())
    with torch.inference_mode():  # evaluation runs on the kernel too
        assert window.usable_layer_norm(LayerNormLSTM(4, 32), x)
        out, _ = window.lnlstm(LayerNormLSTM(4, 32), x, None)
        assert out.shape == (2, 3, 32)


def test_a_second_backward_through_one_forward_is_refused(kernel):
    # the backward writes the gradient at the recurrent sums over a saved tensor
    module = LayerNormLSTM(4, 32)
    out, _ = window.lnlstm(module, torch.randn(2, 3, 4), None)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once a forward"):
        out.sum().backward()
