import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.errors import CorpusError
from chargen.text.batches import (
    IGNORE,
    Batches,
    Stream,
    eval_layout,
    padded_pieces,
    piece_starts,
)
from tests.abc_fixtures import GOOD
from tests.helpers import tokenizer_for


def test_consecutive_windows_continue_each_stream():
    ids = np.arange(1000)
    batches = Batches(ids, batch_size=4, seq_len=10, seed=0)
    x0, y0, reset, _ = batches.window(0, 0)
    x1 = batches.window(0, 1).inputs
    assert reset is None  # plain text is one piece: nothing to reset
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
    tokenizer = tokenizer_for("hello world", "word")
    stream = Stream.of(tokenizer, "hello world")
    assert stream.chars == len(" world")


TUNES = "\n\n".join(GOOD) + "\n"


def test_abc_pieces_start_at_the_blank_line_before_each_tune():
    tokenizer = tokenizer_for(TUNES, "abc")
    ids = tokenizer.encode(TUNES)
    starts = piece_starts(tokenizer, ids)
    ends = [*starts[1:], len(ids)]
    pieces = [tokenizer.decode(ids[a:b]) for a, b in zip(starts, ends, strict=True)]
    assert pieces[0] == GOOD[0] + "\n"
    assert pieces[1:] == ["\n" + tune + "\n" for tune in GOOD[1:]]
    assert piece_starts(tokenizer_for(TUNES, "char"), ids) is None  # char level: one piece


# Piece boundaries anywhere in a token stream, windows of any size.
pieces_and_windows = st.integers(2, 300).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.sets(st.integers(1, n - 1), max_size=30).map(lambda s: np.array([0, *sorted(s)])),
        st.integers(1, 20),
    )
)


@settings(max_examples=60, deadline=None)
@given(pieces_and_windows)
def test_padded_pieces_keep_every_prediction_once_and_start_pieces_on_windows(case):
    length, starts, window = case
    ids = np.arange(length) * 7 % 1000
    inputs, targets, resets = padded_pieces(ids, starts, window)
    real = targets != IGNORE
    pairs = sorted(zip(inputs[real].tolist(), targets[real].tolist(), strict=True))
    assert pairs == sorted(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
    # A flagged window begins with the first input of a piece, and each piece is flagged once.
    flagged = np.flatnonzero(resets) * window
    assert inputs[flagged].tolist() == ids[starts[starts < length - 1]].tolist()


@settings(max_examples=60, deadline=None)
@given(pieces_and_windows)
def test_eval_layout_of_pieces_scores_each_prediction_once_from_a_piece_start(case):
    length, starts, _ = case
    ids = np.arange(length)
    blocks = eval_layout(ids, max_streams=4, starts=starts)
    rows = [(x, y) for xs, ys in blocks for x, y in zip(xs, ys, strict=True)]
    firsts = sorted(int(x[0]) for x, _ in rows)
    assert firsts == [int(s) for s in starts if s < length - 1]
    pairs = sorted(
        (int(a), int(b)) for x, y in rows for a, b in zip(x, y, strict=True) if b != IGNORE
    )
    assert pairs == [(i, i + 1) for i in range(length - 1)]


def test_batches_of_pieces_flag_the_windows_where_streams_start_a_tune():
    tokenizer = tokenizer_for(TUNES, "abc")
    ids = tokenizer.encode("\n\n".join(GOOD * 4))
    batches = Batches(ids, 2, 16, seed=0, starts=piece_starts(tokenizer, ids))
    assert batches.shift(3) == 0  # windows stay aligned to pieces in every epoch
    first_input = {tokenizer.id_of("\n"), tokenizer.id_of("X:")}
    flagged = 0
    for index in range(batches.windows_in_epoch(0)):
        x, y, reset, _ = batches.window(0, index)
        assert reset is not None and reset.shape == (2,)
        for row in np.flatnonzero(reset.numpy()):
            assert int(x[row, 0]) in first_input
            flagged += 1
        # inside a window, padding only follows real targets
        assert not ((y[:, 1:] != IGNORE) & (y[:, :-1] == IGNORE)).any()
    assert flagged >= len(GOOD) * 4 - 2  # every tune but those cut off at stream starts


def test_sharded_batches_of_pieces_agree_on_the_scored_targets_of_every_window():
    tokenizer = tokenizer_for(TUNES, "abc")
    ids = tokenizer.encode("\n\n".join(GOOD * 4))
    starts = piece_starts(tokenizer, ids)
    whole = Batches(ids, 4, 16, seed=0, starts=starts)
    shards = [Batches(ids, 4, 16, seed=0, rank=r, world=2, starts=starts) for r in (0, 1)]
    for index in range(whole.windows_in_epoch(0)):
        window = whole.window(0, index)
        parts = [shard.window(0, index) for shard in shards]
        real = sum(int((part.targets != IGNORE).sum()) for part in parts)
        assert window.scored == parts[0].scored == parts[1].scored == real
    plain = Batches(ids, 4, 16, seed=0, rank=1, world=2)
    assert plain.window(0, 0).scored == 4 * 16  # without pieces every target of both processes


def test_streams_restart_from_zero_once_every_reset_period_at_staggered_windows():
    batches = Batches(np.arange(20_000), batch_size=8, seq_len=10, seed=0, reset_every=4)
    flags = np.stack([batches.window(0, k).reset.numpy() for k in range(12)])  # (windows, B)
    assert (flags.sum(axis=0) == 3).all()  # each stream: windows k, k + 4, k + 8
    assert len({int(np.argmax(flags[:, b])) for b in range(8)}) == 4  # phases spread out
    shards = [Batches(np.arange(20_000), 8, 10, 0, rank=r, world=2, reset_every=4) for r in (0, 1)]
    both = np.concatenate([s.window(0, 5).reset.numpy() for s in shards])
    assert (both == batches.window(0, 5).reset.numpy()).all()  # same streams as one process
    assert Batches(np.arange(20_000), 8, 10, 0).window(0, 0).reset is None  # 0: never
