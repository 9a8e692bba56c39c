"""The generation engine, token choice and text samples (chargen.generation)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chargen.config import SampleConfig
from chargen.errors import UsageError
from chargen.generation.engine import BeamEngine, Control, Engine, Sequence
from chargen.generation.sampling import Settings, choose, sequence_key, uniforms
from chargen.generation.text import StopScanner, beam, sample
from chargen.model.rnn import RNNLanguageModel
from tests.conftest import VERSE, tiny_model
from tests.helpers import tokenizer_for


def draw(logits, temperature, top_k=None, top_p=None, seed=0):
    """``choose`` with the same settings for every row and uniform draws from ``seed``."""
    rows = logits.shape[0]
    uniform = torch.rand(rows, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    config = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    return choose(logits, Settings.of([config] * rows), uniform)


def generated(model, prompt, length, **settings):
    """The tokens one sequence generates on its own."""
    sequence = Sequence(prompt, length, SampleConfig(**settings), key=sequence_key(3))
    engine = Engine(model)
    engine.add([sequence])
    engine.run()
    return sequence.ids


@pytest.fixture
def model_and_tokenizer():
    tokenizer = tokenizer_for(VERSE, "char")
    torch.manual_seed(0)
    model = RNNLanguageModel(tiny_model("gru", vocab_size=tokenizer.vocab_size)).eval()
    return model, tokenizer


def test_same_seed_gives_the_same_sample(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    config = SampleConfig(length=80, temperature=1.0, seed=7, prime="The")
    first = sample(model, tokenizer, config)[0].text
    assert first == sample(model, tokenizer, config)[0].text
    other = sample(model, tokenizer, SampleConfig(length=80, temperature=1.0, seed=8, prime="The"))
    assert other[0].text != first


def greedy_by_hand(model, prime_ids, length):
    """Greedy decoding by rerunning the whole sequence each step: no carried state at all."""
    ids = list(prime_ids)
    with torch.no_grad():
        for _ in range(length):
            logits, _ = model(torch.tensor([ids]))
            row = logits[0, -1].clone()
            row[0] = -float("inf")
            ids.append(int(row.argmax()))
    return ids[len(prime_ids) :]


@pytest.mark.parametrize(
    "options",
    [dict(temperature=0.0), dict(temperature=1.0, top_k=1), dict(temperature=0.7, top_p=1e-9)],
)
def test_greedy_settings_equal_greedy_decoding_of_the_full_sequence(model_and_tokenizer, options):
    model, tokenizer = model_and_tokenizer
    prime = tokenizer.encode("The tide").tolist()
    assert generated(model, prime, 40, **options) == greedy_by_hand(model, prime, 40)


def test_batched_samples_are_independent_draws(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    samples = sample(model, tokenizer, SampleConfig(length=60, temperature=1.5, num=4, seed=1))
    assert len(samples) == 4 and len({s.text for s in samples}) == 4
    assert all(s.tokens == 60 and s.mean_logprob < 0 for s in samples)


def test_unk_is_never_sampled(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        model.head.bias[0] = 100.0  # make <unk> overwhelmingly likely
    samples = sample(model, tokenizer, SampleConfig(length=50, temperature=1.0, seed=0))
    assert "<unk>" not in samples[0].text


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_tempered_distribution(temperature):
    logits = torch.tensor([-math.inf, 2.0, 1.0, 0.0, -1.0, -math.inf, 0.5])
    rows = 40_000
    draws = draw(logits.expand(rows, -1), temperature, seed=1)
    frequencies = torch.bincount(draws, minlength=len(logits)).double() / rows
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    assert frequencies[0] == frequencies[5] == 0  # probability zero is never drawn
    standard_error = (expected * (1 - expected) / rows).sqrt()
    assert torch.all((frequencies - expected).abs() <= 4 * standard_error)


@pytest.mark.parametrize("temperature", [1e-38, 1e-6])
def test_a_tiny_temperature_picks_the_likeliest_allowed_token(temperature):
    logits = torch.tensor([[-math.inf, 1.0, 5.0, 2.0], [3.0, 1e30, -1e30, 0.0]])
    assert draw(logits, temperature).tolist() == [2, 1]


def test_top_k_keeps_only_the_k_likeliest():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0]])
    draws = {int(draw(logits, 1.0, top_k=2, seed=seed)) for seed in range(200)}
    assert draws == {1, 2}


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(draw(logits, 1.0, top_p=0.7, seed=seed)) for seed in range(300)}
    assert draws == {0, 1}


def test_prime_with_unseen_characters_names_them(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(UsageError, match=r"never saw: 'Z', '€'"):
        sample(model, tokenizer, SampleConfig(length=5, prime="Z€ tide"))


def test_sample_stops_at_the_stop_text(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    free = sample(model, tokenizer, SampleConfig(length=300, temperature=1.0, seed=2))[0].text
    stop = free[5:7]
    stopped = sample(model, tokenizer, SampleConfig(length=300, temperature=1.0, seed=2, stop=stop))
    assert stopped[0].text == free[: free.index(stop)]


@given(
    st.text(alphabet="ab\n", max_size=40),
    st.text(alphabet="ab\n", min_size=1, max_size=3),
    st.lists(st.integers(1, 5), max_size=40),
)
def test_stop_scanner_output_is_the_text_before_the_first_stop(text, stop, cuts):
    scanner = StopScanner(stop)
    out, position = [], 0
    for size in cuts + [len(text)]:
        out.append(scanner.feed(text[position : position + size]))
        position += size
    out.append(scanner.flush())
    expected = text[: text.index(stop)] if stop in text else text
    assert "".join(out) == expected


def test_stop_scanner_without_stop_passes_everything_through():
    scanner = StopScanner(None)
    assert scanner.feed("abc") == "abc" and scanner.flush() == ""


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=0),
        dict(length=0),
        dict(num=0),
    ],
)
def test_bad_sampling_options_are_usage_errors(bad):
    with pytest.raises(UsageError):
        SampleConfig(**bad).validate()


def test_beam_of_width_one_is_greedy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prime = tokenizer.encode("The tide").tolist()
    found = BeamEngine(model, 1).search(prime, 30)
    assert found.ids == greedy_by_hand(model, prime, 30)
    text = beam(model, tokenizer, "The tide", 1, 30).text
    assert text == "The tide" + tokenizer.decode(found.ids)


def test_wider_beam_finds_a_continuation_at_least_as_likely(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prime = tokenizer.encode("the").tolist()
    narrow = BeamEngine(model, 1).search(prime, 25).logprob
    found = BeamEngine(model, 8).search(prime, 25)
    ids, wide = found.ids, found.logprob
    assert wide >= narrow - 1e-4
    with torch.no_grad():  # the reported score is the sequence's log-probability (no <unk>)
        logits, _ = model(torch.tensor([prime + ids[:-1]]))
        logits[..., 0] = -math.inf
        logprobs = torch.log_softmax(logits[0, len(prime) - 1 :], dim=-1)
        assert logprobs.gather(-1, torch.tensor(ids)[:, None]).sum().item() == pytest.approx(
            wide, abs=1e-3
        )


def test_should_stop_ends_sampling_early(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    calls = []
    samples = sample(
        model,
        tokenizer,
        SampleConfig(length=500, seed=1),
        should_stop=lambda: len(calls.append(1) or calls) >= 10,
    )
    assert samples[0].tokens == 10


# ------------------------------------------------------------------------------ the engine


def sequence(seed, length=30, control=None, **settings):
    config = SampleConfig(**({"temperature": 1.0} | settings))
    return Sequence([1, 2, 3], length, config, key=sequence_key(seed), control=control)


def run_alone(model, seq):
    engine = Engine(model)
    engine.add([seq])
    engine.run()
    return seq.ids


def test_a_seeded_sequence_is_the_same_alone_or_beside_others(model_and_tokenizer):
    model, _ = model_and_tokenizer
    alone = run_alone(model, sequence(1))
    engine = Engine(model)
    crowd = [sequence(2, temperature=0.5), sequence(1), sequence(3, top_k=3, length=10)]
    engine.add(crowd)
    engine.run()
    assert crowd[1].ids == alone
    assert crowd[0].ids != alone  # another seed, another text


def test_sequences_join_and_leave_between_steps(model_and_tokenizer):
    model, _ = model_and_tokenizer
    first, second, third = sequence(1, 40), sequence(2, 25), sequence(3, 25)
    engine = Engine(model)
    engine.add([first, second])
    for _ in range(10):
        engine.step()
    engine.add([third])  # joins while the others are a quarter through
    engine.cancel(second)  # its client went away
    assert len(engine) == 2 and second.finish_reason == "cancelled" and len(second.ids) == 10
    engine.run()
    assert first.ids == run_alone(model, sequence(1, 40))
    assert third.ids == run_alone(model, sequence(3, 25))
    assert (first.finish_reason, third.finish_reason) == ("length", "length")
    assert second.ids == run_alone(model, sequence(2, 25))[:10]


def test_a_sequence_with_sizes_ends_when_they_reach_its_length(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sizes = np.arange(tokenizer.vocab_size) % 4 + 1  # each token counts 1 to 4
    config = SampleConfig(temperature=1.0)
    sized = [Sequence([1, 2, 3], 40, config, sequence_key(s), sizes=sizes) for s in (1, 2)]
    plain, late = sequence(1, 30), Sequence([1, 2, 3], 25, config, sequence_key(5), sizes=sizes)
    engine = Engine(model)
    engine.add([plain])
    engine.step()
    engine.add([sized[0]])  # a row with sizes beside one without
    for _ in range(4):
        engine.step()
    engine.add([sized[1], late])  # rows with sizes join rows that count them
    engine.run()
    assert plain.ids == run_alone(model, sequence(1, 30)) and plain.finish_reason == "length"
    for seq, length in ((sized[0], 40), (sized[1], 40), (late, 25)):
        assert seq.finish_reason == "length"
        assert sizes[seq.ids].sum() >= length > sizes[seq.ids[:-1]].sum()  # the first past it
    assert sized[0].ids == run_alone(model, sequence(1, len(sized[0].ids)))


class Forcing(Control):
    """Forces ``token`` at every step and ends the sequence after ``steps`` tokens."""

    def __init__(self, token, steps):
        self.token, self.steps, self.seen = token, steps, 0

    def override(self, sampled):
        return self.token

    def accept(self, token, forced):
        self.seen += 1
        return self.seen == self.steps


class Masking(Control):
    """Allows only ``tokens``."""

    def __init__(self, tokens, vocab):
        self.mask = torch.zeros(vocab, dtype=torch.bool)
        self.mask[tokens] = True

    def allowed(self):
        return self.mask


def test_a_control_forces_tokens_and_ends_its_sequence(model_and_tokenizer):
    model, _ = model_and_tokenizer
    forced = sequence(1, 50, control=Forcing(7, steps=12))
    free = sequence(2, 50)
    engine = Engine(model)
    engine.add([forced, free])
    engine.run()
    assert forced.ids == [7] * 12 and forced.finish_reason == "stop"
    assert forced.chosen == 0 and forced.logprob == 0.0  # forced tokens are not the model's
    assert free.finish_reason == "length" and free.chosen == 50 and free.logprob < 0


def test_a_control_masks_what_may_be_chosen(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    masked = sequence(4, 200, control=Masking([5, 9], tokenizer.vocab_size), temperature=2.0)
    assert set(run_alone(model, masked)) == {5, 9}


def test_random_streams_are_uniform_and_independent():
    keys = np.array([sequence_key(5, i) for i in range(4)], dtype=np.uint64)
    draws = uniforms(keys, 25_000).numpy()  # (4, 25,000)
    assert abs(draws.mean() - 0.5) < 0.005 and abs(draws.var() - 1 / 12) < 0.002
    assert np.histogram(draws, bins=10, range=(0, 1))[0].min() > 0.09 * draws.size
    assert abs(np.corrcoef(draws)[0, 1]) < 0.03  # two streams
    assert abs(np.corrcoef(draws[0, :-1], draws[0, 1:])[0, 1]) < 0.03  # one stream, lag 1


class NothingAllowed(Control):
    """Masks every token: the draw still writes one, at the model's own log-probability."""

    def allowed(self):
        return torch.zeros(self.vocab, dtype=torch.bool)


def test_a_row_whose_rule_masks_every_token_keeps_a_finite_log_probability(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    control = NothingAllowed()
    control.vocab = tokenizer.vocab_size
    seq = sequence(4, length=5, control=control)
    run_alone(model, seq)
    assert len(seq.ids) == 5 and math.isfinite(seq.mean_logprob) and seq.mean_logprob < 0
