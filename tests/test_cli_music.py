import json
import shutil
from pathlib import Path

import pytest

from chargen.music import export
from chargen.music.check import check_tune
from chargen.music.notation import headers, split_tunes
from chargen.music.stats import tune_shape
from tests.abc_fixtures import BROKEN, JIG, REEL, WALTZ, train_tiny_abc
from tests.cli_helpers import one_line_error, run
from tests.helpers import tokenizer_for

pytest.importorskip("music21")


@pytest.fixture
def abc_dir(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "one.abc").write_text(JIG + "\n\n" + REEL + "\n", encoding="utf-8")
    (folder / "two.abc").write_text(WALTZ + "\n\n" + JIG + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The run directory of the tiny ABC model, trained once for this module."""
    return train_tiny_abc(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def folk(tiny_run, tmp_path):
    """A tiny ABC-level run named folk in this test's checkpoint directory."""
    shutil.copytree(tiny_run, tmp_path / "checkpoints" / "folk")
    return "folk"


# ---------------------------------------------------------------------------------- corpus


def test_corpus_folk_builds_a_corpus_from_own_files_and_prints_counts(abc_dir, tmp_path):
    out = tmp_path / "corpora" / "mine.abc"
    result = run("corpus", "folk", abc_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "Read 4 tunes from 2 files; dropped 1 duplicates" in result.stderr
    assert f"Wrote 3 tunes ({len(out.read_text())} characters) to {out}" in result.stderr
    assert len(split_tunes(out.read_text())) == 3


def test_corpus_folk_json_gives_the_counts(abc_dir, tmp_path):
    result = run("corpus", "folk", abc_dir, "-o", tmp_path / "x.abc", "--json")
    counts = json.loads(result.stdout)
    assert counts["tunes_read"] == 4 and counts["written"] == 3 and counts["duplicates"] == 1


def test_corpus_folk_with_a_missing_source_is_a_usage_error(tmp_path):
    result = run("corpus", "folk", tmp_path / "nowhere.abc")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_corpus_folk_of_files_without_tunes_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.abc").write_text("no tunes here\n")
    result = run("corpus", "folk", tmp_path / "empty.abc", "-o", tmp_path / "x.abc")
    assert result.exit_code == 1
    assert result.stderr == "Error: no usable tunes in the given files\n"


# ---------------------------------------------------------------------------------- check


def test_abc_check_gives_a_verdict_per_tune_and_a_summary(tmp_path):
    path = tmp_path / "mixed.abc"
    path.write_text("\n\n".join([JIG, BROKEN["bar too long"], WALTZ]) + "\n")
    result = run("abc", "check", path)
    assert result.exit_code == 0
    assert "2 of 3 tunes valid (66.7%)" in result.stderr
    assert "too long: 7/8 for 3/4" in result.stderr.replace("\n", " ").replace("│", "")


def test_abc_check_json_has_one_object_per_tune_then_the_summary(tmp_path):
    path = tmp_path / "mixed.abc"
    path.write_text("\n\n".join([JIG, BROKEN["missing headers"]]) + "\n")
    corpus = tmp_path / "corpus.abc"
    corpus.write_text(JIG + "\n")
    result = run("abc", "check", path, "--json", "--corpus", corpus)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("valid") for r in records[:2]] == [True, False]
    assert records[0]["novelty"]["exact_copy"] is True
    assert records[1]["problems"][0] == "missing header M:, K:"
    assert records[2]["summary"] | {"bars": 0} == {
        "tunes": 2,
        "valid": 1,
        "valid_fraction": 0.5,
        "bars": 0,
        "exact_copies": 1,
    }


def test_abc_check_of_a_binary_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "noise.abc"
    path.write_bytes(bytes(range(256)) * 4)
    result = run("abc", "check", path)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_abc_stats_gives_shares_as_percentages_and_distances_to_a_corpus(tmp_path):
    tunes = tmp_path / "tunes.abc"
    tunes.write_text(JIG + "\n\n" + WALTZ + "\n", encoding="utf-8")  # both end on a final bar
    table = run("abc", "stats", tunes)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stderr.splitlines() if "final bar line" in line)
    assert "100%" in row
    both = json.loads(run("abc", "stats", tunes, "--corpus", tunes, "--json").stdout)
    assert both["file"]["final_bar"] == 1.0 and both["file"]["bars_median"] == 8
    assert both["distance"]["final_bar"] == 0 and both["distance"]["bars_median"] == 0


