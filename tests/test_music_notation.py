from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.music.bars import bar_problems, bars
from chargen.music.notation import (
    TUNE_END,
    body,
    clean_tune,
    default_unit,
    headers,
    meter_length,
    music_key,
    parse_header_text,
    renumber,
    split_tunes,
)
from tests.abc_fixtures import BROKEN, GOOD, JIG, REEL, WALTZ, corpus_of
from tests.helpers import tokenizer_for


def lengths(tune: str) -> list[Fraction]:
    return [bar.length for bar in bars(tune)]


# ------------------------------------------------------------------------------------ tunes


def test_split_tunes_cuts_at_x_lines_and_blank_lines_and_skips_the_file_header():
    text = "%abc-2.1\nI:linebreak $\n\n" + JIG + "\n\n\n" + REEL + "\n" + WALTZ + "\n"
    assert split_tunes(text) == [JIG, REEL, WALTZ]


def test_split_tunes_reads_windows_line_ends():
    assert split_tunes(JIG.replace("\n", "\r\n")) == [JIG]


def test_text_without_an_x_line_is_one_tune_and_empty_text_none():
    assert split_tunes("just some words\nand more\n") == ["just some words\nand more"]
    assert split_tunes("  \n\n") == []


def test_headers_body_and_renumber():
    assert headers(JIG) == {"X": "1", "T": "The Lamplighter's Jig", "R": "jig", "M": "6/8",
                            "L": "1/8", "K": "D"}  # fmt: skip
    assert body(WALTZ).splitlines()[0] == "E2|A2 c2 e2|a3 g e2|f>e d2 ^c2|d4 ed|"
    assert renumber(JIG, 42).splitlines()[0] == "X:42"
    assert renumber("T:x\nK:C\nabc", 3) == "X:3\nT:x\nK:C\nabc"


def test_a_body_line_starting_with_a_note_and_a_repeat_is_music_not_a_field():
    tune = "X:1\nT:t\nM:2/4\nL:1/8\nK:C\nabcd|cdef|\nB:|gfed|c4|]"
    assert "B:|gfed|c4|]" in clean_tune(tune).tune


def test_parse_header_text_splits_fields_from_music():
    assert parse_header_text("M:6/8\nK:D\n") == ({"M": "6/8", "K": "D"}, "")
    assert parse_header_text("M:6/8\nK:D\n|:dAF") == ({"M": "6/8", "K": "D"}, "|:dAF")


# --------------------------------------------------------------------------------- cleaning


def test_clean_tune_keeps_musical_headers_in_order_and_drops_noise():
    raw = (
        "X:17\nT:Quay Steps\nT:Alternative title\nC:Somebody\nZ:transcribed by nobody\n"
        "N:play it slowly\nB:a book\nS:a session\nO:a town\nR:hornpipe\nQ:1/4=100\n"
        "M: 4/4\nK: G\n"
        '%% a directive\n"4"GA"^Slow"Bc "D7"d2 B2|  c2  A2 % a comment\n'
        "G4 \\\n"
        "B4|]\n"
    )
    cleaned = clean_tune(raw, number=5)
    assert cleaned.reason is None
    assert cleaned.tune == (
        'X:5\nR:hornpipe\nT:Quay Steps\nM:4/4\nL:1/8\nK:G\nGABc "D7"d2 B2| c2 A2\nG4 B4|]'
    )


def test_clean_tune_keeps_key_and_meter_changes_inside_the_music():
    raw = "X:1\nT:t\nM:3/4\nL:1/8\nK:D\nA2 B2 c2|d6|\nP:B\nK:G\nM:2/4\nG2 B2|[K:D]d4|]"
    tune = clean_tune(raw).tune
    assert body(tune) == "A2 B2 c2|d6|\nK:G\nM:2/4\nG2 B2|[K:D]d4|]"


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("X:1\nT:t\nM:2/4\nL:1/8\nV:1\nK:C\nabcd|", "several voices"),
        ("X:1\nT:t\nM:2/4\nabcd|", "no K: field"),
        ("X:1\nT:t\nK:C\nabcd|", "no M: field"),
        ("X:1\nT:t\nM:2/4\nK:C\n% only a comment\n", "no music"),
    ],
)
def test_clean_tune_drops_tunes_it_cannot_use(raw, reason):
    assert clean_tune(raw).reason == reason


