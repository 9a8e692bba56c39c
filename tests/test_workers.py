import os
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chargen.training.workers import ThreadTuner, Workers, cores_to_pin, plan, split_rows

pinning = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs per-thread CPU affinity and two CPUs",
)


@given(rows=st.integers(0, 300), parts=st.integers(1, 16))
def test_rows_split_into_contiguous_near_equal_groups_in_order(rows, parts):
    groups = split_rows(rows, parts)
    assert len(groups) == max(1, min(parts, rows))
    covered = [row for group in groups for row in range(rows)[group]]
    assert covered == list(range(rows))
    sizes = [group.stop - group.start for group in groups]
    assert max(sizes) - min(sizes) <= 1
    assert rows == 0 or min(sizes) >= 1


def test_one_worker_runs_in_the_calling_thread():
    import threading

    caller = threading.get_ident()
    with Workers(1) as workers:
        assert workers.map(lambda rows: threading.get_ident(), 10) == [caller]


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_each_worker_thread_has_its_own_thread_count_and_close_gives_it_back(four_threads):
    with Workers(2, threads_each=1) as workers:
        seen = workers.map(lambda rows: (torch.get_num_threads(), rows), 10)
        assert seen == [(1, slice(0, 5)), (1, slice(5, 10))]
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4


def test_too_few_rows_for_two_groups_stay_in_one():
    with Workers(2, threads_each=1, min_rows=16) as workers:
        assert workers.map(lambda rows: rows, 20) == [slice(0, 20)]
        assert workers.map(lambda rows: rows, 40) == [slice(0, 20), slice(20, 40)]


@pytest.mark.parametrize(
    ("device", "rows", "global_random", "count"),
    [
        ("cpu", 64, False, 4),  # a thread each
        ("cpu", 32, False, 2),  # at least 16 streams a worker
        ("cpu", 8, False, 1),
        ("cpu", 64, True, 1),  # draws from the global generator must come in a fixed order
        ("meta", 64, False, 1),  # not a CPU: the device runs the streams in parallel itself
    ],
)
def test_plan_gives_a_cpu_a_worker_per_thread_for_enough_streams(
    four_threads, device, rows, global_random, count
):
    with plan(torch.device(device), rows, global_random) as workers:
        assert workers.count == count
        if count > 1:
            assert workers.map(lambda rows: torch.get_num_threads(), rows) == [4 // count] * count


@pinning
def test_workers_that_take_every_cpu_stay_one_on_each():
    allowed = sorted(os.sched_getaffinity(0))
    everyone = threading.Barrier(len(allowed), timeout=60)

    def where(rows):
        everyone.wait()  # one group per thread
        return os.sched_getaffinity(0)

    with Workers(len(allowed), threads_each=1) as workers:
        seen = workers.map(where, len(allowed))
    assert sorted(cpu for cpus in seen for cpu in cpus) == allowed
    assert sorted(os.sched_getaffinity(0)) == allowed  # the calling thread stays free


@pinning
def test_fewer_workers_than_cpus_or_several_threads_each_pin_nothing():
    count = len(os.sched_getaffinity(0))
    assert cores_to_pin(count, 1) == sorted(os.sched_getaffinity(0))
    assert cores_to_pin(count - 1, 1) is None
    assert cores_to_pin(count, 2) is None
    with Workers(count - 1 or 1, threads_each=1) as workers:
        seen = workers.map(lambda rows: os.sched_getaffinity(0), count - 1)
    assert all(cpus == os.sched_getaffinity(0) for cpus in seen)


@pinning
def test_a_system_that_refuses_pinning_leaves_workers_unpinned(monkeypatch):
    def refuse(pid, cpus):
        raise PermissionError("not here")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    allowed = os.sched_getaffinity(0)
    with Workers(len(allowed), threads_each=1) as workers:
        seen = workers.map(lambda rows: os.sched_getaffinity(0), len(allowed))
    assert all(cpus == allowed for cpus in seen)


def steps(tuner, seconds, count):
    for _ in range(count):
        tuner.record(seconds)


def test_the_tuner_keeps_a_count_that_runs_clearly_faster(four_threads):
    tuner = ThreadTuner(4)
    assert tuner.ladder == [4, 2, 1] and torch.get_num_threads() == 4
    steps(tuner, 1.0, ThreadTuner.FIRST)
    assert torch.get_num_threads() == 2  # a trial of the next count down
    steps(tuner, 0.5, ThreadTuner.TRIAL)
    assert (tuner.threads, tuner.changes, torch.get_num_threads()) == (2, 1, 2)
    tuner.close()
    assert torch.get_num_threads() == 4


def test_a_losing_trial_goes_back_and_the_next_comes_twice_as_late(four_threads):
    tuner = ThreadTuner(2)
    steps(tuner, 1.0, ThreadTuner.FIRST)
    steps(tuner, 0.95, ThreadTuner.TRIAL)  # faster, but within the margin: noise
    assert (tuner.threads, tuner.changes, torch.get_num_threads()) == (2, 0, 2)
    steps(tuner, 1.0, 2 * ThreadTuner.FIRST)  # one step after a switch is not timed
    assert torch.get_num_threads() == 2
    tuner.record(1.0)
    assert torch.get_num_threads() == 1


def test_a_slowdown_brings_the_next_trial_forward(four_threads):
    tuner = ThreadTuner(2)
    steps(tuner, 1.0, ThreadTuner.FIRST)
    steps(tuner, 1.0, ThreadTuner.TRIAL)  # lost: the next trial is 50 steps away
    steps(tuner, 1.0, 6)
    assert torch.get_num_threads() == 2
    steps(tuner, 2.0, 3)  # another process took a core: the median of five moves at three
    assert torch.get_num_threads() == 1
    steps(tuner, 1.2, ThreadTuner.TRIAL)
    assert tuner.threads == 1


def test_the_tuner_tries_both_neighbours_in_the_middle_of_the_ladder(four_threads):
    tuner = ThreadTuner(4)
    steps(tuner, 1.0, ThreadTuner.FIRST)
    steps(tuner, 0.5, ThreadTuner.TRIAL)  # 2 threads kept
    tried = set()
    for _ in range(4 * ThreadTuner.FIRST):
        tuner.record(0.5)
        tried.add(torch.get_num_threads())
    assert tried == {1, 2, 4}
    assert tuner.threads == 2


@pytest.mark.parametrize(
    ("device", "workers", "threads", "bf16", "tuned"),
    [
        ("cpu", 1, 2, True, True),
        ("cpu", 1, 1, True, False),
        ("cpu", 2, 2, True, False),
        ("meta", 1, 2, True, False),
        ("cpu", 1, 2, False, False),  # float32's sums change with the count
    ],
)
def test_only_a_lone_bf16_cpu_worker_with_threads_to_spare_is_tuned(
    device, workers, threads, bf16, tuned
):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with Workers(workers, threads_each=1) as group:
            tuner = ThreadTuner.for_workers(group, torch.device(device), bf16)
        assert (tuner is not None) == tuned
    finally:
        torch.set_num_threads(before)


def test_work_inside_all_threads_runs_at_the_ladders_first_count(four_threads):
    tuner = ThreadTuner(4)
    steps(tuner, 1.0, ThreadTuner.FIRST)
    steps(tuner, 0.5, ThreadTuner.TRIAL)  # two threads won
    assert tuner.threads == 2
    with tuner.all_threads():
        assert torch.get_num_threads() == 4  # evaluation: one count always
    assert torch.get_num_threads() == 2
    tuner.close()