# --------------------------------------------------------------------------------- sample


def test_sample_from_an_abc_run_gives_complete_numbered_tunes(folk):
    result = run("sample", folk, "--num", "3", "--seed", "1")
    assert result.exit_code == 0, result.output
    tunes = split_tunes(result.stdout)
    assert [t.split("\n")[0] for t in tunes] == ["X:1", "X:2", "X:3"]
    assert "3 tunes: 3 ended on their own before the cap of 1200 tokens" in result.stderr


def test_tunes_default_to_their_own_temperature(folk):
    default = run("sample", folk, "--num", "3", "--seed", "4")
    own = run("sample", folk, "--num", "3", "--seed", "4", "--temperature", "1.0")
    text = run("sample", folk, "--num", "3", "--seed", "4", "--temperature", "0.8")
    assert default.exit_code == own.exit_code == text.exit_code == 0
    assert default.stdout == own.stdout != text.stdout


def test_sample_rhythm_style_and_form_shape_every_tune(folk):
    args = ["--rhythm", "reel", "--style", "irish", "--bars", "8", "--parts", "2"]
    result = run("sample", folk, "--num", "3", "--seed", "3", *args, "--json")
    assert result.exit_code == 0, result.output
    for record in map(json.loads, result.stdout.splitlines()):
        if record["ended"]:
            fields, shape = headers(record["text"]), tune_shape(record["text"])
            assert (fields["O"], fields["R"], shape.bars, shape.parts) == ("irish", "reel", 8, 2)


def test_the_shipped_folk_model_answers_to_its_name_with_no_run_of_that_name(tmp_path):
    args = ["--rhythm", "jig", "--style", "irish", "--bars", "16", "--parts", "2", "--json"]
    result = run("sample", "folk", "--num", "2", "--seed", "1", *args)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "checkpoints" / "folk").exists()  # nothing written for it
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record in records:
        fields, shape = headers(record["text"]), tune_shape(record["text"])
        assert record["ended"] and check_tune(record["text"]).valid, record
        assert (fields["O"], fields["R"], shape.bars, shape.parts) == ("irish", "jig", 16, 2)


def test_a_shipped_model_is_read_only(tmp_path):
    message = one_line_error(run("checkpoints", "prune", "folk"))
    assert "no run named 'folk'" in message


def test_a_text_model_asked_for_tunes_says_what_it_is(tmp_path):
    corpus = tmp_path / "verse.txt"
    corpus.write_text("the sea and the wall and the harbour\n" * 40)
    trained = run("--checkpoint-dir", tmp_path, "train", corpus, "--name", "verse",
                  "--max-steps", "2", "--hidden", "8", "--quiet")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    for args in (["--key", "D"], ["--midi", str(tmp_path / "out")], ["--rhythm", "jig"]):
        result = run("--checkpoint-dir", tmp_path, "sample", "verse", *args)
        assert "verse is a text model, not a tune model" in one_line_error(result)


