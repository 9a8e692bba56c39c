import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.errors import CorpusError
from chargen.text import corpus
from tests.cli_helpers import TINY, run
from tests.conftest import VERSE
from tests.helpers import split_text, tokenizer_for


@pytest.fixture
def files(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first file, no final newline")
    (folder / "sub" / "b.txt").write_text("second file\nwith two lines\n")
    (folder / ".hidden").write_text("never read")
    return folder


def test_folders_are_read_recursively_in_order_skipping_hidden_files(files):
    paths = corpus.expand_sources([str(files)])
    assert [p.name for p in paths] == ["a.txt", "b.txt"]
    text = "".join(corpus.iter_text(paths))
    assert text == "first file, no final newline\nsecond file\nwith two lines\n"


def test_globs_expand_and_missing_sources_are_named(files):
    assert [p.name for p in corpus.expand_sources([str(files / "**" / "*.txt")])] == [
        "a.txt",
        "b.txt",
    ]
    with pytest.raises(CorpusError, match="no file matches"):
        corpus.expand_sources([str(files / "*.md")])
    with pytest.raises(CorpusError, match="no such file, folder or pattern"):
        corpus.expand_sources([str(files / "missing.txt")])


@pytest.mark.parametrize("level", ["char", "word", "bpe"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab é\n,.€🙂")), min_size=1, max_size=300).filter(
        str.strip
    ),
    chunk=st.integers(1, 17),
)
def test_streamed_tokens_equal_tokenizing_the_whole_text(tmp_path, monkeypatch, level, text, chunk):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)  # cut multi-byte characters and words
    path = tmp_path / f"{level}-{chunk}.txt"
    path.write_text(text, encoding="utf-8")
    tokenizer, arrays = corpus.prepare([path], None, level, 10_000, 1, 0.25, cache=tmp_path / "c")
    train_text, val_text = split_text(text, 0.25)
    expected = tokenizer_for(train_text, level)
    assert tokenizer.pieces == expected.pieces
    assert arrays.train.tolist() == expected.encode(train_text).tolist()
    assert arrays.val.tolist() == expected.encode(val_text).tolist()
    assert (arrays.train_chars, arrays.val_chars) == (len(train_text), len(val_text))


def test_a_second_run_reads_the_cache_instead_of_tokenizing(tmp_path, monkeypatch):
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 20)
    encoded = []
    encode = corpus._encode_to_cache
    monkeypatch.setattr(corpus, "_encode_to_cache", lambda *a: encoded.append(1) or encode(*a))
    first_tok, first = corpus.prepare([path], None, "char", 10, 1, 0.1, cache=tmp_path / "c")
    again_tok, again = corpus.prepare([path], None, "char", 10, 1, 0.1, cache=tmp_path / "c")
    assert len(encoded) == 1  # the second run read the tokens back
    assert isinstance(again.train, np.memmap) and again.train.dtype == np.uint16
    assert again_tok.pieces == first_tok.pieces and np.array_equal(again.train, first.train)
    path.write_text(VERSE * 21)  # new content, new key
    corpus.prepare([path], None, "char", 10, 1, 0.1, cache=tmp_path / "c")
    assert len(encoded) == 2


def test_invalid_utf8_deep_in_a_big_file_is_located(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    path = tmp_path / "bad.txt"
    path.write_bytes(b"line\n" * 100 + b"abc\xffdef\n")
    with pytest.raises(CorpusError, match=r"line 101, column 4, offset 503"):
        corpus.prepare([path], None, "char", 10, 1, 0.1, cache=tmp_path / "c")


def test_train_takes_several_files_folders_and_globs(files, tmp_path):
    extra = tmp_path / "verse.txt"
    extra.write_text(VERSE * 30)
    result = run("train", files, str(tmp_path / "*.txt"), "--name", "many", *TINY, "--json")
    assert result.exit_code == 0, result.output
    listed = run("checkpoints", "show", "many", "--json").stdout
    assert str(files) in listed and "*.txt" in listed


def test_eval_tokens_caps_the_validation_pass(tmp_path):
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 60)
    result = run("train", path, "--name", "capped", *TINY, "--eval-tokens", "100", "--json")
    assert result.exit_code == 0, result.output
    from chargen.runs.store import read_metrics, resolve_run

    metrics = read_metrics(resolve_run("capped", tmp_path / "checkpoints"))
    assert metrics and all(m["val_tokens"] == 99 for m in metrics)  # 100 tokens, 99 predictions
