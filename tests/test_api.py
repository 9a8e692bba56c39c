"""The public Python API: every name in ``chargen.__all__``, used as a Python user would."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chargen
from chargen.config import (
    FLOAT32_WIDTH,
    LARGE_CORPUS,
    SMALL_CORPUS,
    SMALL_CORPUS_DROPOUT,
    WIDTH,
    corpus_dropout,
)
from chargen.model import window
from tests.abc_fixtures import train_tiny_abc
from tests.conftest import VERSE

TINY = dict(
    hidden=24,
    embedding=8,
    batch_size=4,
    window=16,
    eval_every=10,
    max_steps=20,
    precision="fp32",
)


@pytest.fixture
def bard(corpus):
    summary = chargen.train(corpus, name="bard", **TINY)
    assert summary.status == "finished"
    return chargen.load("bard")


@pytest.fixture(scope="module")
def tiny_tunes(tmp_path_factory):
    return train_tiny_abc(tmp_path_factory.mktemp("tunes"))


def test_every_public_name_is_tested_here():
    source = Path(__file__).read_text(encoding="utf-8")
    untested = [name for name in chargen.__all__ if f"chargen.{name}" not in source]
    assert untested == []


def test_import_chargen_does_not_import_torch():
    code = "import sys, chargen; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def test_version_is_the_installed_packages():
    assert chargen.__version__ == importlib.metadata.version("chargen")


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        chargen.nonsense  # noqa: B018


# ------------------------------------------------------------------------------ training


def test_train_reports_progress_through_callbacks_and_prints_nothing(corpus, capfd):
    steps, evals = [], []
    summary = chargen.train(
        corpus,
        name="quiet",
        on_step=lambda t: steps.append(t.state.step),
        on_eval=lambda t, score: evals.append(score.bits_per_char),
        **TINY,
    )
    assert isinstance(summary, chargen.TrainingSummary)
    assert summary.steps == 20 and steps == list(range(1, 21))
    assert len(evals) == 2 and summary.best_val_bpc == min(evals)
    assert capfd.readouterr() == ("", "")


def test_should_stop_leaves_a_run_that_resumes(corpus):
    asked = []
    stop_after_three = lambda: len(asked.append(1) or asked) > 3  # noqa: E731
    summary = chargen.train(corpus, name="paused", should_stop=stop_after_three, **TINY)
    assert summary.status == "interrupted" and summary.steps == 3
    resumed = chargen.train(name="paused", resume=True, max_steps=5)
    assert resumed.status == "finished" and resumed.steps == 5


def test_start_gives_a_session_to_look_at_before_running(corpus):
    session = chargen.start(corpus, name="looked", **TINY)
    assert session.describe().startswith("Training looked: lstm 1x24")
    assert session.warnings == []
    assert session.run_loop().steps == 20


def test_a_small_corpus_gets_dropout_unless_dropout_is_given(corpus):
    session = chargen.start(corpus, name="small", **TINY)
    assert len(session.corpus.train) < SMALL_CORPUS
    assert session.trainer.model.config.dropout == SMALL_CORPUS_DROPOUT
    assert "(dropout 0.5)" in session.describe()
    session.run_loop()
    assert chargen.load("small").module.config.dropout == SMALL_CORPUS_DROPOUT  # saved
    chargen.train(name="small", resume=True, max_steps=25)  # a resume keeps it
    assert chargen.load("small").module.config.dropout == SMALL_CORPUS_DROPOUT
    for asked, expected in ((0, 0.0), (0.2, 0.2), (None, SMALL_CORPUS_DROPOUT)):
        session = chargen.start(corpus, name="given", force=True, dropout=asked, **TINY)
        assert session.trainer.model.config.dropout == expected
        session.close()


@pytest.mark.parametrize(
    "has_bf16, precision, cell, compiled, width",
    [
        (True, "auto", "lstm", False, WIDTH),
        (False, "auto", "lstm", False, FLOAT32_WIDTH),
        (True, "fp32", "lstm", False, FLOAT32_WIDTH),
        (False, "auto", "lstm", True, WIDTH),  # the compiled window trains 512 fast enough
        (False, "auto", "gru", True, FLOAT32_WIDTH),  # a GRU still trains on torch's
    ],
)
def test_a_new_run_without_hidden_takes_the_width_its_cpu_trains_best(
    corpus, monkeypatch, has_bf16, precision, cell, compiled, width
):
    monkeypatch.setattr("chargen.model.device.cpu_has_bf16", lambda: has_bf16)
    if not compiled:
        monkeypatch.setattr(window, "kernel", lambda: None)
    elif window.kernel() is None:
        pytest.skip("the compiled LSTM window cannot be built here")
    options = {**TINY, "precision": precision, "device": "cpu", "cell": cell}
    del options["hidden"]
    for hidden, expected in ((None, width), (40, 40)):
        session = chargen.start(corpus, name="wide", force=True, hidden=hidden, **options)
        assert session.trainer.model.config.hidden_size == expected
        session.close()


@pytest.mark.parametrize(
    "widths, expected",
    [({}, (FLOAT32_WIDTH, FLOAT32_WIDTH)), ({"hidden": 24}, (24, 24)), ({"embedding": 8}, (8, 8))],
)
def test_tied_weights_take_one_width_the_given_one_or_the_default(
    corpus, monkeypatch, widths, expected
):
    monkeypatch.setattr("chargen.model.device.cpu_has_bf16", lambda: False)
    monkeypatch.setattr(window, "kernel", lambda: None)
    options = {k: v for k, v in TINY.items() if k not in ("hidden", "embedding")}
    session = chargen.start(corpus, name="tied", tie_weights=True, **options, **widths)
    try:
        config = session.trainer.model.config
        assert (config.hidden_size, config.embedding_dim) == expected
    finally:
        session.close()


def test_a_resumed_run_keeps_its_width_on_any_hardware(corpus, monkeypatch):
    options = {k: v for k, v in TINY.items() if k not in ("hidden", "precision")}
    monkeypatch.setattr("chargen.model.device.cpu_has_bf16", lambda: False)
    monkeypatch.setattr(window, "kernel", lambda: None)  # torch's float32: FLOAT32_WIDTH
    chargen.train(corpus, name="moved", **{**options, "max_steps": 2})
    monkeypatch.setattr("chargen.model.device.cpu_has_bf16", lambda: True)  # a new run: WIDTH
    session = chargen.start(name="moved", resume=True, max_steps=3)  # no step: no bf16 here
    try:
        assert session.trainer.model.config.hidden_size == FLOAT32_WIDTH
    finally:
        session.close()


@given(st.integers(1, 10**7), st.integers(1, 10**7))
def test_corpus_dropout_falls_with_size_in_steps_of_a_twentieth(smaller, larger):
    smaller, larger = sorted((smaller, larger))
    for tokens in (smaller, larger):
        dropout = corpus_dropout(tokens)
        assert 0 <= dropout <= SMALL_CORPUS_DROPOUT
        assert dropout * 20 == pytest.approx(round(dropout * 20))
    assert corpus_dropout(smaller) >= corpus_dropout(larger)
    assert corpus_dropout(SMALL_CORPUS) == SMALL_CORPUS_DROPOUT
    assert corpus_dropout(LARGE_CORPUS) == 0


def test_options_are_named_as_on_the_command_line_or_as_fields(corpus):
    chargen.train(corpus, name="named", hidden_size=20, time="1m", **{**TINY, "hidden": 20})
    assert chargen.load("named").module.config.hidden_size == 20
    with pytest.raises(chargen.UsageError, match="unknown option 'hiden'"):
        chargen.train(corpus, name="typo", hiden=20)


def test_configs_validate_their_fields():
    chargen.ModelConfig().validate()
    chargen.TrainConfig().validate()
    chargen.SampleConfig().validate()
    with pytest.raises(chargen.UsageError, match=r"hidden_size must be in \[1, 65536\]"):
        chargen.ModelConfig(hidden_size=0).validate()
    with pytest.raises(chargen.UsageError, match=r"threads must be in \[1, 1024\]"):
        chargen.TrainConfig(threads=10**6).validate()
    with pytest.raises(chargen.UsageError, match=r"top_p must be in \(0, 1\]"):
        chargen.SampleConfig(top_p=0).validate()


# ------------------------------------------------------------------------------ a model


def test_load_by_name_or_directory_and_runs_lists_them(bard, tmp_path):
    assert isinstance(bard, chargen.Model)
    assert bard.name == "bard" and bard.level == "char" and not bard.writes_tunes
    assert repr(bard) == "<chargen.Model 'bard' (char, best weights)>"
    by_path = chargen.load(tmp_path / "checkpoints" / "bard", weights="last")
    assert by_path.weights == "last"
    assert [run.name for run in chargen.list_runs()] == ["bard"]
    assert chargen.latest().name == "bard"


def test_a_missing_run_is_a_checkpoint_error_naming_the_runs(bard):
    with pytest.raises(chargen.CheckpointError, match="no run named 'bart'; runs in .*: bard"):
        chargen.load("bart")


def test_generate_continues_the_prompt_and_a_seed_repeats_it(bard, capfd):
    text = bard.generate("The tide", length=40, temperature=1.0, seed=3)
    assert text.startswith("The tide") and len(text) == len("The tide") + 40
    assert text == bard.generate("The tide", length=40, temperature=1.0, seed=3)
    assert text != bard.generate("The tide", length=40, temperature=1.0, seed=4)
    assert capfd.readouterr() == ("", "")


def test_stream_gives_the_same_text_in_pieces(bard):
    pieces = list(bard.stream("The", length=60, temperature=0.9, seed=5, stop="moon"))
    assert pieces[0] == "The"
    assert "".join(pieces) == bard.generate("The", 60, temperature=0.9, seed=5, stop="moon")


def test_generate_many_gives_samples_with_their_log_probability(bard):
    samples = bard.generate_many(4, "the", 30, temperature=1.2, seed=1)
    assert len(samples) == 4 and all(isinstance(s, chargen.Sample) for s in samples)
    assert all(s.tokens == 30 and s.mean_logprob < 0 for s in samples)
    assert samples[0].text == bard.generate("the", 30, temperature=1.2, seed=1)


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """A tiny model of sub-word tokens."""
    folder = tmp_path_factory.mktemp("pieces")
    (folder / "verse.txt").write_text(VERSE * 40, encoding="utf-8")
    chargen.train(folder / "verse.txt", level="bpe", checkpoint_dir=folder, **TINY)
    return chargen.load("verse", checkpoint_dir=folder)


@settings(max_examples=12, deadline=None)
@given(length=st.integers(1, 90), seed=st.integers(0, 2**16), stop=st.sampled_from([None, "e"]))
def test_length_counts_characters_at_the_sub_word_level(pieces, length, seed, stop):
    text = pieces.generate("The", length, temperature=1.0, seed=seed, stop=stop)
    assert "".join(pieces.stream("The", length, temperature=1.0, seed=seed, stop=stop)) == text
    made = pieces.generate_many(2, "The", length, temperature=1.0, seed=seed, stop=stop)
    assert made[0].text == text
    for sample in made:
        assert sample.tokens <= length and len(sample.text) <= len("The") + length
        if sample.finish_reason == "length":
            assert len(sample.text) == len("The") + length
        else:
            assert sample.finish_reason == "stop" and "e" not in sample.text[3:]
    if stop is None:
        assert all(s.finish_reason == "length" for s in made)
        assert len(pieces.beam("The", length, width=2).text) == len("The") + length


def test_beam_is_the_likeliest_continuation(bard):
    found = bard.beam("The", length=20, width=4)
    greedy = bard.generate("The", 20, temperature=0)
    assert isinstance(found, chargen.Sample)
    assert found.mean_logprob >= bard.generate_many(1, "The", 20, temperature=0)[0].mean_logprob
    assert len(found.text) == len(greedy)


def test_score_is_lower_on_text_like_the_training_text(bard, corpus):
    seen = bard.score(corpus.read_text()[:400])
    assert isinstance(seen, chargen.Score)
    unseen = bard.score("zzzz qqqq xxxx " * 20)
    assert seen.bits_per_char < unseen.bits_per_char
    lines = bard.score_lines(["the keeper lit the lamp", "qqq"])
    assert lines[0].bits_per_char < lines[1].bits_per_char


def test_identify_ranks_the_model_of_the_texts_kind_first(corpus, tmp_path):
    chargen.train(corpus, name="verse", **{**TINY, "max_steps": 150})
    digits = tmp_path / "digits.txt"
    digits.write_text("0123456789 +-*/ 9876543210 = 42\n" * 60)
    chargen.train(digits, name="digits", **{**TINY, "max_steps": 150})
    ranked = chargen.identify("the keeper lit the lamp")
    assert isinstance(ranked[0], chargen.Ranked)
    assert [r.name for r in ranked] == ["verse", "digits"] and ranked[0].confidence > 0.9
    with pytest.raises(chargen.UsageError, match="at least two models"):
        chargen.identify("the lamp", ["verse"])


# ------------------------------------------------------------------------------ tunes


def test_tunes_come_numbered_and_checked(tiny_tunes, tmp_path):
    pytest.importorskip("music21")
    shutil.copytree(tiny_tunes, tmp_path / "checkpoints" / "folk")
    folk = chargen.load("folk")
    assert folk.writes_tunes
    tunes = folk.tunes(3, meter="3/4", seed=2, check=True)
    assert [t.text.split("\n")[0] for t in tunes] == ["X:1", "X:2", "X:3"]
    assert all(isinstance(t, chargen.Tune) and "M:3/4" in t.text for t in tunes)
    assert all(isinstance(t.check, chargen.TuneCheck) for t in tunes)
    assert all(t.valid == t.check.valid and t.ended for t in tunes)
    assert folk.tunes(1, seed=2)[0].check is None  # not checked unless asked


def test_the_folk_model_ships_with_chargen_and_a_run_of_yours_comes_first(tiny_tunes, tmp_path):
    shipped = chargen.load("folk")
    assert shipped.writes_tunes and shipped.name == "folk"
    shutil.copytree(tiny_tunes, tmp_path / "checkpoints" / "folk")
    assert chargen.load("folk").run.path != shipped.run.path


def test_a_text_model_writes_no_tunes(bard):
    with pytest.raises(chargen.UsageError, match="is a text model, not a tune model"):
        bard.tunes(1)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "error",
    [
        chargen.UsageError,
        chargen.CorpusError,
        chargen.TokenizerError,
        chargen.CheckpointError,
        chargen.RunExistsError,
        chargen.RunLockedError,
        chargen.TrainingDiverged,
        chargen.MusicError,
    ],
)
def test_every_error_is_a_chargen_error(error):
    assert issubclass(error, chargen.ChargenError)
    usage = error in (chargen.UsageError, chargen.RunExistsError)
    assert error.exit_code == (2 if usage else 1)


def test_training_into_an_existing_name_is_a_run_exists_error(corpus):
    chargen.train(corpus, name="twice", **TINY)
    with pytest.raises(chargen.RunExistsError, match="already exists"):
        chargen.train(corpus, name="twice", **TINY)


def test_a_corpus_that_is_not_utf8_is_a_corpus_error(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"caf\xe9\n" * 100)
    with pytest.raises(chargen.CorpusError, match=re.escape("not UTF-8 text")):
        chargen.train(path, **TINY)


def test_loading_and_sampling_stay_clear_of_torchs_compiler(bard):
    """torch._dynamo takes a second to import: a first token should not wait for it."""
    code = (
        "import sys, chargen\n"
        "chargen.load(sys.argv[1]).generate('The', 5)\n"
        "print(any(m.startswith('torch._dynamo') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(bard.run.path)], capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result.stderr
