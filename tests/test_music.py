import time

import pytest

from chargen.errors import CorpusError, MusicError
from chargen.music import export
from chargen.music.check import check_tune, summarize
from chargen.music.export import write_midi
from chargen.music.folk import abc_files, build_corpus
from chargen.music.notation import headers, split_tunes
from chargen.music.novelty import NoveltyIndex
from tests.abc_fixtures import BROKEN, GOOD, JIG, REEL, WALTZ

music21 = pytest.importorskip("music21")


def check_text(text: str, parse: bool = True, timeout: float = 10.0):
    return [check_tune(t, i + 1, parse, timeout) for i, t in enumerate(split_tunes(text))]


@pytest.fixture
def tune_files(tmp_path):
    folder = tmp_path / "tunes"
    (folder / "more").mkdir(parents=True)
    (folder / "a.abc").write_text(JIG + "\n\n" + REEL + "\n", encoding="utf-8")
    # the reel again under another number and title: a duplicate
    again = REEL.replace("X:2", "X:9").replace("Harbour Wall Reel", "Another Name")
    (folder / "more" / "b.abc").write_text(WALTZ + "\n\n" + again + "\n", encoding="latin-1")
    (folder / "c.abc").write_text(BROKEN["bar too long"] + "\n", encoding="utf-8")
    (folder / "notes.txt").write_text("not a tune file")
    return folder


# ------------------------------------------------------------------------------------ corpus


def test_abc_files_finds_abc_files_in_folders_in_order(tune_files):
    names = [p.name for p in abc_files([tune_files])]
    assert names == ["a.abc", "c.abc", "b.abc"]
    with pytest.raises(CorpusError, match="no such file"):
        abc_files([tune_files / "missing.abc"])


def test_build_corpus_dedupes_drops_irregular_tunes_and_is_deterministic(tune_files):
    report = build_corpus(abc_files([tune_files]), seed=3)
    assert (report.tunes_read, report.duplicates, report.irregular, report.written) == (5, 1, 1, 3)
    tunes = split_tunes(report.text)
    assert sorted(headers(t)["T"] for t in tunes) == sorted(headers(t)["T"] for t in GOOD)
    assert [t.split("\n", 1)[0] for t in tunes] == ["X:1", "X:2", "X:3"]
    assert report.text.endswith("|]\n") or report.text.endswith(":|\n")
    assert "\n\n\n" not in report.text
    assert build_corpus(abc_files([tune_files]), seed=3).text == report.text


def test_build_corpus_keeps_irregular_tunes_when_asked(tune_files):
    report = build_corpus(abc_files([tune_files]), keep_irregular=True)
    assert report.irregular == 0 and report.written == 4


def test_build_corpus_without_usable_tunes_says_so(tmp_path):
    (tmp_path / "x.abc").write_text("X:1\nT:no key\nabc|\n")
    with pytest.raises(CorpusError, match="no usable tunes"):
        build_corpus([tmp_path / "x.abc"])


# ------------------------------------------------------------------------------------- check


def test_known_good_tunes_pass_the_check():
    checks = [check_tune(t, i + 1) for i, t in enumerate(GOOD)]
    assert [c.problems for c in checks] == [[], [], []]
    assert all(c.parsed for c in checks)
    assert [c.bars for c in checks] == [11, 9, 8]


@pytest.mark.parametrize(
    "name, problem",
    [
        ("missing headers", "missing header M:, K:"),
        ("unknown key", "unreadable key K:Q"),
        ("bar too long", "bar 2: too long: 7/8 for 3/4"),
        ("bar too short", "bar 2: too short: 5/8 for 3/4"),
        ("unreadable symbol", "bar 2: unreadable symbols: #"),
        ("no music", "no music"),
        ("stray number", "line 2 is neither a header field nor music: '51'"),
        ("number for a title", "the title is only a number: T:9"),
        ("tie to another note", "a tie from B to d"),
        ("length of no single note", "G5: a length no single note has"),
    ],
)
def test_broken_tunes_fail_the_check_saying_why(name, problem):
    check = check_tune(BROKEN[name], parse=False)
    assert not check.valid
    assert problem in check.problems


def test_a_tune_music21_cannot_read_fails_with_its_reason():
    check = check_tune("X:1\nT:t\nM:3/4\nL:1/8\nK:G\nG2 B2 d2|[g e2 e2:|")
    assert check.parsed is False
    assert any(p.startswith("music21 cannot parse it") for p in check.problems)


@pytest.mark.parametrize(
    "garbage",
    [
        "\x00\x01\x02 binary-ish \ufffd",
        "X:\nT:\nM:/\nL:0/0\nK:\n((((((((([[[[[{{{{",
        "X:1\nM:999999999/1\nL:1/999999999\nK:C\n" + "a" * 5000,
        "|" * 3000,
        'X:1\nT:t\nM:4/4\nK:C\n"unclosed quote abc|!unclosed deco def|',
    ],
)
def test_garbage_never_crashes_the_checker(garbage):
    checks = check_text(garbage, timeout=1.0)  # the absurd meter keeps music21 busy that long
    assert checks and not any(c.valid for c in checks)


