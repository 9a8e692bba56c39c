import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.config import CELLS, ModelConfig
from chargen.errors import UsageError
from chargen.model.rnn import (
    CELL_TYPES,
    MASK_LEVELS,
    RNNLanguageModel,
    detach_hidden,
    dropout_mask,
    select_hidden,
)
from chargen.model.stepper import Stepper


def make(cell, **changes):
    torch.manual_seed(0)
    return RNNLanguageModel(
        ModelConfig(cell=cell, vocab_size=11, embedding_dim=8, hidden_size=12, **changes)
    ).eval()


def test_registry_lists_every_configurable_cell():
    assert tuple(CELL_TYPES) == CELLS


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_logits_have_batch_time_vocab_shape(cell, layers):
    model = make(cell, num_layers=layers)
    logits, _ = model(torch.randint(0, 11, (3, 5)))
    assert logits.shape == (3, 5, 11)


@pytest.mark.parametrize("cell", CELLS)
def test_carried_hidden_state_equals_one_long_pass(cell):
    model = make(cell, num_layers=2)
    ids = torch.randint(0, 11, (2, 20))
    whole, _ = model(ids, model.init_hidden(2))
    first, hidden = model(ids[:, :7], model.init_hidden(2))
    second, _ = model(ids[:, 7:], detach_hidden(hidden))
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_plain_rnn_is_the_tanh_recurrence():
    model = make("rnn")
    ids = torch.tensor([[3, 1, 4]])
    logits, _ = model(ids)
    rnn = model.rnn
    h = torch.zeros(12)
    for t in range(3):
        x = model.embedding.weight[ids[0, t]]
        h = torch.tanh(
            rnn.weight_hh_l0 @ h + rnn.weight_ih_l0 @ x + rnn.bias_hh_l0 + rnn.bias_ih_l0
        )
    assert torch.allclose(model.head(h), logits[0, -1], atol=1e-5)


def test_tied_weights_share_one_matrix():
    model = RNNLanguageModel(
        ModelConfig(vocab_size=9, embedding_dim=10, hidden_size=10, tie_weights=True)
    )
    assert model.head.weight is model.embedding.weight
    untied = RNNLanguageModel(ModelConfig(vocab_size=9, embedding_dim=10, hidden_size=10))
    assert model.num_parameters() == untied.num_parameters() - 9 * 10


def test_tied_weights_need_equal_sizes():
    with pytest.raises(UsageError, match="--tie-weights needs --embedding equal to --hidden"):
        RNNLanguageModel(
            ModelConfig(vocab_size=9, embedding_dim=8, hidden_size=10, tie_weights=True)
        )


def test_unknown_cell_lists_the_valid_ones():
    with pytest.raises(UsageError, match="rnn, lstm, gru, lnlstm"):
        ModelConfig(cell="transformer", vocab_size=3).validate()


