"""The compiled LSTM step (chargen/model/compiled.py), plain and layer-normalised: torch's step
within bf16's rounding, the same numbers for a row whatever runs beside it and at any thread
count, and torch's step wherever the kernel cannot run."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.generation.engine import MANY_ROWS, Engine, Sequence
from chargen.generation.sampling import sequence_key
from chargen.model import compiled, native
from chargen.model.compiled import CompiledStepper
from chargen.model.rnn import LSTMS, RNNLanguageModel
from chargen.model.stepper import Stepper
from tests.conftest import tiny_model

VOCAB = 40


@pytest.fixture(scope="module")
def kernel():
    if compiled.kernel() is None:
        pytest.skip("the compiled step needs an x86 CPU with AVX2 and FMA and a C compiler")


def lstm(layers=1, hidden=32, seed=0, vocab=VOCAB, cell="lstm"):
    torch.manual_seed(seed)
    model = RNNLanguageModel(
        tiny_model(cell, vocab_size=vocab, num_layers=layers, hidden_size=hidden)
    )
    with torch.no_grad():  # gates far from zero, where rounding shows
        for parameter in model.parameters():
            parameter.mul_(3)
    return model.eval()


def state(model, rows, seed=1):
    generator = torch.Generator().manual_seed(seed)
    shape = (model.config.num_layers, rows, model.config.hidden_size)
    return tuple(torch.randn(shape, generator=generator) for _ in range(2))


def rows_of(hidden, index):
    return tuple(part[:, index] for part in hidden)


@pytest.mark.parametrize(
    ("layers", "hidden", "vocab"),
    [(1, 32, 40), (2, 32, 40), (1, 8, 70), (2, 16, 130)],  # vocab 70, 130: 64 logits at once
)
@pytest.mark.parametrize("cell", LSTMS)
def test_the_compiled_step_matches_torchs_within_bf16_rounding(kernel, layers, hidden, vocab, cell):
    model = lstm(layers, hidden, vocab=vocab, cell=cell)
    ids = torch.tensor([3, 0, 17, vocab - 1, 5])
    hidden = state(model, len(ids))
    with torch.inference_mode():
        want, (want_h, want_c) = Stepper(model, never=(0,))(ids, hidden)
        got, (got_h, got_c) = CompiledStepper(model, never=(0,))(ids, hidden)
    assert got.shape == want.shape == (5, vocab)
    assert torch.isneginf(got[:, 0]).all()  # <unk> is never written
    scale = want[:, 1:].abs().max()
    error = (got[:, 1:] - want[:, 1:]).abs().max() / scale
    assert 0 < error < 2e-2  # bf16 weights: close, and not the float32 product itself
    # a normalisation over 8 or 16 units (gains of 3) magnifies bf16's rounding of the sums
    torch.testing.assert_close(got_h, want_h, atol=2e-2 if cell == "lstm" else 4e-2, rtol=0)
    torch.testing.assert_close(got_c, want_c, atol=5e-2, rtol=2e-2)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(2, 9),
    layers=st.integers(1, 2),
    seed=st.integers(0, 2**16),
    cell=st.sampled_from(LSTMS),
)
def test_a_row_gives_the_same_bits_alone_as_beside_others(kernel, rows, layers, seed, cell):
    model = lstm(layers, hidden=24, cell=cell)
    stepper = CompiledStepper(model)
    ids = torch.randint(0, VOCAB, (rows,), generator=torch.Generator().manual_seed(seed))
    hidden = state(model, rows, seed)
    with torch.inference_mode():
        together, (h, c) = stepper(ids, hidden)
        for row in range(rows):
            alone, (h1, c1) = stepper(ids[row : row + 1], rows_of(hidden, [row]))
            assert torch.equal(alone[0], together[row])
            assert torch.equal(h1[:, 0], h[:, row]) and torch.equal(c1[:, 0], c[:, row])


@pytest.mark.parametrize("cell", LSTMS)
def test_bad_ids_and_states_are_errors_and_nan_stays_nan(kernel, cell):
    model = lstm(2, cell=cell)
    stepper = CompiledStepper(model)
    hidden = state(model, 2)
    with torch.inference_mode():
        for ids in ([0, VOCAB], [-1, 3]):
            with pytest.raises(IndexError, match="token id"):
                stepper(torch.tensor(ids), hidden)
        with pytest.raises(ValueError, match="ids for a state of 2 rows"):
            stepper(torch.tensor([1]), hidden)
        with pytest.raises(ValueError, match="does not fit"):
            stepper(torch.tensor([1, 2]), rows_of(state(lstm(2, 16, cell=cell), 2), [0, 1]))
        broken = (hidden[0].clone(), hidden[1])
        broken[0][0, 1, 3] = torch.nan
        logits, (h, _) = stepper(torch.tensor([1, 2]), broken)
        assert torch.isnan(logits[1]).all() and not torch.isnan(logits[0]).any()


@pytest.mark.parametrize("hidden", [8, 64])  # 8: one block, so a thread with none
@pytest.mark.parametrize("cell", LSTMS)
def test_the_thread_count_does_not_change_a_bit(kernel, hidden, cell):
    model = lstm(2, hidden=hidden, vocab=70, cell=cell)
    ids = torch.tensor([1, 2, 3])
    hidden = state(model, 3)
    stepper = CompiledStepper(model)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with torch.inference_mode():
                logits, (h, c) = stepper(ids, hidden)
            results.append((logits, h, c))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_the_engine_samples_an_lstm_on_the_kernel_and_the_same_text_beside_others(kernel):
    model = lstm()
    engine = Engine(model)
    assert isinstance(engine._stepper(1), CompiledStepper)
    assert isinstance(engine._stepper(MANY_ROWS - 1), CompiledStepper)
    many = engine._stepper(MANY_ROWS)  # torch's bf16 products where the CPU has them
    assert isinstance(many, Stepper if engine._bf16 else CompiledStepper)

    def run(sequences):
        engine = Engine(model)
        engine.add(sequences)
        engine.run()
        return [s.ids for s in sequences]

    def sequence(seed):
        return Sequence([1, 2, 3], 40, key=sequence_key(seed))

    alone = run([sequence(1)])[0]
    crowd = run([sequence(2), sequence(1), sequence(3)])
    assert crowd[1] == alone and crowd[0] != alone
    if not engine._bf16:  # one stepper at every row count
        assert run([sequence(seed) for seed in range(MANY_ROWS + 4)])[1] == alone


def test_torchs_step_runs_where_the_kernel_cannot(monkeypatch):
    gru = RNNLanguageModel(tiny_model("gru", vocab_size=VOCAB))
    assert not compiled.available(gru, torch.device("cpu"))
    odd = RNNLanguageModel(tiny_model("lstm", vocab_size=VOCAB, hidden_size=20))
    assert not compiled.available(odd, torch.device("cpu"))  # not a multiple of 8
    assert isinstance(Engine(odd)._stepper(1), Stepper)
    monkeypatch.setenv(native.ENV_SWITCH, "0")  # switched off
    compiled.kernel.cache_clear()
    try:
        assert not compiled.available(lstm(), torch.device("cpu"))
        assert isinstance(Engine(lstm())._stepper(1), Stepper)
    finally:
        compiled.kernel.cache_clear()


def test_a_missing_compiler_leaves_no_kernel_and_no_half_built_file(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("CHARGEN_CACHE", str(tmp_path / "cache"))
    compiled.kernel.cache_clear()
    try:
        assert compiled.kernel() is None
        assert not list((tmp_path / "cache").rglob("*.so*"))
    finally:
        compiled.kernel.cache_clear()


def test_a_failed_build_is_remembered_and_not_tried_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARGEN_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "kernel.c"
    source.write_text("int answer(void) { return 42; }\n")
    builds = []
    real = native._build

    def counted(*args):
        builds.append(args)
        return real(*args)

    monkeypatch.setattr(native, "_build", counted)
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    assert native.load(source, ("-shared", "-fPIC"), ()) is None
    assert native.load(source, ("-shared", "-fPIC"), ()) is None
    assert len(builds) == 1
    assert len(list((tmp_path / "cache" / "kernels").glob("kernel-*.failed"))) == 1
    if shutil.which("cc") is None:
        return
    monkeypatch.setenv("CC", "cc")  # another compiler is tried afresh
    lib = native.load(source, ("-shared", "-fPIC"), ())
    assert lib is not None and lib.answer() == 42
    assert len(builds) == 2
