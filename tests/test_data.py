import numpy as np
import pytest
import torch

from chargen.data import Batches, Stream, eval_layout, read_text, split_text
from chargen.errors import CorpusError
from chargen.tokenizer import Tokenizer


def test_non_utf8_corpus_error_says_where(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"first line\nsecond caf\xe9 line\n")
    with pytest.raises(CorpusError, match=r"line 2, column 11"):
        read_text(path)


def test_byte_order_mark_is_dropped_and_crlf_kept(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n")
    assert read_text(path) == "one\r\ntwo\r\n"


def test_validation_split_is_the_end_of_the_text():
    train, val = split_text("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")


def test_consecutive_windows_continue_each_stream():
    ids = np.arange(1000)
    batches = Batches(ids, batch_size=4, seq_len=10, seed=0)
    x0, y0 = batches.window(0, 0)
    x1, _ = batches.window(0, 1)
    assert torch.equal(y0[:, :-1], x0[:, 1:])  # targets are the inputs one step later
    assert torch.equal(x1[:, 0], y0[:, -1])  # the next window starts where this one ended


def test_small_corpus_gets_fewer_streams_instead_of_an_error():
    batches = Batches(np.arange(50), batch_size=32, seq_len=10, seed=0)
    assert batches.batch_size == 4


def test_corpus_shorter_than_a_window_is_refused():
    with pytest.raises(CorpusError, match="fewer than one window"):
        Batches(np.arange(5), batch_size=2, seq_len=10, seed=0)


@pytest.mark.parametrize("length", [2, 3, 65, 100, 1001])
@pytest.mark.parametrize("min_len", [1, 7, 512])
def test_eval_layout_scores_every_prediction_exactly_once(length, min_len):
    ids = np.arange(length)
    blocks = eval_layout(ids, max_streams=8, min_stream_len=min_len)
    pairs = sorted(
        (int(x), int(y))
        for xs, ys in blocks
        for x, y in zip(xs.flatten(), ys.flatten(), strict=True)
    )
    assert pairs == [(i, i + 1) for i in range(length - 1)]


def test_stream_counts_the_characters_its_predictions_cover():
    tokenizer = Tokenizer.train("hello world", "word")
    stream = Stream.of(tokenizer, "hello world")
    assert stream.chars == len(" world")
