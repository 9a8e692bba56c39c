import json
import os
import signal
import subprocess
import sys
import time

import pytest

from chargen.config import CELLS
from chargen.model import window
from chargen.runs import store as checkpoint
from tests.cli_helpers import TINY, one_line_error, run, train


def test_train_writes_a_self_contained_run_and_a_json_summary(corpus, tmp_path):
    result = train(corpus, "bard", "--json")
    summary = json.loads(result.stdout)
    assert summary["name"] == "bard" and summary["steps"] == 20
    assert summary["tokens_seen"] == 20 * 4 * 16
    assert summary["best_val_loss"] > 0 and summary["best_val_bpc"] > 0
    run_dir = tmp_path / "checkpoints" / "bard"
    assert {p.name for p in run_dir.iterdir()} == {
        "run.json",
        "tokenizer.json",
        "best.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "counts.npz",  # the n-gram model a character-level run mixes in
        ".lock",
    }
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20]


def test_default_name_is_the_corpus_file_name(corpus, tmp_path):
    run("train", corpus, *TINY)
    assert (tmp_path / "checkpoints" / "verse" / "run.json").is_file()


def test_existing_run_is_refused_without_resume_or_force(corpus, tmp_path):
    train(corpus, "bard")
    best = (tmp_path / "checkpoints" / "bard" / "best.safetensors").read_bytes()
    result = run("train", corpus, "--name", "bard", *TINY)
    assert result.exit_code == 2
    assert "a run named 'bard' already exists" in result.stderr
    assert (tmp_path / "checkpoints" / "bard" / "best.safetensors").read_bytes() == best
    assert run("train", corpus, "--name", "bard", "--force", *TINY).exit_code == 0


def test_resume_continues_from_the_saved_step(corpus, tmp_path):
    train(corpus, "bard")
    result = run("train", "--name", "bard", "--resume", "--max-steps", "30", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 30


def test_a_resume_with_nothing_left_to_train_says_how_to_train_more(corpus, tmp_path):
    train(corpus, "bard")  # 20 steps
    before = (tmp_path / "checkpoints" / "bard" / "run.json").read_bytes()
    message = one_line_error(run("train", "--name", "bard", "--resume", "--max-steps", "20"), (2,))
    assert "at step 20 already" in message and "--max-steps 40" in message
    assert (tmp_path / "checkpoints" / "bard" / "run.json").read_bytes() == before


def test_resume_refuses_to_change_the_model(corpus):
    train(corpus, "bard")
    result = run("train", corpus, "--name", "bard", "--resume", "--hidden", "64")
    assert result.exit_code == 2 and "--hidden: cannot change on --resume" in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty or only whitespace"),
        (b"  \n\n\t ", "empty or only whitespace"),
        (b"good start\n\xff\xfe bad", "not UTF-8 text (byte 0xff at line 2, column 1"),
        (b"too short", "fewer than one window"),
    ],
)
def test_unusable_corpus_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    result = run("train", path, *TINY)
    assert result.exit_code in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_corpus_is_a_usage_error(tmp_path):
    result = run("train", tmp_path / "nope.txt")
    assert result.exit_code == 2 and "nope.txt: no such file or folder" in result.stderr


@pytest.mark.parametrize(
    "option",
    [
        ["--hidden", "0"],
        ["--layers", "0"],
        ["--batch-size", "0"],
        ["--window", "0"],
        ["--lr", "0"],
        ["--time", "soon"],
        ["--dropout", "1"],
    ],
)
def test_bad_sizes_are_usage_errors(corpus, option):
    result = run("train", corpus, *option)
    assert result.exit_code == 2
    assert f"Invalid value for '{option[0]}'" in result.stderr


def test_tie_weights_with_unequal_sizes_is_a_usage_error(corpus):
    result = run("train", corpus, "--tie-weights", "--hidden", "32", "--embedding", "8")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --tie-weights needs --embedding equal to --hidden (got 8 and 32)"
    )


