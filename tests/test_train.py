import math
import time

import pytest
import torch

from chargen.config import CELLS, LEVELS, TrainConfig
from chargen.errors import TrainingDiverged, UsageError
from chargen.model.device import cpu_has_bf16
from chargen.model.rnn import RNNLanguageModel
from chargen.runs import store as checkpoint
from chargen.text.batches import Batches, Stream, piece_starts
from chargen.training.evaluate import evaluate
from chargen.training.trainer import Trainer
from chargen.training.workers import Workers
from tests.abc_fixtures import GOOD
from tests.conftest import VERSE, tiny_model, tiny_train
from tests.helpers import split_text, tokenizer_for


def make_trainer(
    text,
    level="char",
    cell="lstm",
    dropout=0.0,
    layers=None,
    workers=None,
    hidden=32,
    **train_changes,
):
    """A small trainer; with dropout, two layers unless ``layers`` says otherwise."""
    config = tiny_train(level=level, **train_changes)
    torch.manual_seed(config.seed)
    train_text, val_text = split_text(text, config.val_frac)
    tokenizer = tokenizer_for(train_text, level)
    layers = layers or (2 if dropout else 1)
    model = RNNLanguageModel(
        tiny_model(
            cell,
            vocab_size=tokenizer.vocab_size,
            dropout=dropout,
            num_layers=layers,
            hidden_size=hidden,
        )
    )
    ids = tokenizer.encode(train_text)
    starts = piece_starts(tokenizer, ids)  # as chargen.runs.session does: ABC tunes are pieces
    batches = Batches(
        ids,
        config.batch_size,
        config.seq_len,
        config.seed,
        starts=starts,
        reset_every=config.reset_every,
    )
    val = Stream.of(tokenizer, val_text)
    return Trainer(model, batches, val, config, torch.device("cpu"), workers=workers)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_and_level_overfits_a_tiny_corpus(cell, level):
    trainer = make_trainer(VERSE * 40, level, cell, max_steps=400, eval_every=400, lr=2e-2)
    first = trainer.train_step()
    state = trainer.run()
    # The verse repeats exactly, so a model that learned it predicts almost every token.
    assert first > 2.0
    assert state.loss < 0.5, f"{cell}/{level} training loss stayed at {state.loss:.3f}"
    assert state.best_val_loss < 0.5


TUNES = "\n\n".join(GOOD * 6) + "\n"


def states_and_resets(trainer, steps):
    """Train ``steps`` windows of the first epoch; for each, the h state the model was given and
    the window's reset flags."""
    seen = []
    forward = trainer.model.forward

    def spy(ids, hidden=None, generator=None):
        seen.append(hidden[0].clone())
        return forward(ids, hidden, generator)

    trainer.model.forward = spy
    for _ in range(steps):
        trainer.train_step()
    return seen, [trainer.batches.window(0, k).reset for k in range(steps)]


def assert_zero_exactly_where_reset(seen, resets):
    for h, reset in zip(seen[1:], resets[1:], strict=True):  # the first window starts at zero
        per_stream = h.abs().sum(dim=(0, 2))  # (B,)
        assert torch.all(per_stream[reset] == 0)  # restarted: the zero state
        assert torch.all(per_stream[~reset] > 0)  # otherwise the state carries on


def test_abc_training_starts_every_tune_from_a_zero_state():
    trainer = make_trainer(TUNES, "abc", max_steps=None)
    seen, resets = states_and_resets(trainer, trainer.batches.windows_in_epoch(0))
    assert sum(int(r.sum()) for r in resets) >= 10  # tunes start in many windows
    assert_zero_exactly_where_reset(seen, resets)


def test_plain_text_streams_restart_from_a_zero_state_every_reset_period():
    trainer = make_trainer(VERSE * 40, max_steps=None, reset_every=3)
    seen, resets = states_and_resets(trainer, 7)
    assert all(int(r.sum()) > 0 for r in resets[1:])  # every window restarts some stream
    assert_zero_exactly_where_reset(seen, resets)


def test_abc_validation_scores_each_tune_from_a_fresh_state():
    trainer = make_trainer(TUNES, "abc", max_steps=20, val_frac=0.3)
    trainer.run()
    tokenizer_ids = trainer.val.ids
    starts = [*trainer.val.starts, len(tokenizer_ids) - 1]
    whole = evaluate(trainer.model, trainer.val, torch.device("cpu"))
    nats = tokens = 0
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        alone = Stream(ids=tokenizer_ids[a : b + 1], chars=0, starts=None)
        result = evaluate(trainer.model, alone, torch.device("cpu"))
        nats += result.nats_per_token * result.tokens
        tokens += result.tokens
    assert len(starts) >= 3 and whole.tokens == tokens == len(tokenizer_ids) - 1
    assert whole.nats_per_token == pytest.approx(nats / tokens, rel=1e-5)


