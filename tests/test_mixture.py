"""A model that mixes n-gram counts into its network's predictions, end to end: training fits
how they are mixed, and sampling, scoring and evaluation all use the same mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chargen
from chargen.config import LEVEL_NGRAM
from chargen.model import ngram
from chargen.training.evaluate import evaluate
from tests.test_api import TINY


@pytest.fixture
def mixed(corpus):
    chargen.train(corpus, name="mixed", **TINY)
    return chargen.load("mixed")


def mixture_log_probs(model: chargen.Model, ids: list[int], unk: bool = False) -> np.ndarray:
    """Each token's log-probability after the ones before it, worked out here from the
    network's logits and the counts' distribution (<unk> excluded from both, as sampling
    excludes it, unless ``unk``): ``w * q + (1 - w) * counts``, where ``q`` is proportional
    to ``p_network ** a * counts ** b``."""
    module = model.module
    with torch.inference_mode():
        logits, _ = module(torch.tensor([ids[:-1]]))
    network = torch.softmax(logits[0].double(), -1).numpy()
    states = ngram.states_along(np.array([ids[:-1]]), module.counts.order)[0]
    counted = module.counts.distribution(states)
    if not unk:
        network[:, 0] = counted[:, 0] = 0
        counted /= counted.sum(axis=1, keepdims=True)
    w, a, b = module.mixing
    assert (a, b) != (1.0, 0.0), "the fit should reweight the network on this corpus"
    reweighted = network**a * counted**b
    reweighted /= reweighted.sum(axis=1, keepdims=True)
    mixed = w * reweighted + (1 - w) * counted
    return np.log(mixed[np.arange(len(ids) - 1), ids[1:]])


def test_a_character_run_mixes_in_counts_fitted_on_validation(mixed, tmp_path):
    assert mixed.module.config.ngram == LEVEL_NGRAM["char"] and mixed.module.counts is not None
    weight, *product = mixed.module.mixing
    assert 0.5 <= weight <= 1.0 and round(weight, 3) in ngram.WEIGHTS  # saved as float32
    a, b = (round(e, 3) for e in product)  # on the fit's lattice of steps of 0.05
    assert 0.5 <= a <= 1.5 and 0 <= b <= 0.5 and round(a * 20) == a * 20 and round(b * 20) == b * 20
    assert (tmp_path / "checkpoints" / "mixed" / "counts.npz").is_file()


def test_a_sample_is_drawn_from_the_mixture(mixed):
    sample = mixed.generate_many(1, "The", 30, temperature=1.0, seed=2)[0]
    ids = mixed.tokenizer.encode(sample.text).tolist()
    prompt = len(mixed.tokenizer.encode("The"))
    expected = mixture_log_probs(mixed, ids)[prompt - 1 :].sum()
    assert sample.mean_logprob * sample.tokens == pytest.approx(expected, abs=1e-3)


def mixture_nats(model: chargen.Model, ids: list[int]) -> float:
    """The mixture's loss over ``ids`` after the first (<unk> allowed, as a score has it)."""
    return -mixture_log_probs(model, ids, unk=True).sum()


def test_scores_are_the_mixtures_loss(mixed):
    text = "the keeper lit the lamp too soon"
    ids = mixed.tokenizer.encode(text).tolist()
    assert mixed.score(text).nats == pytest.approx(mixture_nats(mixed, ids), rel=1e-5)
    from_line_start = [mixed.tokenizer.id_of("\n"), *ids]
    [line] = mixed.score_lines([text])
    assert line.nats == pytest.approx(mixture_nats(mixed, from_line_start), rel=1e-5)


def test_evaluation_fits_the_mixing_that_scores_best(mixed, corpus):
    from chargen.text.batches import Stream

    module = mixed.module
    stream = Stream.of(mixed.tokenizer, corpus.read_text()[:3000])
    loaded = evaluate(module.eval(), stream, torch.device("cpu"), fit=False)
    fitted = evaluate(module, stream, torch.device("cpu"), fit=True)  # the loaded one tried too
    assert fitted.nats <= loaded.nats * (1 + 1e-6)  # the loaded share is float32, near the grid
    assert evaluate(module, stream, torch.device("cpu")).nats == pytest.approx(fitted.nats)
    best = module.mixing
    module.mixing = ngram.Mixing()
    network = evaluate(module, stream, torch.device("cpu"))
    assert fitted.nats < network.nats  # the counts know this text: they must help
    module.mixing = ngram.Mixing(best.weight)  # the same share, not reweighted
    assert evaluate(module, stream, torch.device("cpu")).nats > fitted.nats


def test_a_run_saved_before_products_were_fitted_loads_as_a_plain_mixture(mixed, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "checkpoints" / "mixed" / "best.safetensors"
    tensors = load_file(path)
    del tensors["model.ngram_product"]
    save_file(tensors, path)
    old = chargen.load("mixed")
    assert old.module.mixing == ngram.Mixing(mixed.module.mixing.weight)


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
