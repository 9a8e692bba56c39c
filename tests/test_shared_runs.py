"""Run folders and caches are input: every file in them is checked before it is trusted.

A run folder may be copied, downloaded or mounted from another machine, and a cache outlives the
process that wrote it; hostile or damaged content gets a one-line error (or is rebuilt and said),
never a traceback, a hang, a read outside the run, or memory without bound. Each test here is one
of the items of issue 18 (numbered as there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from chargen import files
from chargen.runs import store
from tests.cli_helpers import TINY, one_line_error, run, train

SLOW_OK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def succeeded_or_refused(result) -> None:
    """Either the command worked or it said why in one line: never a traceback."""
    if result.exit_code != 0:
        one_line_error(result)


@pytest.fixture
def bard(corpus, tmp_path):
    train(corpus, "bard")
    return tmp_path / "checkpoints" / "bard"


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


PEAK = """
import re
status = open("/proc/self/status").read()  # VmHWM: this program's peak, not its parent's
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)))
"""


def child_peak_rss_mb(code: str, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; its peak resident memory (MB) and its stdout.

    The peak is read from /proc (VmHWM) rather than ``getrusage``, whose figure carries over
    the memory of the forking parent (the test process) across ``exec``."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read a process's peak memory")
    probe = f"{code}\n{PEAK}"
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    *out, peak = result.stdout.strip().splitlines()
    return int(peak) / 1024, "\n".join(out)


# ------------------------------------------------------------------- 1, 22: the saved corpus


def test_1_resume_does_not_read_a_file_run_json_was_changed_to_name(bard, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the keeper's password is swordfish\n" * 100)
    edit_json(bard / "run.json", lambda info: info.update(corpus=[str(secret)]))
    cache = Path(os.environ["CHARGEN_CACHE"])
    before = set(cache.iterdir())
    line = one_line_error(run("train", "--name", "bard", "--resume", "--max-steps", "30"))
    assert "is not the corpus bard trained on" in line and "chargen train CORPUS" in line
    assert set(cache.iterdir()) == before  # nothing of the secret went into the cache


def test_1_a_link_inside_a_run_is_not_followed(bard, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text((bard / "tokenizer.json").read_text())
    (bard / "tokenizer.json").unlink()
    (bard / "tokenizer.json").symlink_to(outside)
    assert "is a link; refusing to follow it" in one_line_error(run("sample", "bard"))


def test_22_resume_works_from_another_folder(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(corpus.parent)
    train(corpus.name, "bard")  # a relative path, from here
    monkeypatch.chdir(tmp_path.parent)
    result = run("train", "--name", "bard", "--resume", "--max-steps", "30", "--quiet")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------- 2, 12, 18: caches


def entry_of(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if p.name.startswith("tokens-")]
    return entry


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("swap", "do not match their checksum"),
        ("truncate", "is not"),
        ("outside", "do not match their checksum"),
        ("torn meta", "meta.json"),
        ("negative", "not a description of token arrays"),
        ("object dtype", "not a description of token arrays"),
    ],
)
def test_2_12_a_damaged_token_cache_is_rebuilt_and_said(corpus, damage, reason):
    train(corpus, "first")
    cache = Path(os.environ["CHARGEN_CACHE"])
    entry = entry_of(cache)
    good = (entry / "train.bin").read_bytes()
    ids = np.frombuffer(good, dtype=np.uint16).copy()
    meta = json.loads((entry / "meta.json").read_text())
    if damage == "swap":  # every token rewritten to another valid id
        (entry / "train.bin").write_bytes(np.roll(ids, 1).tobytes())
    elif damage == "truncate":
        (entry / "train.bin").write_bytes(good[: len(good) // 2])
    elif damage == "outside":
        ids[5] = 60_000
        (entry / "train.bin").write_bytes(ids.tobytes())
    elif damage == "torn meta":
        (entry / "meta.json").write_text(json.dumps(meta)[:20])
    elif damage == "negative":
        (entry / "meta.json").write_text(json.dumps(meta | {"train_tokens": -5}))
    else:
        (entry / "meta.json").write_text(json.dumps(meta | {"dtype": "object"}))
    result = run("train", corpus, "--name", "second", *TINY)
    assert result.exit_code == 0, result.output
    assert "token cache" in result.stderr and reason in result.stderr
    assert str(entry) in result.stderr and "rebuilt it" in result.stderr
    assert (entry / "train.bin").read_bytes() == good


def test_18_a_damaged_vocabulary_cache_is_named_and_rebuilt(corpus):
    train(corpus, "first")
    cache = Path(os.environ["CHARGEN_CACHE"])
    (vocab,) = cache.glob("vocab-*.json")
    vocab.write_text('{"model": {"vocab": {"a": 7}}}')
    result = run("train", corpus, "--name", "second", *TINY)
    assert result.exit_code == 0 and str(vocab) in result.stderr and "rebuilt" in result.stderr


# ----------------------------------------------------------------- 3, 7, 8: bounded memory


def test_3_eval_memory_does_not_grow_with_the_text(bard, tmp_path):
    verse = (tmp_path / "verse.txt").read_text()
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(verse * 5)
    big.write_text(verse * 1200)  # 8 MB: 3 GB at the 400 bytes a character eval once took
    code = "import sys, chargen\nprint(chargen.load(sys.argv[1]).score_file(sys.argv[2])[0].tokens)"
    small_peak, small_tokens = child_peak_rss_mb(code, str(bard), str(small))
    big_peak, big_tokens = child_peak_rss_mb(code, str(bard), str(big))
    assert int(big_tokens) == len(verse) * 1200 - 1 and int(small_tokens) < int(big_tokens)
    assert big_peak - small_peak < 150


def test_7_an_absurd_meter_is_refused_before_music21_sees_it(tmp_path):
    pytest.importorskip("music21")
    tune = tmp_path / "absurd.abc"
    tune.write_text("X:1\nT:Long\nM:999999999/1\nL:1/8\nK:C\nCDEF|GABc|\n")
    code = (
        "import sys\nfrom chargen.music.check import check_tune\n"
        "print(check_tune(open(sys.argv[1]).read()).problems)"
    )
    peak, problems = child_peak_rss_mb(code, str(tune))
    assert "unreadable meter M:999999999/1" in problems and peak < 500


def test_8_any_number_of_samples_streams_in_bounded_memory(bard):
    code = (
        "import sys\nfrom chargen.cli import cli\n"
        "sys.argv = ['chargen', '--checkpoint-dir', sys.argv[1], 'sample', 'bard', '--num',"
        " '20000', '--length', '3', '--json', '--seed', '1']\n"
        "try:\n    cli()\nexcept SystemExit:\n    pass"
    )
    peak, out = child_peak_rss_mb(code, str(bard.parent))
    lines = out.splitlines()
    assert len(lines) == 20_000 and all(json.loads(line)["tokens"] == 3 for line in lines[:5])
    assert peak < 700


def test_8_a_request_split_into_batches_gives_the_same_samples(bard, monkeypatch):
    import chargen
    from chargen import api

    model = chargen.load(bard)
    monkeypatch.setattr(api, "BATCH", 3)  # small batches: float32 products in all of them
    in_threes = [s.text for s in model.generate_many(7, "The", 12, temperature=1.0, seed=4)]
    monkeypatch.setattr(api, "BATCH", 2)
    in_twos = [s.text for s in model.generate_many(7, "The", 12, temperature=1.0, seed=4)]
    assert in_threes == in_twos and len(set(in_threes)) == 7


# ------------------------------------------------------------------ 4, 5, 6, 13, 14: files


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("model", "num_layers", 10**6, "num_layers must be in [1, 64]"),
        ("model", "num_layers", 3000, "num_layers must be in [1, 64]"),
        ("model", "hidden_size", 12000, "weights do not fit the model config"),
        ("train", "threads", 1_000_000, "threads must be in [1, 1024]"),
        ("train", "level", None, "train has no level"),
        (None, "updated", "yesterday", "updated is 'yesterday'"),
        (None, "parameters", "many", "parameters is 'many'"),
        (None, "corpus", 123, "corpus is 123"),
    ],
)
def test_4_5_11_run_json_is_checked_before_anything_is_built(
    bard, monkeypatch, section, field, value, message
):
    built = []
    original = store.RNNLanguageModel
    monkeypatch.setattr(store, "RNNLanguageModel", lambda c: built.append(c) or original(c))

    def change(info):
        target = info if section is None else info[section]
        if value is None:
            del target[field]
        else:
            target[field] = value

    edit_json(bard / "run.json", change)
    assert message in one_line_error(run("sample", "bard", "--length", "5"))
    assert built == []  # refused before a model was built
    listed = run("checkpoints", "list")
    assert listed.exit_code == 0
    assert ("damaged" in listed.stderr) == (field != "hidden_size")


@pytest.mark.parametrize("kind", ["device", "fifo", "huge"])
def test_6_weights_that_are_no_regular_file_of_a_sane_size_are_refused(bard, kind):
    weights = bard / "best.safetensors"
    weights.unlink()
    if kind == "device":
        weights.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(weights)
    else:
        with open(weights, "wb") as handle:
            handle.truncate(2 << 30)  # sparse: 2 GB that take no disk
    line = one_line_error(run("sample", "bard", "--length", "5"))
    expected = {
        "device": "is a link; refusing to follow it",
        "fifo": "not a regular file",
        "huge": "more than the",
    }
    assert expected[kind] in line


def resave(path: Path, change) -> None:
    """Rewrite a safetensors file with ``change(tensors, metadata)`` applied."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    change(tensors, metadata)
    save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("rng", "damaged random state"),
        ("step", "state.step is 'seven'"),
        ("optim", "unknown optimizer state 'optim.999.exp_avg'"),
        ("slot", "unknown optimizer state 'optim.0.momentum'"),
        ("shape", "has the wrong shape"),
    ],
)
def test_13_damaged_training_state_is_refused_on_resume(bard, damage, message):
    import torch

    def change(tensors, metadata):
        if damage == "rng":
            tensors["rng.torch"] = tensors["rng.torch"][:100]
        elif damage == "step":
            state = json.loads(metadata["state"])
            metadata["state"] = json.dumps(state | {"step": "seven"})
        elif damage == "optim":
            tensors["optim.999.exp_avg"] = torch.zeros(3)
        elif damage == "slot":
            tensors["optim.0.momentum"] = tensors.pop("optim.0.exp_avg")
        else:
            tensors["optim.0.exp_avg"] = torch.zeros(2, 2)

    resave(bard / "last.safetensors", change)
    result = run("train", "--name", "bard", "--resume", "--max-steps", "30", "--quiet")
    assert message in one_line_error(result)


