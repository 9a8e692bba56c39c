"""The n-gram model mixed into a network's predictions (``chargen.model.ngram``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.errors import CheckpointError
from chargen.model import ngram
from chargen.model.ngram import NGram


def reference(tokens: list[int], vocab: int, order: int, history: list[int], target: int):
    """Interpolated Kneser-Ney spelled out, slowly, from its definition."""
    seen: dict[int, dict[tuple, int]] = {}
    for k in range(1, order + 1):
        grams = [tuple(tokens[i - k + 1 : i + 1]) for i in range(k - 1, len(tokens))]
        if k == order:
            seen[k] = {g: grams.count(g) for g in set(grams)}
        else:  # how many distinct tokens come before each k-gram
            longer = {tuple(tokens[i - k : i + 1]) for i in range(k, len(tokens))}
            seen[k] = {g: sum(1 for h in longer if h[1:] == g) for g in {h[1:] for h in longer}}
    p = 1.0 / vocab
    for k in range(1, order + 1):
        if len(history) < k - 1:
            break
        context = tuple(history[len(history) - k + 1 :]) if k > 1 else ()
        counts = seen[k]
        ones = sum(1 for c in counts.values() if c == 1)
        twos = sum(1 for c in counts.values() if c == 2)
        discount = min(max(ones / (ones + 2 * twos), 0.05), 0.95) if ones + twos else 0.5
        following = {g[-1]: c for g, c in counts.items() if g[:-1] == context}
        total = sum(following.values())
        if total == 0:
            continue
        backoff = discount * len(following) / total
        p = max(following.get(target, 0) - discount, 0) / total + backoff * p
    return p


texts = st.lists(st.integers(0, 3), min_size=1, max_size=50)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """A monkeypatch that hypothesis's repeated examples may share (undone at each use)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@settings(max_examples=60, deadline=None)
@given(tokens=texts, query=texts, order=st.integers(1, 4))
def test_probabilities_follow_the_definition(tokens, query, order):
    vocab = 5
    model = NGram.build(np.array(tokens), vocab, order)
    states = ngram.states_along(np.array([query]), order)[0]  # after each query token
    targets = np.array(query[1:] + [4])  # token 4 never occurs in training
    got = model.probability(states, targets)
    for i, target in enumerate(targets):
        want = reference(tokens, vocab, order, query[: i + 1], int(target))
        assert got[i] == pytest.approx(want, rel=1e-12)
    distribution = model.distribution(states)
    assert distribution.sum(axis=1) == pytest.approx(np.ones(len(query)))
    assert distribution[np.arange(len(query)), targets] == pytest.approx(got, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(0, 9), min_size=1, max_size=40), order=st.integers(1, 6))
def test_a_state_carried_token_by_token_is_the_state_along_the_text(ids, order):
    along = ngram.states_along(np.array([ids, ids[::-1]]), order)
    state = ngram.start(2, order)
    for t in range(len(ids)):
        state = ngram.advance(state, np.array([ids[t], ids[::-1][t]]))
        assert np.array_equal(state, along[:, t])
    # a window's states continue from the state the window before ended in
    half = len(ids) // 2
    first = ngram.states_along(np.array([ids[:half]]), order)
    before = first[:, -1] if half else None
    rest = ngram.states_along(np.array([ids[half:]]), order, before=before)
    assert np.array_equal(rest[0], along[0, half:])


def test_counts_after_the_start_only_where_the_context_was_read():
    """A context that reaches back before a text's start is padding: never counted, so the
    model backs off to what it has read."""
    model = NGram.build(np.array([1, 2, 1, 2, 1, 3]), 4, 3)
    fresh = ngram.start(1, 3)
    read_one = ngram.advance(fresh, np.array([1]))
    assert model.probability(read_one, np.array([2]))[0] == pytest.approx(
        reference([1, 2, 1, 2, 1, 3], 4, 3, [1], 2)
    )


def test_saved_counts_load_to_the_same_model(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, 5_000)  # tokens wider than a byte
    model = NGram.build(ids, 300, 5)
    model.save(tmp_path / "counts.npz")
    loaded = NGram.load(tmp_path / "counts.npz", 300, 5)
    states = ngram.states_along(ids[None, :400], 5)[0]
    assert np.array_equal(model.distribution(states), loaded.distribution(states))
    with pytest.raises(CheckpointError, match="counts of 300 tokens"):
        NGram.load(tmp_path / "counts.npz", 301, 5)


def test_damaged_or_missing_counts_are_one_clear_error(tmp_path):
    path = tmp_path / "counts.npz"
    with pytest.raises(CheckpointError, match="missing"):
        NGram.load(path, 5, 2)
    NGram.build(np.array([1, 2, 3, 1, 2]), 5, 2).save(path)
    data = dict(np.load(path))
    data["tokens1"] = data["tokens1"][:-1]  # an entry lost
    np.savez(path, **data)
    with pytest.raises(CheckpointError, match="do not fit together"):
        NGram.load(path, 5, 2)
    path.write_bytes(b"not an archive")
    with pytest.raises(CheckpointError, match="not a readable counts file"):
        NGram.load(path, 5, 2)