def test_sample_midi_writes_the_tunes_and_one_midi_file_each(folk, tmp_path):
    out = tmp_path / "out"
    result = run("sample", folk, "--num", "4", "--seed", "1", "--midi", out, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    texts = split_tunes((out / "tunes.abc").read_text())
    assert texts == [r["text"] for r in records]
    for record in records:
        if "midi" in record:  # a tune music21 cannot read gets a warning instead
            assert Path(record["midi"]).read_bytes()[:4] == b"MThd"
    assert any("midi" in r for r in records)


def test_sample_meter_and_key_set_every_tune(folk):
    result = run("sample", folk, "--num", "3", "--seed", "2", "--meter", "3/4", "--key", "D")
    assert result.exit_code == 0, result.output
    for tune in split_tunes(result.stdout):
        assert (headers(tune)["M"], headers(tune)["K"]) == ("3/4", "D")


def test_a_header_prime_conditions_like_the_options(folk):
    by_prime = run("sample", folk, "--num", "2", "--seed", "2", "--prime", "M:3/4\nK:D\n")
    by_options = run("sample", folk, "--num", "2", "--seed", "2", "--meter", "3/4", "--key", "D")
    assert by_prime.stdout == by_options.stdout


def test_valid_only_reports_validity(folk):
    result = run("sample", folk, "--num", "2", "--seed", "1", "--valid-only", "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all("valid" in r for r in records)
    assert "valid (" in result.stderr and "resampled)" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--wav"], "--wav and --svg write next to the MIDI files: give --midi DIR"),
        (["--beam", "2", "--midi", "x"], "--beam writes text, not tunes: drop --midi"),
        (["--meter", "6/8", "--prime", "M:3/4\n"], "--meter 6/8 contradicts M:3/4 in --prime"),
        (["--meter", "six-eight"], "cannot read the meter 'six-eight'"),
        (["--key", "H#"], "cannot read the key 'H#'"),
        (["--key", "F#m"], "the model never wrote the key 'F#m' in a tune; it knows: "),
        (["--rhythm", "hornpipe"], "the model never wrote the rhythm 'hornpipe'"),
        (["--meter", "6/8", "--prime", "K:D\ndfa afd|gb|"], "breaks its bars at dfa afd|gb[|]"),
        (["--bars", "16", "--free"], "--bars and --parts need the grammar"),
        (["--prime", "|:dAF"], "music in --prime needs a key first"),
        (["--stop", "|]"], "--stop does not apply to tunes"),
    ],
)
def test_impossible_tune_requests_are_usage_errors(folk, args, message):
    result = run("sample", folk, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr


def test_wav_without_a_synthesizer_names_the_package(folk, tmp_path, monkeypatch):
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    result = run("sample", folk, "--midi", tmp_path / "o", "--wav")
    assert result.exit_code == 1
    assert "--wav needs timidity (Debian package timidity)" in result.stderr
    assert not (tmp_path / "o" / "tunes.abc").exists()  # refused before sampling


# ---------------------------------------------------------------------- the whole corpus


@pytest.mark.slow
def test_music21_folk_corpus_builds_and_round_trips_through_the_abc_tokenizer(tmp_path):
    out = tmp_path / "folk.abc"
    result = run("corpus", "folk", "-o", out, "--json")
    counts = json.loads(result.stdout)
    assert counts["tunes_read"] > 12_000 and counts["written"] > 11_000
    text = out.read_text(encoding="utf-8")
    tokenizer = tokenizer_for(text, "abc")
    ids = tokenizer.encode(text)
    assert 0 not in ids.tolist() and tokenizer.decode(ids) == text
    assert run("corpus", "folk", "-o", tmp_path / "again.abc").exit_code == 0
    assert (tmp_path / "again.abc").read_text(encoding="utf-8") == text


@pytest.mark.skipif(not shutil.which("abcm2ps"), reason="abcm2ps is not installed")
def test_a_tune_without_midi_still_gets_its_sheet_music(folk, tmp_path, monkeypatch):
    def no_midi(tune, path):
        raise export.MusicError("music21 cannot parse it: TypeError")

    monkeypatch.setattr(export, "write_midi", no_midi)
    out = tmp_path / "out"
    result = run("sample", folk, "--num", "2", "--seed", "1", "--midi", out, "--svg")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["tune-001.svg", "tune-002.svg", "tunes.abc"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: tune {n}: no MIDI file: music21 cannot parse it: TypeError" for n in (1, 2)
    ]