def test_learning_rate_warms_up_then_decays_to_its_floor():
    trainer = make_trainer(VERSE * 10, max_steps=100, warmup_steps=10, lr=1e-2, min_lr_frac=0.1)
    assert trainer.learning_rate() == pytest.approx(1e-3)
    trainer.state.step = 10
    peak = trainer.learning_rate()
    trainer.state.step = 100
    assert peak == pytest.approx(1e-2, rel=0.05)
    assert trainer.learning_rate() == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("schedule", "progress", "left_of_the_decay"),
    [
        ("wsd", 0.3, 1.0),  # before the last 60%: the peak
        ("wsd", 0.7, 0.5),  # half-way down the straight line
        ("wsd", 1.0, 0.0),
        ("cosine", 0.5, 0.5),
        ("cosine", 0.25, 0.5 * (1 + math.cos(math.pi / 4))),
    ],
)
def test_learning_rate_schedules_after_the_warm_up(schedule, progress, left_of_the_decay):
    trainer = make_trainer(
        VERSE * 10, max_steps=100, warmup_steps=5, lr=1e-2, min_lr_frac=0.1, schedule=schedule
    )
    trainer.state.step = round(100 * progress)
    assert trainer.learning_rate() == pytest.approx(1e-3 + 9e-3 * left_of_the_decay)


def test_adamw_averages_with_the_configured_betas():
    trainer = make_trainer(VERSE * 10, max_steps=1, beta1=0.5, beta2=0.75)
    trainer.train_step()
    for parameter in trainer.params:
        moments = trainer.optimizer.state[parameter]
        assert torch.allclose(moments["exp_avg"], 0.5 * parameter.grad)
        assert torch.allclose(moments["exp_avg_sq"], 0.25 * parameter.grad**2)