def test_only_the_first_tokens_are_counted(monkeypatch):
    monkeypatch.setattr(ngram, "MAX_TOKENS", 4)
    model = NGram.build(np.array([1, 1, 1, 1, 2, 2, 2]), 3, 1)
    assert model.probability(ngram.start(1, 1), np.array([2]))[0] < 1 / 3


@pytest.mark.parametrize("chunk", [ngram.CHUNK, 10])
def test_the_fit_scores_every_product_and_share_as_defined(chunk, monkeypatch):
    """fit_nats and target_nats against the mixture written out: weight * softmax(a * z + b *
    log q) + (1 - weight) * q, at the target; the same in chunks of two rows as in one."""
    monkeypatch.setattr(ngram, "CHUNK", chunk)
    rng = np.random.default_rng(0)
    model = NGram.build(rng.integers(0, 5, size=200), 5, 3)
    ids = rng.integers(0, 5, size=8)
    states, targets = ngram.states_along(ids[None, :-1], 3)[0], ids[1:]
    logits = torch.randn(7, 5, dtype=torch.float64)
    products, weights = ((1.0, 0.0), (0.7, 0.3), (0.5, 0.1)), np.array([0.5, 0.8, 1.0])
    got = model.fit_nats(logits, states, targets, products, weights)
    z, rows, counted = logits.numpy(), np.arange(7), model.distribution(states)
    for i, (a, b) in enumerate(products):
        scaled = np.exp(a * z + b * np.log(counted))
        network = scaled / scaled.sum(axis=1, keepdims=True)
        for j, w in enumerate(weights):
            mixed = w * network + (1 - w) * counted
            want = -np.log(mixed[rows, targets])
            assert got[i, j] == pytest.approx(want.sum(), rel=1e-5)
            each = model.target_nats(logits, states, targets, ngram.Mixing(w, a, b))
            assert each == pytest.approx(want, rel=1e-5)
    alone = -torch.log_softmax(logits, -1).numpy()[rows, targets].sum()
    assert got[0, -1] == pytest.approx(alone, rel=1e-5)  # (1, 0) at share 1: the network


def test_later_fits_refine_around_the_last():
    assert ngram.products_to_try((1.0, 0.0)) == tuple(
        sorted(
            set(ngram.PRODUCTS)
            | {(0.95, 0.0), (0.95, 0.05), (1.05, 0.0), (1.05, 0.05), (1.0, 0.05)}
        )
    )
    near = ngram.products_to_try((0.7, 0.2))
    assert {(0.65, 0.15), (0.75, 0.25), (0.7, 0.2)} <= set(near)
    assert set(ngram.PRODUCTS) <= set(near)
    edge = set(ngram.products_to_try((0.5, 0.5)))  # the network keeps its say
    assert (0.5, 0.5) in edge and not {(0.45, 0.5), (0.5, 0.55), (0.45, 0.55)} & edge


@settings(max_examples=30, deadline=None)
@given(
    tokens=texts,
    query=texts,
    order=st.integers(1, 5),
    weight=st.floats(0.5, 1.0),
    network=st.floats(0.5, 1.2),
    exponent=st.sampled_from([0.0, 0.1, 0.35]),
)
def test_the_compiled_kernel_and_numpy_agree(
    tokens, query, order, weight, network, exponent, monkeypatch_module
):
    if ngram._kernel() is None:
        pytest.skip("no C compiler: numpy alone")
    model = NGram.build(np.array(tokens), 5, order)
    states = ngram.states_along(np.array([query]), order)[0]
    assert np.allclose(model.distribution(states), model._distribution(states), rtol=1e-12)
    logits = torch.randn(len(query), 5)
    logits[:, 0] = -torch.inf  # <unk>, as the engine's logits have it
    before = ngram.as_tensor(ngram.start(len(query), order))
    read = torch.tensor(query)
    mixing = ngram.Mixing(weight, network, exponent)
    compiled_state = before.clone()
    compiled = model.mixed(logits.clone(), compiled_state, mixing, 0, read)
    monkeypatch_module.setattr(ngram, "_kernel", lambda: None)
    numpy_state = before.clone()
    in_numpy = model.mixed(logits.clone(), numpy_state, mixing, 0, read)
    monkeypatch_module.undo()
    assert torch.equal(compiled_state, numpy_state)
    assert torch.allclose(compiled, in_numpy, atol=1e-5)
    assert compiled[:, 0].eq(-torch.inf).all()
    assert torch.allclose(compiled.exp().sum(1), torch.ones(len(query)), atol=1e-5)


def test_compressed_counts_are_refused_before_they_are_read(tmp_path):
    """A hostile run folder's counts could unpack to far more memory than the file's size."""
    path = tmp_path / "counts.npz"
    model = NGram.build(np.array([1, 2, 3, 1, 2]), 5, 2)
    model.save(path)
    np.savez_compressed(path, **dict(np.load(path)))
    with pytest.raises(CheckpointError, match="compressed arrays"):
        NGram.load(path, 5, 2)
