import pytest
import torch

from chargen.config import SampleConfig
from chargen.errors import UsageError
from chargen.music.notation import TUNE_END, body, headers, split_header
from chargen.music.tunes import generate_tunes, generate_valid_tunes, numbered
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
        assert tune.text.startswith("X:1\n") and TUNE_END not in tune.text
        assert tune.tokens < 600 and tune.mean_logprob < 0
        assert body(tune.text).strip()


def test_requested_headers_are_in_every_tune_in_header_order(tiny):
    model, tokenizer = tiny
    fields = {"M": "3/4", "K": "D"}
    tunes = generate_tunes(model, tokenizer, SampleConfig(num=6, length=600, seed=2), fields)
    for tune in tunes:
        assert headers(tune.text)["M"] == "3/4" and headers(tune.text)["K"] == "D"
        letters = [line[0] for line in split_header(tune.text)[0]]
        assert letters[0] == "X" and letters[-1] == "K"
        assert letters.index("M") < letters.index("K")


def test_music_to_start_from_comes_right_after_the_key(tiny):
    model, tokenizer = tiny
    config = SampleConfig(num=3, length=600, seed=3)
    tunes = generate_tunes(model, tokenizer, config, {"K": "G"}, music="|:GABc")
    assert all(body(t.text).startswith("|:GABc") for t in tunes)


def test_a_tune_the_model_never_ends_stops_at_the_cap(tiny):
    model, tokenizer = tiny
    with torch.no_grad():  # make "a" overwhelmingly likely: the model never writes a blank line
        model.head.bias[tokenizer.id_of("a")] = 1e4
    tunes = generate_tunes(model, tokenizer, SampleConfig(num=2, length=50, seed=1))
    assert [(t.ended, t.tokens) for t in tunes] == [(False, 50), (False, 50)]


def test_headers_the_model_cannot_write_are_refused(tiny):
    model, tokenizer = tiny
    config = SampleConfig(num=1, length=10)
    with pytest.raises(UsageError, match="never saw"):
        generate_tunes(model, tokenizer, config, {"M": "13/16"})
    with pytest.raises(UsageError, match="cannot ask for the header Q:"):
        generate_tunes(model, tokenizer, config, {"Q": "1/4=120"})


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