@pytest.mark.parametrize("field", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_betas_outside_zero_to_one_are_refused(field, value):
    with pytest.raises(UsageError, match=f"{field} must be in"):
        TrainConfig(**{field: value}).validate()


def test_epochs_limit_counts_passes_over_the_training_tokens():
    trainer = make_trainer(VERSE * 10, max_steps=None, epochs=2)
    state = trainer.run()
    assert state.stop_reason == "epochs"
    assert state.step == round(2 * trainer.batches.steps_per_epoch)


def test_time_limit_stops_training():
    trainer = make_trainer(VERSE * 10, max_steps=None, time_limit=0.5)
    state = trainer.run()
    assert state.stop_reason == "time" and state.elapsed >= 0.5


def test_an_evaluation_that_would_end_past_the_time_limit_is_left_to_the_final_one():
    trainer = make_trainer(VERSE * 10, max_steps=None, time_limit=0.5, eval_every=1)
    seen = []
    trainer.eval_seconds = 10.0  # as if the last pass had taken longer than the run's time
    state = trainer.run(on_eval=lambda t, score: seen.append(t.state.step))
    assert state.stop_reason == "time" and seen == [state.step] and state.step > 1
    quick = make_trainer(VERSE * 10, max_steps=None, time_limit=0.5, eval_every=1)
    seen.clear()
    state = quick.run(on_eval=lambda t, score: seen.append(t.state.step))
    assert len(seen) > 1 and seen[-1] == state.step  # short passes: each step evaluated


def test_step_time_leaves_out_validation(monkeypatch):
    trainer = make_trainer(VERSE * 10, max_steps=4, eval_every=1)
    slow = Trainer.evaluate

    def slow_evaluate(self):
        time.sleep(0.2)
        return slow(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    state = trainer.run()
    # the clock runs on through the evaluations after steps 1 to 3; the step time does not
    assert 0 < trainer.step_seconds <= state.elapsed - 0.2 * 3


def test_patience_stops_when_validation_stops_improving():
    trainer = make_trainer(VERSE * 10, max_steps=2000, eval_every=1, patience=2, lr=0.5)
    state = trainer.run()
    assert state.stop_reason == "patience"
    assert state.bad_evals == 2 and state.step < 2000


def test_should_stop_interrupts_between_steps():
    trainer = make_trainer(VERSE * 10, max_steps=100)
    state = trainer.run(should_stop=lambda: trainer.state.step >= 7)
    assert (state.stop_reason, state.step) == ("interrupted", 7)


def test_validation_loss_is_reported_in_nats_and_bits_per_char():
    trainer = make_trainer(VERSE * 10, max_steps=10, eval_every=10)
    results = []
    trainer.run(on_eval=lambda t, r: results.append(r))
    (result,) = results
    # char level: one token is one character
    assert result.bits_per_char == pytest.approx(result.nats_per_token / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(result.nats_per_token))


def restored_from_a_save(interrupted, text, folder, make):
    """A new trainer from ``make()``, restored from a checkpoint of ``interrupted``."""
    run = checkpoint.create_run(
        folder,
        "r",
        tokenizer_for(split_text(text, 0.1)[0]),
        interrupted.model.config,
        interrupted.config,
        "verse",
        0,
    )
    checkpoint.save_last(run, interrupted, "interrupted")
    torch.manual_seed(999)  # resuming must not depend on the RNG state of the new process
    resumed = make()
    checkpoint.restore_trainer(checkpoint.open_run(run.path), resumed)
    return resumed


@pytest.mark.parametrize("cell", CELLS)
def test_interrupted_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(cell, tmp_path):
    text = VERSE * 20

    def trainer():
        return make_trainer(text, cell=cell, dropout=0.3, max_steps=40, batch_size=4)

    # Dropout draws from the global RNG: resuming must restore it too.
    straight = trainer()
    straight.run()

    first = trainer()
    first.run(should_stop=lambda: first.state.step >= 17)
    resumed = restored_from_a_save(first, text, tmp_path, trainer)
    assert resumed.state.step == 17
    resumed.run()
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_diverging_run_stops_with_advice_before_the_optimizer_touches_the_weights():
    trainer = make_trainer(VERSE * 10, max_steps=50)
    trainer.run(should_stop=lambda: trainer.state.step >= 3)
    with torch.no_grad():
        trainer.model.head.bias[0] = float("nan")  # every later loss is NaN
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="Lower the learning rate"):
        trainer.run()
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    assert trainer.state.step == 3


def test_streams_split_over_worker_threads_train_like_one_thread():
    text = VERSE * 20
    with Workers(1) as one, Workers(2, threads_each=1) as two, Workers(3, threads_each=1) as three:
        runs = [
            make_trainer(text, max_steps=25, batch_size=8, workers=w) for w in (one, two, three)
        ]
        losses = [[trainer.train_step() for _ in range(25)] for trainer in runs]
        scores = [trainer.evaluate().nats_per_token for trainer in runs]
    # The same sums, added up in another order: equal to rounding.
    for other in (1, 2):
        assert losses[other] == pytest.approx(losses[0], rel=1e-4)
        assert scores[other] == pytest.approx(scores[0], rel=1e-4)
        for a, b in zip(runs[0].model.parameters(), runs[other].model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert losses[0][-1] < losses[0][0] - 0.5  # it learned something


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_run_on_worker_threads_is_reproducible_and_resumes_exactly(dropout, tmp_path):
    """Dropout on the embedding and output draws its masks per step and group of streams, so
    a one-layer model with dropout trains on worker threads too."""
    text = VERSE * 20

    def trainer(workers, dropout=dropout):
        return make_trainer(
            text, dropout=dropout, layers=1, max_steps=30, batch_size=8, workers=workers
        )

    with Workers(2, threads_each=1) as workers:
        straight, again = trainer(workers), trainer(workers)
        straight.run()
        torch.manual_seed(4321)  # the masks must not come from the global generator
        again.run()
        first = trainer(workers)
        first.run(should_stop=lambda: first.state.step >= 13)
        resumed = restored_from_a_save(first, text, tmp_path, lambda: trainer(workers))
        resumed.run()
        if dropout:
            undropped = trainer(workers, dropout=0.0)
            undropped.run()
    for other in (again, resumed):
        for a, b in zip(straight.model.parameters(), other.model.parameters(), strict=True):
            assert torch.equal(a, b)
    if dropout:
        assert not torch.equal(straight.model.head.weight, undropped.model.head.weight)


def test_dropout_between_layers_refuses_worker_threads():
    # torch's fused cell draws those masks from the global generator, in thread order
    with Workers(2, threads_each=1) as workers, pytest.raises(ValueError, match="dropout"):
        make_trainer(VERSE * 5, dropout=0.2, layers=2, workers=workers)
    with Workers(2, threads_each=1) as workers:
        trainer = make_trainer(VERSE * 5, dropout=0.2, layers=1, workers=workers)
        assert trainer.workers.count == 2 and not trainer.model.draws_from_global_random


def test_dropout_masks_on_worker_threads_differ_by_step_and_group():
    with Workers(2, threads_each=1) as workers:
        trainer = make_trainer(VERSE * 5, dropout=0.2, layers=1, workers=workers)

        def draws(rows):
            return torch.rand(8, generator=trainer._generator(rows))

        first, second = draws(slice(0, 4)), draws(slice(4, 8))
        assert torch.equal(first, draws(slice(0, 4)))  # the same step and group: the same masks
        assert not torch.equal(first, second)
        trainer.state.step += 1
        assert not torch.equal(first, draws(slice(0, 4)))


def test_bf16_steps_on_worker_threads_match_one_thread():
    if not cpu_has_bf16():  # oneDNN has no bf16 LSTM for AVX2 alone: --precision bf16 refuses
        pytest.skip("no bf16 LSTM on this CPU")
    text = VERSE * 20
    with Workers(1) as one, Workers(2, threads_each=1) as two:
        runs = [make_trainer(text, batch_size=8, workers=w) for w in (one, one, two)]
        runs[1].bf16 = runs[2].bf16 = True  # autocast must reach the worker threads too
        fp32, bf16_one, bf16_two = ([t.train_step() for _ in range(10)] for t in runs)
    assert bf16_two == pytest.approx(bf16_one, rel=1e-4)
    assert bf16_two != pytest.approx(fp32, rel=1e-4)


@pytest.mark.parametrize("window", [32, 64])
def test_the_thread_count_of_a_lone_worker_does_not_change_bf16_weights(window):
    """The premise of ThreadTuner, which may change the count while a seeded run trains: the
    threads share out each product, they do not change its arithmetic. The default window of
    64 makes sums over 1,024 tokens a step, where float32's differ by thread count."""
    if not cpu_has_bf16():
        pytest.skip("training runs in float32 here, without a tuner")
    before = torch.get_num_threads()
    weights, losses = [], []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            trainer = make_trainer(
                VERSE * 40, hidden=256, batch_size=16, seq_len=window, threads=threads, max_steps=4
            )
            trainer.bf16 = True
            assert trainer.tuner is None  # --threads fixes the count
            losses.append([trainer.train_step() for _ in range(4)])
            weights.append([p.detach().clone() for p in trainer.model.parameters()])
    finally:
        torch.set_num_threads(before)
    assert losses[0][-1] < losses[0][0]
    for other in weights[1:]:
        assert all(torch.equal(a, b) for a, b in zip(weights[0], other, strict=True))


def test_float32_training_tunes_its_thread_count_only_where_the_count_keeps_the_sums(monkeypatch):
    """In float32 the count may change MKL's sums (ThreadTuner.for_workers): the tuner runs
    only when a probe step gives the same bits at every count."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(Trainer, "_probe", lambda self: [torch.tensor(1.0)])
        trainer = make_trainer(VERSE * 10, threads=None)  # tiny_train: float32
        assert trainer.workers.count == 1 and trainer.tuner.ladder == [2, 1]
        trainer.close()
        by_count = lambda self: [torch.tensor(1.0 + torch.get_num_threads() * 1e-7)]  # noqa: E731
        monkeypatch.setattr(Trainer, "_probe", by_count)
        trainer = make_trainer(VERSE * 10, threads=None)
        assert trainer.tuner is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_probe_leaves_the_run_as_it_was():
    torch.manual_seed(5)
    trainer = make_trainer(VERSE * 10, dropout=0.3, layers=2)  # dropout from the global generator
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    random_state, hidden = torch.get_rng_state(), [h.clone() for h in trainer.hidden]
    first, second = trainer._probe(), trainer._probe()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert len(first) == 2 + len(weights) and first[1] > 0  # loss, norm, every gradient
    assert torch.equal(torch.get_rng_state(), random_state)
    assert all(torch.equal(a, b) for a, b in zip(trainer.hidden, hidden, strict=True))
    assert all(torch.equal(a, p) for a, p in zip(weights, trainer.model.parameters(), strict=True))
    assert trainer.state.step == 0 and all(p.grad is None for p in trainer.model.parameters())


def test_where_the_probe_finds_the_same_sums_whole_float32_steps_are_the_same():
    """The probe's promise on this CPU: if one step's sums agree at one and two threads, so do
    the weights after several steps of a seeded run (gradients, clipping, AdamW)."""
    before = torch.get_num_threads()
    weights, same = [], True
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            trainer = make_trainer(
                VERSE * 40, hidden=128, batch_size=16, seq_len=64, threads=threads, clip=0.05
            )
            probes = [trainer._probe()]
            torch.set_num_threads(3 - threads)
            probes.append(trainer._probe())
            torch.set_num_threads(threads)
            same = same and all(torch.equal(a, b) for a, b in zip(*probes, strict=True))
            for _ in range(4):
                trainer.train_step()
            weights.append([p.detach().clone() for p in trainer.model.parameters()])
    finally:
        torch.set_num_threads(before)
    if not same:
        pytest.skip("float32 sums differ by thread count on this CPU: no tuner in float32 here")
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
