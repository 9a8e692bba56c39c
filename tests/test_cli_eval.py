import json
import math

from tests.cli_helpers import run, train


def test_eval_reports_loss_bits_per_char_and_perplexity(corpus):
    train(corpus, "bard")
    result = run("eval", "bard", corpus, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tokens"] == len(corpus.read_text()) - 1
    assert report["bits_per_char"] == report["nats_per_token"] / math.log(2)
    assert math.isclose(report["perplexity"], math.exp(report["nats_per_token"]))


def test_eval_defaults_to_the_latest_run_and_takes_several_files(corpus, tmp_path):
    train(corpus, "bard")
    other = tmp_path / "other.txt"
    other.write_text("the tide\n" * 20)
    result = run("eval", corpus, other, "--json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [
        str(corpus),
        str(other),
    ]


def test_eval_table_goes_to_stderr(corpus):
    train(corpus, "bard")
    result = run("eval", "bard", corpus)
    assert result.stdout == "" and "bits/char" in result.stderr


def test_eval_of_a_missing_file_is_a_usage_error(corpus):
    train(corpus, "bard")
    result = run("eval", "bard", "missing.txt")
    assert result.exit_code == 2 and "missing.txt: no such file" in result.stderr
