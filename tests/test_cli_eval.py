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


def test_eval_json_is_strict_json_even_for_a_one_character_file(corpus, tmp_path):
    train(corpus, "bard")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("T")
    result = run("eval", "bard", tiny, "--json")
    assert result.exit_code == 0
    assert "NaN" not in result.stdout
    assert json.loads(result.stdout)["nats_per_token"] is None


def test_score_per_line_ranks_familiar_lines_below_gibberish(corpus, tmp_path):
    train(corpus, "bard", "--max-steps", "150")
    lines = tmp_path / "lines.txt"
    lines.write_text("and the keeper lit the lamp too soon.\nohw tnr eek fpa mol ugs hte\n")
    result = run("score", "bard", lines, "--per-line", "--json")
    assert result.exit_code == 0, result.output
    familiar, gibberish = [json.loads(line) for line in result.stdout.splitlines()]
    assert (familiar["line"], gibberish["line"]) == (1, 2)
    assert familiar["bits_per_char"] < gibberish["bits_per_char"]


def test_identify_ranks_runs_and_needs_two(corpus, tmp_path):
    train(corpus, "verse", "--max-steps", "150")
    other = tmp_path / "other.txt"
    other.write_text("0123456789 +-*/ 9876543210 = 42\n" * 60)
    train(other, "digits", "--max-steps", "150")
    result = run("identify", "the keeper lit the lamp", "--json")
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)
    assert [r["run"] for r in ranking] == ["verse", "digits"]
    assert ranking[0]["confidence"] > 0.9
    alone = run("identify", "the lamp", "-m", "verse")
    assert alone.exit_code == 2 and "at least two models" in alone.stderr