@pytest.mark.parametrize("level", ["char", "word", "bpe"])
@pytest.mark.parametrize("cell", CELLS)
def test_smoke_every_cell_and_level_trains_saves_and_samples(corpus, cell, level):
    train(corpus, "m", "--cell", cell, "--level", level, "--layers", "2", "--dropout", "0.1")
    result = run("sample", "m", "--length", "20", "--seed", "1")
    assert result.exit_code == 0 and len(result.stdout) > 5


def test_bpe_level_takes_its_own_settings_and_scores_per_character(corpus, tmp_path):
    plain = [a for a in TINY if a not in ("--embedding", "8")]
    result = run("train", corpus, "--name", "sub", "--level", "bpe", *plain)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "checkpoints" / "sub" / "run.json").read_text())
    assert saved["model"]["embedding_dim"] == 256
    assert saved["train"]["vocab_size"] == 512  # the cap in use, never null
    assert (saved["train"]["lr"], saved["train"]["decay_frac"]) == (1e-2, 0.4)
    tokenizer = json.loads((tmp_path / "checkpoints" / "sub" / "tokenizer.json").read_text())
    pieces = tokenizer["model"]["vocab"]
    assert len(pieces) <= 512 and max(map(len, pieces)) > 3  # whole words of the verse
    scored = json.loads(run("eval", "sub", corpus, "--json").stdout)
    text = corpus.read_text(encoding="utf-8")
    assert len(text) - 4 <= scored["chars"] < len(text)  # every token after the first ("The")
    assert scored["tokens"] < scored["chars"] / 2
    assert scored["bits_per_char"] * scored["chars"] == pytest.approx(
        scored["nats_per_token"] * scored["tokens"] / 0.6931471805599453
    )
    given = run(
        "train", corpus, "--name", "small", "--level", "bpe", "--vocab-size", "40",
        "--lr", "0.003", "--decay-frac", "0.5", *TINY,
    )  # fmt: skip
    assert given.exit_code == 0, given.output
    settings = json.loads((tmp_path / "checkpoints" / "small" / "run.json").read_text())["train"]
    assert (settings["lr"], settings["decay_frac"]) == (0.003, 0.5)
    assert run("train", corpus, "--name", "chars", *TINY).exit_code == 0
    settings = json.loads((tmp_path / "checkpoints" / "chars" / "run.json").read_text())["train"]
    assert (settings["lr"], settings["decay_frac"]) == (7e-3, 0.6)
    small = json.loads((tmp_path / "checkpoints" / "small" / "tokenizer.json").read_text())
    assert len(small["model"]["vocab"]) == 40
    assert run("sample", "small", "--length", "30", "--seed", "1").exit_code == 0
    assert "warning: --vocab-size" not in given.output
    tiny = run("train", corpus, "--name", "tiny", "--level", "bpe", "--vocab-size", "5", *TINY)
    distinct = len(set(corpus.read_text(encoding="utf-8"))) + 1  # the training split's, <unk>
    assert tiny.exit_code == 0, tiny.output
    assert "warning: --vocab-size 5 is fewer than the corpus's distinct characters" in tiny.output
    kept = json.loads((tmp_path / "checkpoints" / "tiny" / "tokenizer.json").read_text())
    assert 5 < len(kept["model"]["vocab"]) <= distinct and not kept["model"]["merges"]
    again = run("train", "--name", "small", "--resume", "--vocab-size", "40", "--max-steps", "25")
    assert again.exit_code == 0, again.output  # the cap given again is no change
    other = run("train", "--name", "small", "--resume", "--vocab-size", "41", "--max-steps", "30")
    assert "--vocab-size: cannot change on --resume" in one_line_error(other)


