"""The compiled end of a draw (chargen/generation/draw.c): the tokens and log-probabilities that
torch's operators give, row by row, and torch's operators wherever it is not built."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.generation import sampling
from chargen.generation.sampling import _inverse_transform, log_normalisers, picked


@pytest.fixture
def compiled():
    if sampling._kernel() is None:
        pytest.skip("no C compiler here")


def both(function, *args):
    """``function(*args)`` on the compiled helpers and on torch's operators."""
    fast = function(*args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "_kernel", lambda: None)
        slow = function(*args)
    return fast, slow


def test_draws_match_torchs_but_where_the_draw_falls_on_a_boundary(compiled):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 70, generator=generator) * 3
    logits[:, :5] = -math.inf  # never chosen
    uniform = torch.rand(4000, generator=generator, dtype=torch.float64)
    fast, slow = both(_inverse_transform, logits, uniform)
    assert fast.min() >= 5 and slow.min() >= 5
    cdf = torch.softmax(logits.double(), -1).cumsum(-1)
    for row in torch.nonzero(fast != slow)[:, 0].tolist():  # rounding at a boundary only
        boundary = cdf[row, min(fast[row], slow[row])]
        assert abs(float(uniform[row]) - float(boundary)) < 1e-6
    assert (fast == slow).float().mean() > 0.999


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-30, 30), min_size=2, max_size=40),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, 6),
)
def test_a_row_draws_the_same_alone_and_never_a_token_of_probability_zero(values, u, rows):
    if sampling._kernel() is None:
        pytest.skip("no C compiler here")
    row = torch.tensor(values, dtype=torch.float32)
    row[::3] = -math.inf
    if torch.isinf(row).all():
        row[1] = 0.0
    batch = torch.stack([row.roll(k) for k in range(rows)])
    uniform = torch.full((rows,), u, dtype=torch.float64)
    together = _inverse_transform(batch, uniform)
    alone = _inverse_transform(batch[:1], uniform[:1])
    assert together[0] == alone[0]
    assert torch.isfinite(batch[torch.arange(rows), together]).all()


def test_normalisers_and_picked_log_probabilities_match_torchs(compiled):
    generator = torch.Generator().manual_seed(1)
    wide = torch.randn(5, 80, generator=generator) * 4
    logits = wide[:, :66]  # a view whose rows are 80 apart, as the compiled step gives
    logits[2] = -math.inf
    fast, slow = both(log_normalisers, logits)
    assert fast.dtype == slow.dtype == torch.float64 and math.isinf(fast[2]) and fast[2] < 0
    torch.testing.assert_close(fast[[0, 1, 3, 4]], slow[[0, 1, 3, 4]], rtol=0, atol=1e-5)
    tokens = torch.tensor([3, 65, 0, 7, 12])
    fast, slow = both(picked, logits, tokens, log_normalisers(logits))
    torch.testing.assert_close(fast[[0, 1, 3, 4]], slow[[0, 1, 3, 4]], rtol=0, atol=1e-12)
    reference = torch.log_softmax(logits.double(), -1)[torch.arange(5), tokens]
    torch.testing.assert_close(fast[[0, 1, 3, 4]], reference[[0, 1, 3, 4]], rtol=0, atol=1e-6)


def test_normalisers_of_rows_with_infinities_and_nan_are_torchs(compiled):
    logits = torch.tensor([[0.0, math.inf, 1.0], [0.0, math.nan, 1.0], [-math.inf] * 3])
    fast, slow = both(log_normalisers, logits)
    assert str(fast.tolist()) == str(slow.tolist()) == "[inf, nan, -inf]"


def test_a_row_without_a_finite_logit_gives_the_last_token_both_ways(compiled):
    logits = torch.full((2, 9), -math.inf)
    logits[1, 4] = 0.0
    fast, slow = both(_inverse_transform, logits, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert fast.tolist() == slow.tolist() == [8, 4]


def test_torch_draws_where_the_helpers_cannot_read_the_rows():
    logits = torch.randn(3, 10, dtype=torch.float64)  # not float32: torch's operators
    assert sampling._kernel_for(logits) is None and sampling._kernel_for(logits.float().t()) is None
    tokens = _inverse_transform(logits, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    assert tokens.shape == (3,) and tokens.dtype == torch.int64
