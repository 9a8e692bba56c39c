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
    assert "--hidden 24" in result.stderr and "Validation loss" in result.stderr
    assert "--vocab-size" not in result.stderr  # a word-level option; this run is char level
    shown = json.loads(run("checkpoints", "show", "one", "--json").stdout)
    assert [m["step"] for m in shown["metrics"]] == [10, 20]
    train(corpus, "words", "--level", "word", "--vocab-size", "50")
    assert "--vocab-size 50" in run("checkpoints", "show", "words").stderr


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


def test_prune_refuses_a_run_that_could_still_be_resumed(corpus, tmp_path):
    train(corpus, "one")
    run_json = tmp_path / "checkpoints" / "one" / "run.json"
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps(info | {"status": "interrupted"}))
    refused = run("checkpoints", "prune", "one")
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert run("checkpoints", "prune", "one", "--force").exit_code == 0


def test_damaged_runs_are_reported_by_list_and_removable(corpus, tmp_path):
    train(corpus, "good")
    train(corpus, "bad")
    run_json = tmp_path / "checkpoints" / "bad" / "run.json"
    info = json.loads(run_json.read_text())
    info["state"]["step"] = "x"
    run_json.write_text(json.dumps(info))
    listed = run("checkpoints", "list")
    assert listed.exit_code == 0 and "bad: damaged run" in listed.stderr and "good" in listed.stderr
    sampled = run("sample", "bad")
    assert sampled.exit_code == 1 and "state.step is 'x'; the run is damaged" in sampled.stderr
    assert run("checkpoints", "rm", "bad", "--yes").exit_code == 0
    assert not run_json.parent.exists()


def test_copied_run_lists_under_its_folder_name(corpus, tmp_path):
    import shutil

    train(corpus, "one")
    shutil.copytree(tmp_path / "checkpoints" / "one", tmp_path / "checkpoints" / "copy")
    names = {r["name"] for r in json.loads(run("checkpoints", "list", "--json").stdout)}
    assert names == {"one", "copy"}