def test_a_tune_that_would_hang_music21_is_cut_off(monkeypatch):
    def slow_parse(text, format=None):
        time.sleep(5)

    monkeypatch.setattr(music21.converter, "parseData", slow_parse)
    started = time.perf_counter()
    check = check_tune(JIG, timeout=0.2)
    assert time.perf_counter() - started < 2
    assert "music21 took more than 0.2s" in check.problems


def test_summary_counts_the_valid_fraction():
    checks = check_text("\n\n".join([JIG, BROKEN["bar too long"], REEL, WALTZ]), parse=False)
    assert summarize(checks) | {"bars": 0} == {
        "tunes": 4,
        "valid": 3,
        "valid_fraction": 0.75,
        "bars": 0,
    }


# ------------------------------------------------------------------------------------ export


def test_midi_file_is_written_and_reads_back_with_the_same_notes(tmp_path):
    path = write_midi(WALTZ, tmp_path / "waltz.mid")
    assert path.read_bytes()[:4] == b"MThd"
    original = music21.converter.parseData(WALTZ, format="abc").flatten().notes
    back = music21.converter.parse(str(path)).flatten().notes

    def notes(stream):
        return [(n.offset, tuple(p.nameWithOctave for p in n.pitches)) for n in stream]

    # music21 reads the final dotted half note back as a half and a quarter; all else is equal
    assert notes(back)[: len(original) - 1] == notes(original)[:-1]
    assert notes(original)[:4] == [(0, ("E4",)), (1, ("A4",)), (2, ("C5",)), (3, ("E5",))]
    assert sum(n.quarterLength for n in back) == sum(n.quarterLength for n in original) == 22


UNREADABLE = "X:1\nT:t\nM:3/4\nL:1/8\nK:G\nG2 B2 d2|[g e2 e2:|"  # music21 cannot parse it


def test_midi_of_a_tune_music21_cannot_read_is_a_music_error_without_abc2midi(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    with pytest.raises(MusicError, match="music21 cannot parse it"):
        write_midi(UNREADABLE, tmp_path / "x.mid")


@pytest.mark.skipif(not export.shutil.which("abc2midi"), reason="abc2midi is not installed")
def test_midi_of_a_tune_music21_cannot_read_comes_from_abc2midi(tmp_path):
    assert write_midi(UNREADABLE, tmp_path / "x.mid").read_bytes()[:4] == b"MThd"


def test_each_later_part_repeats_from_its_own_start_at_the_tempo_of_its_rhythm(tmp_path):
    # "A :| B :|", the layout of 1,127 corpus tunes: B repeats alone, as abc2midi plays it
    tune = "X:1\nT:t\nR:jig\nM:6/8\nL:1/8\nK:D\ndfa afd|gbg fed:|\ncde fga|d3 d3:|"
    back = music21.converter.parse(str(write_midi(tune, tmp_path / "x.mid")))
    assert back.flatten().highestTime == 4 * 2 * 3  # 4 bars of 3 quarter notes: AA BB
    marks = back.recurse().getElementsByClass(music21.tempo.MetronomeMark)
    assert [m.getQuarterBPM() for m in marks][:1] == [116 * 1.5]  # Q:3/8=116, a jig's


def test_missing_tools_are_named_with_their_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    with pytest.raises(MusicError, match=r"--wav needs timidity \(Debian package timidity\)"):
        export.write_wav(tmp_path / "x.mid", tmp_path / "x.wav")
    with pytest.raises(MusicError, match=r"--svg needs abcm2ps \(Debian package abcm2ps\)"):
        export.write_svg(JIG, tmp_path / "x.svg")


@pytest.mark.skipif(not export.shutil.which("abcm2ps"), reason="abcm2ps is not installed")
def test_svg_sheet_music_is_written(tmp_path):
    path = export.write_svg(JIG, tmp_path / "jig.svg")
    assert path.read_text().lstrip().startswith("<?xml") and "<svg" in path.read_text()


@pytest.mark.skipif(not export.shutil.which("timidity"), reason="timidity is not installed")
def test_wav_is_rendered_from_midi(tmp_path):
    midi = write_midi(JIG, tmp_path / "jig.mid")
    wav = export.write_wav(midi, tmp_path / "jig.wav")
    assert wav.read_bytes()[:4] == b"RIFF" and wav.stat().st_size > 10_000


# ----------------------------------------------------------------------------------- novelty


def test_novelty_flags_exact_copies_and_measures_partial_ones():
    index = NoveltyIndex("\n\n".join(GOOD) + "\n")
    copy = index.novelty(JIG.replace("X:1", "X:7").replace("Jig", "Copy"))
    assert copy.exact_copy and copy.copied_ngrams == 1.0
    assert copy.longest_copy == copy.music_chars

    half = "X:1\nT:h\nM:6/8\nL:1/8\nK:D\nA|dfa afd|gbg fed|B3 G3|E3 C3|D6|]"
    partial = index.novelty(half)
    assert not partial.exact_copy
    assert partial.longest_copy == len("A|dfaafd|gbgfed|")
    assert 0 < partial.copied_ngrams < 1

    new = index.novelty("X:1\nT:n\nM:2/4\nL:1/8\nK:C\nC,D,E,F,|G,A,B,C|]")
    assert new.copied_ngrams == 0 and not new.exact_copy