def test_14_a_tokenizer_file_brings_no_regular_expression_of_its_own(bard):
    edit_json(
        bard / "tokenizer.json",
        lambda t: t["pre_tokenizer"].update(pattern={"Regex": "(a+)+$"}),
    )
    result = run(
        "sample", "bard", "--prime", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.", "-n", "5"
    )
    # refused at once, before it can run: only the level's own patterns (and the ones its
    # older runs were made with) are ever compiled
    assert "its pre-tokenizer is not one of the char level's" in one_line_error(result)


def test_14_a_tokenizer_with_an_id_past_the_vocabulary_is_refused(bard):
    def change(tokenizer):
        vocab = tokenizer["model"]["vocab"]
        vocab[next(iter(set(vocab) - {"<unk>"}))] = len(vocab) + 40

    edit_json(bard / "tokenizer.json", change)
    assert "ids are not 0, 1, ..." in one_line_error(run("sample", "bard"))


# ------------------------------------------------------------------- 9, 10, 19, 20, 21


def test_9_a_folder_left_without_run_json_is_listed_removable_and_explained(bard):
    (bard / "run.json").unlink()  # what an interrupted rm of old could leave
    assert "bard" in run("checkpoints", "list").stderr
    corpus = bard.parent.parent / "verse.txt"
    line = one_line_error(run("train", corpus, "--name", "bard", *TINY), exit_codes=(2,))
    assert "exists but is not a run" in line
    assert run("checkpoints", "rm", "bard", "--yes").exit_code == 0
    assert not bard.exists()


