import math

import pytest
import torch

from chargen.config import TrainConfig
from chargen.generation.scoring import identify, score_texts
from chargen.model.rnn import RNNLanguageModel
from chargen.text.batches import Batches, Stream
from chargen.training.evaluate import evaluate
from chargen.training.trainer import Trainer
from tests.conftest import tiny_model
from tests.helpers import tokenizer_for

SEA = "the sea rolls over the sand and the tide runs home to the harbour wall\n" * 30
HILL = "up the hill the goats climb slow, the bells ring low in the valley below\n" * 30


def trained_on(text):
    tokenizer = tokenizer_for(SEA + HILL)  # one alphabet, so both models see every character
    torch.manual_seed(0)
    model = RNNLanguageModel(tiny_model("gru", vocab_size=tokenizer.vocab_size))
    config = TrainConfig(
        batch_size=4, seq_len=16, lr=2e-2, max_steps=150, eval_every=1000, precision="fp32"
    )
    Trainer(
        model, Batches(tokenizer.encode(text), 4, 16, 0), None, config, torch.device("cpu")
    ).run()
    return model.eval(), tokenizer


def test_scores_do_not_depend_on_batching_or_padding():
    model, tokenizer = trained_on(SEA)
    texts = ["the tide", "up the hill the goats climb", "", "a"]
    together = score_texts(model, tokenizer, texts)
    alone = [score_texts(model, tokenizer, [t])[0] for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert a.tokens == b.tokens and a.nats == pytest.approx(b.nats, abs=1e-4)
    assert together[2].tokens == 0 and math.isnan(together[2].bits_per_char)


def test_score_of_a_long_text_matches_evaluation_after_a_newline():
    model, tokenizer = trained_on(SEA)
    text = SEA[:700]
    (score,) = score_texts(model, tokenizer, [text], window=64)
    result = evaluate(model, Stream.of(tokenizer, "\n" + text), torch.device("cpu"))
    assert score.tokens == result.tokens == len(text)
    assert score.nats_per_token == pytest.approx(result.nats_per_token, rel=1e-4)


def test_identify_ranks_the_model_of_the_texts_own_kind_first():
    models = {"sea": trained_on(SEA), "hill": trained_on(HILL)}
    ranked = identify("the tide runs home to the sand\n", models)
    assert [r.name for r in ranked] == ["sea", "hill"]
    assert ranked[0].confidence > 0.99 and sum(r.confidence for r in ranked) == pytest.approx(1)
    assert identify("the goats climb the hill\n", models)[0].name == "hill"
