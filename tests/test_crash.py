"""Real processes, real kills: what a crash leaves behind must load, and resume must work."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from chargen.runs import store as checkpoint
from tests.cli_helpers import run

TRAIN = [
    "--hidden",
    "48",
    "--batch-size",
    "4",
    "--window",
    "16",
    "--eval-every",
    "1",
    "--precision",
    "fp32",
    "--quiet",
]


def start(corpus, root, *extra):
    env = dict(os.environ, CHARGEN_CHECKPOINTS=str(root))
    return subprocess.Popen(
        [sys.executable, "-m", "chargen", "train", str(corpus), "--name", "crash", *TRAIN, *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(root, steps, timeout=60):
    """Until the run has saved ``steps`` steps (it saves every step with --eval-every 1)."""
    run_json = root / "crash" / "run.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(run_json.read_text())["state"]["step"] >= steps:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {steps}")


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(corpus, tmp_path):
    root = tmp_path / "checkpoints"
    rng = random.Random(1234)
    process = start(corpus, root, "--time", "120s")
    reached = 0
    for _ in range(4):
        wait_for_steps(root, reached + 3)
        time.sleep(rng.uniform(0.0, 0.3))  # lands anywhere: in a step, an evaluation or a write
        process.send_signal(signal.SIGKILL)
        process.wait()
        found = checkpoint.open_run(root / "crash")
        checkpoint.load_model(found, "best")
        checkpoint.load_model(found, "last")
        reached = found.info["state"]["step"]
        process = start(corpus, root, "--resume", "--time", "120s")
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run(
        "train",
        "--name",
        "crash",
        "--resume",
        "--max-steps",
        "1000",
        "--time",
        "120s",
        "--json",
        "-q",
    )
    # The resumed run may itself have been killed mid-step; it restarts from its last save.
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] >= reached


def test_a_second_training_of_the_same_run_is_refused(corpus, tmp_path):
    root = tmp_path / "checkpoints"
    first = start(corpus, root, "--time", "60s")
    try:
        wait_for_steps(root, 1)
        second = start(corpus, root, "--resume", "--time", "60s")
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 1
        assert "being trained by another process" in stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0


@contextlib.contextmanager
def tmpfs(path, options):
    """A tmpfs mounted at ``path`` for the block; skips the test where mounting is refused."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def train_into(root, corpus, name, *extra):
    env = dict(os.environ, CHARGEN_CHECKPOINTS=str(root))
    return subprocess.run(
        [sys.executable, "-m", "chargen", "train", str(corpus), "--name", name, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs mount(8)")
def test_a_full_disk_is_a_clear_error_and_keeps_the_last_checkpoint(corpus, tmp_path):
    with tmpfs(tmp_path / "small", "size=600k") as small:
        result = train_into(
            small,
            corpus,
            "full",
            "--hidden",
            "128",
            "--batch-size",
            "4",
            "--window",
            "16",
            "--eval-every",
            "5",
            "--max-steps",
            "200",
            "--quiet",
            "--precision",
            "fp32",
        )
        assert result.returncode == 1
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        found = checkpoint.open_run(small / "full")
        checkpoint.load_model(found, "best")
        assert not [p for p in found.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs mount(8)")
def test_an_unwritable_checkpoint_directory_is_a_one_line_error(corpus, tmp_path):
    with tmpfs(tmp_path / "frozen", "ro,size=1m") as frozen:
        result = train_into(frozen, corpus, "ro", *TRAIN, "--max-steps", "3")
        assert result.returncode == 1
        assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_sampling_while_a_run_trains_reads_complete_checkpoints(corpus, tmp_path):
    root = tmp_path / "checkpoints"
    process = start(corpus, root, "--time", "60s")
    try:
        wait_for_steps(root, 1)
        for seed in range(15):  # every evaluation rewrites best and last under our feet
            result = run(
                "--checkpoint-dir",
                root,
                "sample",
                "crash",
                "--weights",
                ("best", "last")[seed % 2],
                "--length",
                "20",
                "--seed",
                seed,
            )
            assert result.exit_code == 0, result.output
            assert len(result.stdout) == 21
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