def test_9_a_removal_cut_short_frees_the_name_at_once(bard, monkeypatch):
    def killed(path):
        raise KeyboardInterrupt  # the process dies after the rename, inside rmtree

    monkeypatch.setattr(files.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        store.remove_run(bard)
    assert not bard.exists()  # the run is gone from its name; a hidden leftover remains
    assert any(p.name.startswith(".bard.") for p in bard.parent.iterdir())


def test_10_leftovers_of_dead_processes_are_cleaned_and_others_kept(tmp_path):
    host = files._owner().split("~")[0]
    dead = 2**22 + 12345  # above any pid this machine hands out
    doomed = [
        tmp_path / f".tokens-abc.{host}~{dead}.x1.new",
        tmp_path / f".run.json.{host}~{dead}.x2.tmp",
    ]
    kept = [
        tmp_path / f".run.json.{host}~{os.getpid()}.x3.tmp",  # this process: alive
        tmp_path / f".run.json.otherhost~{dead}.x4.tmp",  # another machine's
        tmp_path / ".tokens-old.abcdef.tmp",  # 0.1's unowned leftover, but recent
    ]
    old = tmp_path / ".tokens-older.abcdef.tmp"
    doomed[0].mkdir()
    (doomed[0] / "train.bin").write_bytes(b"x" * 100)
    for path in [doomed[1], *kept, old]:
        path.write_bytes(b"x")
    os.utime(old, (0, 0))
    assert sorted(files.clean_leftovers(tmp_path)) == sorted(p.name for p in [*doomed, old])
    assert all(p.exists() for p in kept)


def test_19_removing_a_run_that_is_a_link_removes_the_link(bard, tmp_path):
    (tmp_path / "checkpoints" / "alias").symlink_to(bard)
    result = run("checkpoints", "rm", "alias", "--yes")
    assert result.exit_code == 0 and "the link alias" in result.stderr
    assert bard.is_dir() and (bard / "run.json").is_file()


def test_20_a_long_name_is_refused_with_the_limit(corpus):
    line = one_line_error(run("train", corpus, "--name", "n" * 101), exit_codes=(2,))
    assert "1 to 100" in line


def test_21_prune_refuses_a_run_being_trained(bard):
    with store.lock_run(bard):
        line = one_line_error(run("checkpoints", "prune", "bard", "--force"))
    assert "is being trained" in line


# ------------------------------------------------------------- 15, 16, 17: the command line


def test_15_a_huge_seed_samples_and_is_refused_for_training_in_one_line(bard, corpus):
    seed = "99999999999999999999999"
    assert run("sample", "bard", "--seed", seed, "--length", "5").exit_code == 0
    line = one_line_error(run("train", corpus, "--name", "s", "--seed", seed), exit_codes=(2,))
    assert "seed must be in" in line


def chargen_process(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "chargen", *args], capture_output=True, **kwargs)


