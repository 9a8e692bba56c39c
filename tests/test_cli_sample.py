import json

import pytest

from tests.cli_helpers import run, train


@pytest.fixture
def trained(corpus):
    train(corpus, "bard")
    return "bard"


def test_sample_writes_only_the_text_to_stdout(trained):
    result = run("sample", trained, "--prime", "The", "--length", "30", "--seed", "1")
    assert result.exit_code == 0
    assert result.stdout.startswith("The") and len(result.stdout) == len("The") + 30 + 1
    assert result.stderr == ""


def test_same_seed_same_text_and_greedy_equals_top_k_one(trained):
    first = run("sample", trained, "--length", "40", "--seed", "5").stdout
    assert first == run("sample", trained, "--length", "40", "--seed", "5").stdout
    greedy = run("sample", trained, "--length", "40", "--temperature", "0").stdout
    assert greedy == run("sample", trained, "--length", "40", "--top-k", "1", "--seed", "9").stdout


def test_latest_run_is_the_default(corpus, trained):
    train(corpus, "newer")
    assert (
        run("sample", "--length", "30", "--seed", "2").stdout
        == run("sample", "newer", "--length", "30", "--seed", "2").stdout
    )


def test_json_gives_one_object_per_sample(trained):
    result = run("sample", trained, "--num", "3", "--length", "25", "--json", "--seed", "1")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    assert all(line["tokens"] == 25 and line["mean_logprob"] < 0 for line in lines)


def test_output_file_gets_the_samples(trained, tmp_path):
    out = tmp_path / "out.txt"
    result = run("sample", trained, "--num", "2", "--length", "10", "--output", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert len(out.read_text()) == 10 + 2 + 10 + 1


@pytest.mark.parametrize(
    "option, fragment",
    [
        (["--temperature", "-1"], "Invalid value for '-t' / '--temperature'"),
        (["--top-p", "0"], "Invalid value for '--top-p'"),
        (["--top-p", "1.5"], "Invalid value for '--top-p'"),
        (["--top-k", "0"], "Invalid value for '--top-k'"),
        (["--length", "0"], "Invalid value for '-n' / '--length'"),
    ],
)
def test_bad_sampling_options_exit_2(trained, option, fragment):
    result = run("sample", trained, *option)
    assert result.exit_code == 2 and fragment in result.stderr


def test_prime_with_unseen_characters_is_a_usage_error_naming_them(trained):
    result = run("sample", trained, "--prime", "Zebra€")
    assert result.exit_code == 2
    assert "--prime has characters the model never saw: 'Z', '€'; remove them" in result.stderr


def test_unknown_run_is_a_clear_error(trained):
    result = run("sample", "nobody")
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: no run named 'nobody'; runs in {run_root()}: bard")


def run_root():
    import os

    return os.environ["CHARGEN_CHECKPOINTS"]


def test_corrupt_checkpoint_is_a_clear_error(trained, tmp_path):
    (tmp_path / "checkpoints" / "bard" / "best.safetensors").write_bytes(b"\x00" * 10)
    result = run("sample", trained)
    assert result.exit_code == 1
    assert "corrupt or truncated" in result.stderr and "Traceback" not in result.output


def test_stop_text_ends_the_sample(trained):
    free = run("sample", trained, "--length", "200", "--seed", "4").stdout
    stop = free[10:12]
    stopped = run("sample", trained, "--length", "200", "--seed", "4", "--stop", stop).stdout
    assert stopped == free[: free.index(stop)] + "\n"
