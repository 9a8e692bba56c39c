"""The tune grammar: whatever tokens are chosen among those it allows, a tune that ends is valid
and has the form asked for. Random walks stand in for a model, so that every corner of the
grammar is tried, not only the ones a trained model likes."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.errors import UsageError
from chargen.music.check import check_tune
from chargen.music.grammar import CADENCE_BARS, Form, TuneGrammar, check_prime, ticks
from chargen.music.notation import DANCE_STYLES, RHYTHM_METERS
from chargen.music.stats import tune_shape
from tests.abc_fixtures import GOOD, corpus_of
from tests.helpers import tokenizer_for

# the fixtures' tunes, with the meters, units, keys, rhythms and bar lines a grammar must handle
EXTRA = """X:9
O:scottish
R:strathspey
T:Extra
M:2/4
L:1/16
K:Ador
A2|:(3cBA e>d c2B2|[1A4 A2:|[2A4-A2|]"""
SONG = """X:10
O:german
R:song
T:Lied
M:3/4
L:1/4
K:F
C|F2 A|c2 A|G2 F|]"""
TOKENIZER = tokenizer_for(corpus_of([*GOOD, EXTRA, SONG], 20), "abc")
NEWLINE = TOKENIZER.id_of("\n")


def walk(seed: int, form: Form, requested=None, steps: int = 1500):
    """Tokens drawn uniformly from those the grammar allows; (text, ended, grammar)."""
    rng = random.Random(seed)
    grammar = TuneGrammar(TOKENIZER, requested, form)
    pieces: list[str] = []
    for _ in range(steps):
        allowed = np.flatnonzero(grammar.allowed().numpy())
        token = int(rng.choice(allowed))
        grammar.advance(token)
        pieces.append(TOKENIZER.pieces[token])
        if pieces[-2:] == ["\n", "\n"]:
            return "X:" + "".join(pieces).rstrip("\n"), True, grammar
    return "X:" + "".join(pieces), False, grammar


FORMS = st.sampled_from(
    [Form(), Form(bars=4), Form(bars=8, parts=2), Form(parts=1), Form(parts=3), Form(12, 3)]
)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), form=FORMS)
def test_every_tune_the_grammar_lets_end_is_valid_and_has_its_form(seed, form):
    text, ended, grammar = walk(seed, form)
    assert grammar.dead_ends == 0, text
    if not ended:
        return
    assert check_tune(text, parse=False).problems == [], text
    shape = tune_shape(text)
    if form.bars is not None:
        assert shape.bars == form.bars, text
    if form.parts is not None:
        assert shape.parts == form.parts and shape.final_bar, text
    # a tune ends on its tonic or at the end of a part, or anywhere once it is long
    assert shape.tonic_end or shape.final_bar or grammar.music.closed >= CADENCE_BARS, text


def test_most_walks_end_when_a_form_bounds_them():
    endings = [walk(seed, Form(bars=8, parts=2))[1] for seed in range(20)]
    assert sum(endings) >= 15


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_requested_headers_are_written_in_order(seed):
    requested = {"M": "3/4", "K": "Am", "R": "reel", "O": "irish"}
    text, _, grammar = walk(seed, Form(), requested)
    lines = text.split("\n")
    assert lines[0][2:].isdigit() and not lines[0][2:].startswith("0")
    assert [line[:2] for line in lines[1:7]] == ["O:", "R:", "T:", "M:", "L:", "K:"]
    assert lines[1:3] == ["O:irish", "R:reel"] and lines[4] == "M:3/4" and lines[6] == "K:Am"
    title = lines[3][2:]
    assert title and not title[0].isdigit()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rhythm=st.sampled_from(["jig", "reel", "strathspey"]))
def test_a_dance_is_written_in_a_meter_and_a_tradition_of_its_rhythm(seed, rhythm):
    text, _, _ = walk(seed, Form(), {"R": rhythm})
    fields = dict((line[0], line[2:]) for line in text.split("\n")[1:7])
    assert fields["M"] in RHYTHM_METERS[rhythm], text
    assert fields.get("O", "irish") in DANCE_STYLES, text


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), meter=st.sampled_from(["6/8", "3/4", "2/4"]))
def test_a_meter_asked_for_gets_a_rhythm_written_in_it(seed, meter):
    text, _, _ = walk(seed, Form(), {"M": meter})
    fields = dict((line[0], line[2:]) for line in text.split("\n")[1:7])
    assert meter in RHYTHM_METERS.get(fields.get("R"), (meter,)), text


def test_a_value_the_model_never_wrote_is_refused_naming_those_it_knows():
    with pytest.raises(UsageError, match=r"never wrote the key 'F#m'.*knows: .*Ador"):
        TuneGrammar(TOKENIZER, {"K": "F#m"})


def test_a_prime_is_checked_bar_by_bar():
    fields = {"M": "6/8", "L": "1/8", "K": "D"}
    check_prime(TOKENIZER, fields, "A|dfa afd|gbg fed|")  # a pickup, then full bars
    with pytest.raises(UsageError, match=r"fed\[e\]"):
        check_prime(TOKENIZER, fields, "A|dfa afd|gbg fede|")  # one note too many
    with pytest.raises(UsageError, match=r"af\[\|\]"):
        check_prime(TOKENIZER, fields, "A|dfa afd|gbg fed|dfa af|")  # a bar line too early


def test_ticks_are_whole_for_every_length_the_grammar_meets():
    from fractions import Fraction

    for unit in (1, 2, 4, 8, 16, 32, 64):
        for multiplier in (Fraction(1, 8), Fraction(3, 2), Fraction(7, 4)):
            for q, p in ((2, 3), (3, 2), (2, 5), (4, 7), (2, 9)):
                assert ticks(Fraction(1, unit) * multiplier * q / p) is not None