def test_the_bpe_level_takes_the_layer_normalised_cell_where_it_runs_compiled(corpus, tmp_path):
    options = [a for a in TINY if a not in ("--embedding", "8")]
    options[options.index("--hidden") + 1] = "32"  # a width the compiled window takes

    def cell(name, *args):
        result = run("train", corpus, "--name", name, *options, *args)
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / "checkpoints" / name / "run.json").read_text())["model"]

    compiled = window.kernel() is not None
    assert cell("bpe", "--level", "bpe")["cell"] == ("lnlstm" if compiled else "lstm")
    assert cell("char")["cell"] == "lstm"
    assert cell("told", "--level", "bpe", "--cell", "gru")["cell"] == "gru"
    assert cell("narrow", "--level", "bpe", "--hidden", "24")["cell"] == "lstm"  # not 16s
    resumed = run("train", "--name", "told", "--resume", "--max-steps", "25", "--quiet")
    assert resumed.exit_code == 0, resumed.output  # no --cell: the saved one, not a default
    saved = json.loads((tmp_path / "checkpoints" / "told" / "run.json").read_text())
    assert saved["model"]["cell"] == "gru"


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_zero(corpus, tmp_path):
    env = dict(os.environ, CHARGEN_CHECKPOINTS=str(tmp_path / "checkpoints"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chargen",
            "train",
            str(corpus),
            "--name",
            "ctrlc",
            "--hidden",
            "24",
            "--batch-size",
            "4",
            "--window",
            "16",
            "--eval-every",
            "1000000",
            "--time",
            "60s",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "checkpoints" / "ctrlc" / "run.json"
    deadline = time.time() + 60
    while not last.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let it train some steps
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Interrupted at step" in stderr and "--resume" in stderr
    found = checkpoint.open_run(last.parent)
    assert found.info["status"] == "interrupted" and found.info["resumable"]
    step = found.info["state"]["step"]
    assert step > 0
    result = run(
        "train", "--name", "ctrlc", "--resume", "--max-steps", str(step + 5), "--quiet", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == step + 5


@pytest.mark.parametrize(
    "option", [["--lr", "nan"], ["--weight-decay", "inf"], ["--epochs", "nan"]]
)
def test_nan_and_infinity_are_refused_in_one_line(corpus, option):
    result = run("train", corpus, *option)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {option[0]} must be a finite number, got {option[1]}"


def test_click_usage_errors_are_one_line_too(corpus):
    result = run("train", corpus, "--hidden", "0")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: Invalid value for '--hidden'") and "chargen train --help" in line


def test_checkpoint_dir_is_accepted_after_the_command(corpus, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    train(corpus, "bard", "--checkpoint-dir", elsewhere)
    assert (elsewhere / "bard" / "run.json").is_file()


def test_default_name_is_cleaned_up_from_an_awkward_file_name(tmp_path, corpus):
    awkward = tmp_path / "my corpus (v2).txt"
    awkward.write_text(corpus.read_text())
    run("train", awkward, *TINY)
    assert (tmp_path / "checkpoints" / "my-corpus-v2" / "run.json").is_file()


def test_resume_accepts_options_equal_to_the_saved_ones(corpus):
    train(corpus, "bard")
    same = run("train", "--name", "bard", "--resume", "--level", "char", "--max-steps", "25", "-q")
    assert same.exit_code == 0, same.output
    different = run("train", "--name", "bard", "--resume", "--level", "word")
    assert different.exit_code == 2 and "--level: cannot change on --resume" in different.stderr


def test_binary_corpus_is_named_as_such(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(bytes(range(256)) * 10)
    result = run("train", path, *TINY)
    assert result.exit_code == 1 and "looks like a binary file" in result.stderr


def test_a_timed_run_has_a_loss_curve_without_more_evaluations(corpus, tmp_path):
    result = run("train", corpus, "--name", "short", *TINY, "--max-steps", "100000",
                 "--eval-every", "100000", "--time", "2s")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "checkpoints" / "short" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert sum("val_loss" in m for m in metrics) == 1  # the final evaluation only
    assert 9 <= len(metrics) <= 12, metrics  # a curve to plot, not two points
    elapsed = [m["elapsed"] for m in metrics]
    assert all(b - a >= 0.2 - 1e-6 for a, b in zip(elapsed, elapsed[1:-1], strict=False))
    assert all(m["train_loss"] > 0 for m in metrics)
    shown = run("checkpoints", "show", "short")  # reads lines with and without validation
    assert shown.exit_code == 0 and "Validation loss" in shown.stderr, shown.output
    as_json = json.loads(run("checkpoints", "show", "short", "--json").stdout)
    assert as_json["metrics"] == metrics