def test_16_a_closed_stdout_is_named(bard):
    result = subprocess.run(
        [sys.executable, "-m", "chargen", "sample", "bard", "--length", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        close_fds=True,
        preexec_fn=lambda: os.close(1),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: standard output is closed; give --output FILE or redirect it"
    )


def test_17_a_prime_that_is_not_utf8_is_a_usage_error(bard):
    result = chargen_process("sample", "bard", "--prime", b"a\xff", "--length", "5")
    assert result.returncode == 2
    assert result.stderr.decode().strip().endswith("--prime is not valid UTF-8 text")


def test_17_text_is_utf8_whatever_the_locale(bard):
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    result = chargen_process("sample", "bard", "--prime", "The tide", "--length", "5", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8").startswith("The tide")


# --------------------------------------------------------------- property tests: mutations

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@SLOW_OK
@given(data=st.data())
def test_any_change_to_run_json_gives_success_or_one_line(bard, data):
    info = json.loads((bard / "run.json").read_text())
    section = data.draw(st.sampled_from(["model", "train", "state", None]))
    target = info if section is None else info[section]
    key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=6))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(JSON_VALUES)
    original = (bard / "run.json").read_text()
    (bard / "run.json").write_text(json.dumps(info))
    try:
        for args in (["checkpoints", "list"], ["checkpoints", "show", "bard"], ["sample", "bard"]):
            succeeded_or_refused(run(*args, "--length", "3") if args[0] == "sample" else run(*args))
    finally:
        (bard / "run.json").write_text(original)


