"""A model that mixes n-gram counts into its network's predictions, end to end: training fits
the counts' share, and sampling, scoring and evaluation all use the same mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chargen
from chargen.model import ngram
from chargen.training.evaluate import evaluate
from tests.test_api import TINY


@pytest.fixture
def mixed(corpus):
    chargen.train(corpus, name="mixed", **TINY)
    return chargen.load("mixed")


def mixture_log_probs(model: chargen.Model, ids: list[int]) -> np.ndarray:
    """Each token's log-probability after the ones before it, worked out here from the
    network's logits and the counts' distribution (<unk> excluded from both, as sampling
    excludes it)."""
    module = model.module
    with torch.inference_mode():
        logits, _ = module(torch.tensor([ids[:-1]]))
    logits = logits[0].double()
    logits[:, 0] = -torch.inf
    network = torch.softmax(logits, -1).numpy()
    counted = module.counts.distribution(ngram.states_along(np.array([ids[:-1]]), 8)[0])
    counted[:, 0] = 0
    counted /= counted.sum(axis=1, keepdims=True)
    weight = float(module.ngram_weight)
    mixed = weight * network + (1 - weight) * counted
    return np.log(mixed[np.arange(len(ids) - 1), ids[1:]])


def test_a_character_run_mixes_in_counts_with_a_fitted_share(mixed, tmp_path):
    assert mixed.module.config.ngram == 8 and mixed.module.counts is not None
    weight = float(mixed.module.ngram_weight)
    assert 0.5 <= weight <= 1.0 and weight in ngram.WEIGHTS
    assert (tmp_path / "checkpoints" / "mixed" / "counts.npz").is_file()


def test_a_sample_is_drawn_from_the_mixture(mixed):
    sample = mixed.generate_many(1, "The", 30, temperature=1.0, seed=2)[0]
    ids = mixed.tokenizer.encode(sample.text).tolist()
    prompt = len(mixed.tokenizer.encode("The"))
    expected = mixture_log_probs(mixed, ids)[prompt - 1 :].sum()
    assert sample.mean_logprob * sample.tokens == pytest.approx(expected, abs=1e-3)


def mixture_nats(model: chargen.Model, ids: list[int]) -> float:
    """The mixture's loss over ``ids`` after the first, from the counts' ``probability`` (the
    path scoring takes) and the network's logits."""
    module = model.module
    with torch.inference_mode():
        logits, _ = module(torch.tensor([ids[:-1]]))
    network = torch.log_softmax(logits[0].double(), -1).numpy()[np.arange(len(ids) - 1), ids[1:]]
    states = ngram.states_along(np.array([ids[:-1]]), 8)[0]
    counted = module.counts.probability(states, np.array(ids[1:]))
    return ngram.mixed_nats(-network, counted, float(module.ngram_weight)).sum()


def test_scores_are_the_mixtures_loss(mixed):
    text = "the keeper lit the lamp too soon"
    ids = mixed.tokenizer.encode(text).tolist()
    assert mixed.score(text).nats == pytest.approx(mixture_nats(mixed, ids), rel=1e-5)
    from_line_start = [mixed.tokenizer.id_of("\n"), *ids]
    [line] = mixed.score_lines([text])
    assert line.nats == pytest.approx(mixture_nats(mixed, from_line_start), rel=1e-5)


def test_evaluation_fits_the_share_that_scores_best(mixed, corpus):
    from chargen.text.batches import Stream

    module = mixed.module
    stream = Stream.of(mixed.tokenizer, corpus.read_text()[:3000])
    loaded = evaluate(module.eval(), stream, torch.device("cpu"), fit=False)
    module.ngram_weight.fill_(1.0)
    network = evaluate(module, stream, torch.device("cpu"))
    fitted = evaluate(module, stream, torch.device("cpu"), fit=True)
    assert fitted.nats <= min(network.nats, loaded.nats) + 1e-9
    assert evaluate(module, stream, torch.device("cpu")).nats == pytest.approx(fitted.nats)
    assert fitted.nats < network.nats  # the counts know this text: they must help


def test_ngram_zero_is_the_network_alone_and_resume_keeps_the_order(corpus, tmp_path):
    chargen.train(corpus, name="plain", ngram=0, **TINY)
    plain = chargen.load("plain")
    assert plain.module.counts is None and "ngram_weight" not in plain.module.state_dict()
    assert not (tmp_path / "checkpoints" / "plain" / "counts.npz").exists()
    chargen.train(corpus, name="four", ngram=4, **TINY)
    chargen.train(name="four", resume=True, max_steps=30)
    resumed = chargen.load("four")
    assert resumed.module.config.ngram == 4 and resumed.module.counts.order == 4
    with pytest.raises(chargen.UsageError, match="ngram"):
        chargen.train(corpus, name="bad", ngram=17, **TINY)


def test_a_run_whose_counts_are_lost_fails_to_load_with_one_clear_error(mixed, tmp_path):
    (tmp_path / "checkpoints" / "mixed" / "counts.npz").unlink()
    with pytest.raises(chargen.CheckpointError, match="counts.npz: missing"):
        chargen.load("mixed")