def test_clean_tune_adds_the_default_unit_length_and_a_title():
    assert headers(clean_tune("X:1\nM:2/4\nK:C\nabcd|").tune)["L"] == "1/16"
    assert headers(clean_tune("X:1\nM:6/8\nK:C\nabc|").tune)["L"] == "1/8"
    assert headers(clean_tune("X:1\nM:6/8\nK:C\nabc|").tune)["T"] == "Untitled"


def test_a_cleaned_tune_never_holds_a_blank_line():
    raw = "X:1\nT:t\nM:2/4\nK:C\nab cd|\n\n   \nef ga|"
    assert TUNE_END not in clean_tune(raw).tune + "\n"


def test_music_key_ignores_number_title_and_spacing():
    other = renumber(JIG, 9).replace("T:The Lamplighter's Jig", "T:Another Name")
    assert music_key(other.replace("dfa afd", "dfaafd")) == music_key(JIG)
    assert music_key(JIG) != music_key(REEL)


# ------------------------------------------------------------------------------ meter, bars


def test_meter_length_reads_common_cut_compound_and_additive_meters():
    assert meter_length("C") == meter_length("4/4") == 1
    assert meter_length("C|") == 1
    assert meter_length("6/8") == Fraction(3, 4)
    assert meter_length("2+3/8") == Fraction(5, 8)
    assert meter_length("none") is None and meter_length("FREI") is None
    assert default_unit("2/4") == "1/16" and default_unit("3/4") == "1/8"


def test_fixture_tunes_have_the_bars_they_were_written_with():
    assert lengths(JIG) == [Fraction(1, 8)] + [Fraction(3, 4)] * 3 + [Fraction(5, 8)] * 2 + [
        Fraction(1, 8)
    ] + [Fraction(3, 4)] * 3 + [Fraction(5, 8)]
    assert lengths(REEL) == [Fraction(1)] * 9
    assert lengths(WALTZ) == [Fraction(1, 4)] + [Fraction(3, 4)] * 7
    assert all(bar_problems(bars(tune)) == [] for tune in GOOD)


@pytest.mark.parametrize(
    "music, expected",
    [
        ("(3abc d2|", Fraction(1, 2)),  # three in the time of two
        ("(3:2:2a2b d2|", Fraction(1, 2)),  # (p:q:r) with r = 2 notes
        ("a>b c<d|", Fraction(1, 2)),  # broken rhythm keeps the pair's length
        ("a>>b c2|", Fraction(1, 2)),
        ("[ceg]2 [c2e2]2|", Fraction(3, 4)),  # a chord lasts as its first note, times its own
        ("{ga}f4 z2|", Fraction(3, 4)),  # grace notes take no time
        ("a/b/ c// d//e3/ f3/2 g/|", Fraction(5, 8)),  # 1/2 1/2 1/4 1/4 3/2 3/2 1/2
        ('"Am"!trill!.a~b Hc uvd|', Fraction(1, 2)),  # chord symbols and decorations: no time
        ("^c'2 _B,2 =f2|", Fraction(3, 4)),
    ],
)
def test_bar_lengths_follow_abc_rules(music, expected):
    tune = f"X:1\nT:t\nM:none\nL:1/8\nK:C\n{music}"
    assert lengths(tune)[0] == expected


def test_meter_and_unit_changes_inside_the_music_are_followed():
    tune = "X:1\nT:t\nM:3/4\nL:1/8\nK:C\nabc def|\nM:2/4\nabcd|[L:1/4]ab|]"
    measured = bars(tune)
    assert [b.length for b in measured] == [Fraction(3, 4), Fraction(1, 2), Fraction(1, 2)]
    assert [b.expected for b in measured] == [Fraction(3, 4), Fraction(1, 2), Fraction(1, 2)]
    assert bar_problems(measured) == []


