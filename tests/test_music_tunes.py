import pytest
import torch

from chargen.config import SampleConfig
from chargen.errors import UsageError
from chargen.music.check import check_tune
from chargen.music.notation import TUNE_END, body, headers, split_header
from chargen.music.stats import tune_shape
from chargen.music.tunes import generate_tunes, generate_valid_tunes, numbered, tune_request
from chargen.runs.store import load_model, resolve_run
from tests.abc_fixtures import train_tiny_abc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The run directory of the tiny ABC model, trained once for this module."""
    return train_tiny_abc(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(tiny_run):
    """A fresh copy of the tiny model and its tokenizer (tests may change the weights)."""
    return load_model(resolve_run(str(tiny_run), tiny_run.parent))


def test_tiny_model_tunes_end_at_the_end_marker(tiny):
    model, tokenizer = tiny
    tunes = generate_tunes(model, tokenizer, SampleConfig(num=6, length=600, seed=1))
    assert [t.ended for t in tunes] == [True] * 6
    for tune in tunes:
        # the model writes its own number after the prompt's "X:", on that line
        number, rest = tune.text.split("\n", 1)
        assert number[:2] == "X:" and number[2:].isdigit() and rest.startswith(("R:", "O:", "T:"))
        assert TUNE_END not in tune.text
        assert tune.tokens < 600 and tune.mean_logprob < 0
        assert body(tune.text).strip()


@pytest.mark.parametrize("free", [False, True])
def test_requested_headers_are_in_every_tune_in_header_order(tiny, free):
    model, tokenizer = tiny
    spec = tune_request(meter="3/4", key="D", free=free)
    tunes = generate_tunes(model, tokenizer, SampleConfig(num=6, length=600, seed=2), spec)
    for tune in tunes:
        assert headers(tune.text)["M"] == "3/4" and headers(tune.text)["K"] == "D"
        letters = [line[0] for line in split_header(tune.text)[0]]
        assert letters[0] == "X" and letters[-1] == "K"
        assert letters.index("M") < letters.index("K")


@pytest.mark.parametrize("free", [False, True])
def test_music_to_start_from_comes_right_after_the_key(tiny, free):
    model, tokenizer = tiny
    config = SampleConfig(num=3, length=600, seed=3)
    spec = tune_request("M:4/4\\nK:G\\n|:GABc", free=free)
    tunes = generate_tunes(model, tokenizer, config, spec)
    assert all(body(t.text).startswith("|:GABc") for t in tunes)
    # with the grammar, the unit length the music was written in is kept: ABC's default
    assert free or all(headers(t.text)["L"] == "1/8" for t in tunes)


def test_a_tune_the_model_never_ends_stops_at_the_cap(tiny):
    model, tokenizer = tiny
    with torch.no_grad():  # make "a" overwhelmingly likely: the model never writes a blank line
        model.head.bias[tokenizer.id_of("a")] = 1e4
    spec = tune_request(free=True)
    tunes = generate_tunes(model, tokenizer, SampleConfig(num=2, length=50, seed=1), spec)
    assert [(t.ended, t.tokens) for t in tunes] == [(False, 50), (False, 50)]


def test_headers_the_model_cannot_write_are_refused(tiny):
    model, tokenizer = tiny
    config = SampleConfig(num=1, length=10)
    with pytest.raises(UsageError, match="never wrote the meter '13/16' .* knows: .*6/8"):
        generate_tunes(model, tokenizer, config, tune_request(meter="13/16"))
    with pytest.raises(UsageError, match="never saw '#'"):
        generate_tunes(model, tokenizer, config, tune_request("M:6/8\\nK:D\\n#"))
    with pytest.raises(UsageError, match="never wrote the rhythm 'hornpipe'"):
        generate_tunes(model, tokenizer, config, tune_request(rhythm="hornpipe"))
    with pytest.raises(UsageError, match="cannot ask for the header Q:"):
        generate_tunes(model, tokenizer, config, tune_request("Q:1/4=120"))


@pytest.mark.parametrize(
    "request_, message",
    [
        (dict(key="H"), "cannot read the key 'H'"),
        (dict(meter="6/7"), "cannot read the meter"),
        (dict(rhythm="polka"), "unknown rhythm 'polka'"),
        (dict(prime="K:D\\nabc"), "needs a meter"),
        (dict(prime="M:6/8\\nabc"), "needs a key"),
        (dict(bars=16, free=True), "need the grammar"),
        (dict(bars=10, parts=3), "cannot split into 3 equal parts"),
    ],
)
def test_impossible_requests_are_refused_before_sampling(request_, message):
    with pytest.raises(UsageError, match=message):
        tune_request(**request_)


def test_a_prime_that_breaks_its_bars_is_refused_saying_where(tiny):
    model, tokenizer = tiny
    spec = tune_request("M:6/8\\nK:D\\ndfa afd|gbg fede|")
    with pytest.raises(UsageError, match=r"breaks its bars at .*fed\[e\]"):
        generate_tunes(model, tokenizer, SampleConfig(num=1, length=50), spec)


def test_tunes_under_the_grammar_pass_the_check_even_at_a_high_temperature(tiny):
    model, tokenizer = tiny
    config = SampleConfig(num=16, length=600, seed=7, temperature=2.0)
    tunes = generate_tunes(model, tokenizer, config)
    ended = [t for t in tunes if t.ended]
    assert len(ended) >= 8
    for tune in ended:
        assert check_tune(tune.text, parse=False).problems == [], tune.text


def test_tunes_have_the_rhythm_and_form_asked_for(tiny):
    model, tokenizer = tiny
    spec = tune_request(rhythm="jig", bars=8, parts=2)
    config = SampleConfig(num=8, length=600, seed=8, temperature=1.0)
    tunes = [t for t in generate_tunes(model, tokenizer, config, spec) if t.ended]
    assert len(tunes) >= 6
    for tune in tunes:
        shape = tune_shape(tune.text)
        assert (headers(tune.text)["R"], shape.bars, shape.parts) == ("jig", 8, 2), tune.text
        assert check_tune(tune.text, parse=False).valid


def test_invalid_tunes_are_resampled(tiny):
    model, tokenizer = tiny
    rejected = []

    def is_valid(tune):
        if len(rejected) < 3:
            rejected.append(tune)
            return False
        return True

    config = SampleConfig(num=4, length=600, seed=4)

    def generate(config, first):
        return generate_tunes(model, tokenizer, config, first=first)

    tunes = generate_valid_tunes(generate, config, is_valid)
    assert len(tunes) == 4 and sum(t.attempts - 1 for t in tunes) == 3
    assert not any(t.text is r.text for t in tunes for r in rejected)


def test_numbered_tunes_count_from_one(tiny):
    model, tokenizer = tiny
    tunes = generate_tunes(model, tokenizer, SampleConfig(num=3, length=600, seed=5))
    assert [t.text.split("\n")[0] for t in numbered(tunes)] == ["X:1", "X:2", "X:3"]