def test_hidden_state_follows_the_weights_dtype():
    model = make("lstm").to(torch.float64)
    h, c = model.init_hidden(4)
    assert h.dtype == torch.float64 and h.shape == (1, 4, 12) and c.shape == h.shape


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("chained", [True, False])
def test_stepper_gives_the_logits_of_the_fused_module(cell, layers, chained):
    model = make(cell, num_layers=layers)
    ids = torch.randint(0, 11, (3, 9))
    with torch.no_grad():
        expected, _ = model(ids)
        step, hidden, produced = Stepper(model, chained=chained), model.init_hidden(3), []
        for t in range(9):
            logits, hidden = step(ids[:, t], hidden)
            produced.append(logits)
    assert torch.allclose(torch.stack(produced, dim=1), expected, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_stepper_multiplies_afresh_for_a_state_it_did_not_return(cell):
    """The product made ahead belongs to the state returned; rows picked out of that state
    (as beam search and finished tunes do) must not reuse it."""
    model = make(cell, num_layers=2)
    ids = torch.randint(0, 11, (4, 5))
    with torch.no_grad():
        step, hidden = Stepper(model, chained=True), model.init_hidden(4)
        for t in range(5):
            _, hidden = step(ids[:, t], hidden)
        picked = select_hidden(hidden, torch.tensor([3, 0, 0, 1]))
        got, _ = step(ids[:, 0], picked)
        expected, _ = Stepper(model, chained=False)(ids[:, 0], picked)
    assert torch.allclose(got, expected, atol=1e-6)


def test_chained_stepper_reuses_the_product_made_ahead():
    model = make("lstm", num_layers=2)
    ids = torch.randint(0, 11, (4, 6))

    def products(chained):
        step, hidden, calls = Stepper(model, chained=chained), model.init_hidden(4), []
        original = step._matmul_add
        step._matmul_add = lambda *args: calls.append(1) or original(*args)
        with torch.no_grad():
            for t in range(6):
                _, hidden = step(ids[:, t], hidden)
        return len(calls)

    # plain: per step two recurrent products, one between the layers, one output product;
    # chained: the last layer's recurrence comes with the output product, after the first step
    assert products(chained=False) == 6 * 4
    assert products(chained=True) == 6 * 2 + 1


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_stepper_stays_close_to_the_float32_one(cell):
    model = make(cell, num_layers=2)
    ids = torch.randint(0, 11, (16, 12))
    with torch.no_grad():
        exact, low = Stepper(model), Stepper(model, bf16=True, chained=True)
        h_exact = h_low = model.init_hidden(16)
        for t in range(12):
            a, h_exact = exact(ids[:, t], h_exact)
            b, h_low = low(ids[:, t], h_low)
            assert b.dtype == torch.float32
            assert torch.allclose(a, b, atol=0.05), (a - b).abs().max()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("tie", [False, True])
def test_shapes_worked_out_are_the_shapes_of_a_built_model(cell, layers, tie):
    config = ModelConfig(cell=cell, vocab_size=11, embedding_dim=12, hidden_size=12,
                         num_layers=layers, tie_weights=tie)  # fmt: skip
    built = {k: tuple(v.shape) for k, v in RNNLanguageModel(config).state_dict().items()}
    assert RNNLanguageModel.shapes(config) == built


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.0, 0.999), seed=st.integers(0, 2**31))
def test_a_dropout_mask_keeps_its_share_and_follows_its_generator(p, seed):
    generator = torch.Generator().manual_seed(seed)
    keep, share = dropout_mask((64, 1024), p, generator)
    assert keep.shape == (64, 1024) and keep.dtype == torch.bool
    assert abs(share - (1 - p)) <= 1 / MASK_LEVELS
    assert abs(keep.float().mean().item() - share) < 0.02  # 65,536 draws: 4 sigma is 0.008
    again, _ = dropout_mask((64, 1024), p, torch.Generator().manual_seed(seed))
    assert torch.equal(keep, again)


def test_dropout_mask_bits_are_independent_of_their_place_in_a_draw():
    # four masks' elements come from one 64-bit draw: each place must be fair on its own
    keep, _ = dropout_mask((1 << 18,), 0.5, torch.Generator().manual_seed(3))
    by_place = keep.view(-1, 4).float().mean(0)
    assert torch.all((by_place - 0.5).abs() < 0.01), by_place
    neighbours = (keep.view(-1, 4)[:, 0] == keep.view(-1, 4)[:, 1]).float().mean()
    assert abs(neighbours.item() - 0.5) < 0.01


def test_dropout_in_training_keeps_the_expected_value_and_is_off_in_eval():
    model = RNNLanguageModel(ModelConfig(vocab_size=5, hidden_size=8, dropout=0.4))
    x = torch.ones(4, 64, 256)
    model.train()
    dropped = model._dropout(x, torch.Generator().manual_seed(0))
    values = dropped.unique()
    assert (
        len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.6, rel=1e-4)
    )
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.02)
    model.eval()
    assert torch.equal(model._dropout(x, None), x)