@SLOW_OK
@given(data=st.data())
def test_any_change_to_the_training_state_gives_success_or_one_line(bard, data):
    path = bard / "last.safetensors"
    original = path.read_bytes()
    field = data.draw(st.sampled_from(["step", "epoch", "window", "elapsed", "best_val_loss"]))
    value = data.draw(JSON_VALUES)

    def change(tensors, metadata):
        metadata["state"] = json.dumps(json.loads(metadata["state"]) | {field: value})

    resave(path, change)
    try:
        result = run("train", "--name", "bard", "--resume", "--max-steps", "22", "--quiet")
        succeeded_or_refused(result)
    finally:
        path.write_bytes(original)


@SLOW_OK
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_any_damage_to_a_weights_file_gives_success_or_one_line(bard, cut, flip):
    path = bard / "best.safetensors"
    original = path.read_bytes()
    damaged = bytearray(original[: max(cut, len(original) - cut)])
    if damaged:
        damaged[flip % len(damaged)] ^= 0xFF
    path.write_bytes(bytes(damaged))
    try:
        succeeded_or_refused(run("sample", "bard", "--length", "3"))
    finally:
        path.write_bytes(original)


@SLOW_OK
@given(data=st.data())
def test_any_change_to_tokenizer_json_gives_success_or_one_line(bard, data):
    path = bard / "tokenizer.json"
    original = path.read_text()
    tokenizer = json.loads(original)
    vocab = tokenizer["model"]["vocab"]
    where = data.draw(st.sampled_from(["piece", "id", "model", "top"]))
    if where == "piece":
        vocab[data.draw(st.text(max_size=3))] = data.draw(st.integers(-3, len(vocab) + 3))
    elif where == "id":
        vocab[data.draw(st.sampled_from(sorted(vocab)))] = data.draw(JSON_VALUES)
    elif where == "model":
        tokenizer["model"] = data.draw(JSON_VALUES)
    else:
        tokenizer = data.draw(JSON_VALUES)
    path.write_text(json.dumps(tokenizer))
    try:
        succeeded_or_refused(run("sample", "bard", "--length", "3"))
    finally:
        path.write_text(original)


@SLOW_OK
@given(
    name=st.sampled_from(["train.bin", "val.bin", "meta.json"]),
    cut=st.integers(0, 64),
    flip=st.integers(0, 10_000),
)
def test_any_damage_to_a_cache_entry_is_rebuilt_or_refused_in_one_line(
    corpus, tmp_path, name, cut, flip
):
    cache = Path(os.environ["CHARGEN_CACHE"])
    if not cache.exists():
        train(corpus, "first")
    path = entry_of(cache) / name
    original = path.read_bytes()
    damaged = bytearray(original[: len(original) - cut])
    if damaged:
        damaged[flip % len(damaged)] ^= 0x5A
    path.write_bytes(bytes(damaged))
    result = run("train", corpus, "--name", "again", "--force", *TINY)
    succeeded_or_refused(result)
    if bytes(damaged) != original:
        assert result.exit_code == 0 and "rebuilt it" in result.stderr
    assert path.read_bytes() == original  # the entry is whole again
