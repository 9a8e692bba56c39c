import json

from tests.cli_helpers import run, train


def test_list_shows_every_run_as_json_and_table(corpus):
    train(corpus, "one")
    train(corpus, "two", "--cell", "gru")
    listed = json.loads(run("checkpoints", "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["two", "one"]
    assert listed[0]["cell"] == "gru" and listed[0]["steps"] == 20
    table = run("checkpoints", "list").stderr
    assert "one" in table and "two" in table and "bits/char" in table


def test_list_without_runs_says_how_to_make_one():
    assert "chargen train" in run("checkpoints", "list").stderr


def test_show_prints_config_metrics_and_a_loss_chart(corpus):
    train(corpus, "one")
    result = run("checkpoints", "show", "one")
    assert result.exit_code == 0
    assert "hidden_size=24" in result.stderr and "Validation loss" in result.stderr
    shown = json.loads(run("checkpoints", "show", "one", "--json").stdout)
    assert [m["step"] for m in shown["metrics"]] == [10, 20]


def test_rm_needs_confirmation_and_yes_deletes(corpus, tmp_path):
    train(corpus, "one")
    refused = run("checkpoints", "rm", "one")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert (tmp_path / "checkpoints" / "one").is_dir()
    assert run("checkpoints", "rm", "one", "--yes").exit_code == 0
    assert not (tmp_path / "checkpoints" / "one").exists()


def test_prune_frees_disk_and_the_run_still_samples(corpus, tmp_path):
    train(corpus, "one")
    last = tmp_path / "checkpoints" / "one" / "last.safetensors"
    before = last.stat().st_size
    result = run("checkpoints", "prune", "one")
    assert result.exit_code == 0 and "freed" in result.stderr
    assert last.stat().st_size < before
    assert run("sample", "one", "--weights", "last", "--length", "5").exit_code == 0
    assert run("checkpoints", "prune", "one", "--best-only").exit_code == 0
    assert not last.exists()


def test_unknown_run_in_show_is_exit_1():
    result = run("checkpoints", "show", "ghost")
    assert result.exit_code == 1 and "no run named 'ghost'" in result.stderr


def test_help_works_everywhere():
    for args in (["-h"], ["train", "-h"], ["sample", "--help"], ["checkpoints", "list", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage:" in result.stdout