def test_a_line_break_closes_a_bar_only_when_it_is_full():
    # Essen-style: whole bars with no bar line at the end of the line
    full = "X:1\nT:t\nM:2/4\nL:1/8\nK:C\nabcd|efga\nabcd|c4|]"
    assert lengths(full) == [Fraction(1, 2)] * 4
    # a bar split over two lines stays one bar
    split = "X:1\nT:t\nM:2/4\nL:1/8\nK:C\nabcd|ef\nga|c4|]"
    assert lengths(split) == [Fraction(1, 2)] * 3


def test_multi_bar_rests_count_as_full_bars():
    measured = bars("X:1\nT:t\nM:3/4\nL:1/8\nK:C\nZ4|abc def|]")
    assert measured[0].rests == 4 and bar_problems(measured) == []


def test_bar_problems_name_long_short_and_unreadable_bars():
    assert bar_problems(bars(BROKEN["bar too long"])) == [(2, "too long: 7/8 for 3/4")]
    assert bar_problems(bars(BROKEN["bar too short"])) == [(2, "too short: 5/8 for 3/4")]
    assert bar_problems(bars(BROKEN["unreadable symbol"])) == [(2, "unreadable symbols: #")]


def test_short_bars_are_allowed_at_the_ends_and_next_to_repeats_only():
    ends = "X:1\nT:t\nM:3/4\nL:1/8\nK:C\nc2|abc def|g4|]"
    assert bar_problems(bars(ends)) == []
    repeats = "X:1\nT:t\nM:3/4\nL:1/8\nK:C\nc2|abc def|g4:|\n|:c2|abc def|g4|]"
    assert bar_problems(bars(repeats)) == []
    middle = "X:1\nT:t\nM:3/4\nL:1/8\nK:C\nabc def|g4|abc def|g6|]"
    assert bar_problems(bars(middle)) == [(2, "too short: 1/2 for 3/4")]


# -------------------------------------------------------------------------- music tokens


def pieces(text: str) -> list[str]:
    tokenizer = tokenizer_for(text, "abc")
    return [tokenizer.pieces[i] for i in tokenizer.encode(text)]


def test_abc_level_cuts_music_into_musical_tokens():
    assert pieces("M:6/8\nK:Dmix\n") == ["M:", "6/8", "\n", "K:", "Dmix", "\n"]
    assert pieces("^c'2 _B,/2 =f3/2") == ["^c'", "2", " ", "_B,", "/2", " ", "=f", "3/2"]
    assert pieces("|:(3abc:|2[1") == ["|:", "(3", "a", "b", "c", ":|2", "[1"]
    assert pieces('!trill!"Am"[ceg]2-|]') == [
        "!trill!",
        '"Am"',
        "[",
        "c",
        "e",
        "g",
        "]",
        "2",
        "-",
        "|]",
    ]
    assert pieces("X:1234\n") == ["X:", "1", "2", "3", "4", "\n"]


def test_abc_level_round_trips_the_fixture_corpus_exactly():
    text = corpus_of(GOOD + list(BROKEN.values()), 20)
    tokenizer = tokenizer_for(text, "abc")
    ids = tokenizer.encode(text)
    assert 0 not in ids.tolist()
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text)  # music tokens are longer than characters


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ABCabc,'^_=|:[]()23/<>!\"zX \nMK%é")), max_size=120))
def test_abc_level_round_trip_is_exact_on_any_text(text):
    tokenizer = tokenizer_for(text, "abc")
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_char_level_still_round_trips_abc():
    text = corpus_of(GOOD, 5)
    tokenizer = tokenizer_for(text, "char")
    assert tokenizer.decode(tokenizer.encode(text)) == text
