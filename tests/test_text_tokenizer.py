import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from chargen.errors import TokenizerError
from chargen.text.tokenizer import UNK, Tokenizer
from tests.helpers import tokenizer_for

# Text with the awkward parts on purpose: newlines, CRLF, tabs, space runs, non-ASCII.
awkward = st.text(
    alphabet=st.sampled_from(list("ab c\n\r\t  éü中🙂,.!'-_0")) | st.characters(codec="utf-8"),
    max_size=200,
)


@given(awkward)
def test_char_round_trip_is_exact(text):
    tokenizer = tokenizer_for(text, "char")
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(awkward, st.data())
def test_char_round_trip_on_any_text_over_the_training_vocabulary(train_text, data):
    tokenizer = tokenizer_for(train_text, "char")
    alphabet = sorted(set(train_text))
    text = data.draw(st.text(alphabet=st.sampled_from(alphabet), max_size=100)) if alphabet else ""
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(awkward)
def test_word_round_trip_is_exact_when_the_vocabulary_holds_every_piece(text):
    tokenizer = tokenizer_for(text, "word", vocab_size=10_000)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(train_text=awkward, text=awkward, vocab_size=st.integers(2, 300))
def test_bpe_round_trip_is_exact_over_the_training_alphabet(train_text, text, vocab_size):
    tokenizer = tokenizer_for(train_text, "bpe", vocab_size=vocab_size)
    known = "".join(c for c in text if c in set(train_text))
    assert tokenizer.decode(tokenizer.encode(train_text)) == train_text
    assert tokenizer.decode(tokenizer.encode(known)) == known
    assert tokenizer.vocab_size <= max(vocab_size, len(set(train_text)) + 1)


@pytest.mark.parametrize("level", ["char", "word", "bpe"])
@settings(max_examples=50)
@given(train_text=awkward, text=awkward)
def test_fast_encoding_matches_the_hugging_face_tokenizer(
    level, train_text, text, tmp_path_factory
):
    tokenizer = tokenizer_for(train_text, level)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tokenizer.to_json(), encoding="utf-8")
    plain = HFTokenizer.from_file(str(path))  # the saved file, read by plain `tokenizers`
    expected = plain.encode(text, add_special_tokens=False).ids if text else []
    assert tokenizer.encode(text).tolist() == expected


def test_word_level_keeps_whitespace_and_punctuation_as_tokens():
    tokenizer = tokenizer_for("Hello,  world!\n", "word")
    pieces = [tokenizer.pieces[i] for i in tokenizer.encode("Hello,  world!\n")]
    assert pieces == ["Hello", ",", " ", " ", "world", "!", "\n"]


def test_word_level_caps_the_vocabulary_and_maps_the_rest_to_unk():
    text = "a a a a b b b c c d\n"
    tokenizer = tokenizer_for(text, "word", vocab_size=4)  # <unk>, 'a', ' ', 'b'
    assert tokenizer.vocab_size == 4
    assert tokenizer.decode(tokenizer.encode("a d")) == f"a {UNK}"


def test_word_level_min_freq_drops_rare_words():
    tokenizer = tokenizer_for("x x x y\n", "word", min_freq=2)
    assert "y" not in tokenizer.pieces and "x" in tokenizer.pieces


def test_vocabulary_ids_are_deterministic():
    text = "banana bread, banana\n"
    first = tokenizer_for(text, "word").pieces
    assert first == tokenizer_for(text, "word").pieces
    assert first[:3] == [UNK, " ", "banana"]  # <unk>, then by falling frequency


def test_unknown_characters_encode_to_unk_and_are_named():
    tokenizer = tokenizer_for("abc", "char")
    assert tokenizer.encode("abz").tolist()[-1] == 0
    assert tokenizer.unknown_pieces("xaby") == ["x", "y"]


def test_saved_tokenizer_is_a_standard_file_with_the_fuse_decoder():
    tokenizer = tokenizer_for("hi there\n", "char")
    data = json.loads(tokenizer.to_json())
    assert data["model"]["type"] == "WordLevel"
    assert data["decoder"]["type"] == "Fuse"
    plain = HFTokenizer.from_str(tokenizer.to_json())
    ids = plain.encode("the\nhi", add_special_tokens=False).ids
    assert plain.decode(ids) == "the\nhi"


def test_bpe_tokens_span_several_characters_and_count_them_for_bits_per_char():
    text = "the cat and the hat and the bat sat on the mat\n" * 20
    tokenizer = tokenizer_for(text, "bpe", vocab_size=60)
    ids = tokenizer.encode(text)
    assert len(ids) < len(text) / 2.5  # " the", " and", ... are one token each
    assert int(tokenizer.piece_lengths[ids].sum()) == len(text)
    assert all("\n" not in tokenizer.pieces[i] or tokenizer.pieces[i] == "\n" for i in ids)


def test_bpe_names_the_characters_it_cannot_spell():
    tokenizer = tokenizer_for("the cat\n", "bpe", vocab_size=30)
    assert tokenizer.unknown_pieces("the dog") == ["d", "o", "g"]
    assert tokenizer.encode("dot").tolist()[:2] == [0, 0]


def test_saved_bpe_tokenizer_reloads_and_its_merges_are_checked():
    tokenizer = tokenizer_for("the cat and the hat\n" * 5, "bpe", vocab_size=40)
    saved = json.loads(tokenizer.to_json())
    assert saved["model"]["type"] == "BPE"
    again = Tokenizer.from_json(tokenizer.to_json(), "bpe")
    assert again.encode("the hat").tolist() == tokenizer.encode("the hat").tolist()
    saved["model"]["merges"][0] = ["th", "zzz"]
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_json(json.dumps(saved), "bpe")
    del saved["model"]["merges"]
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_json(json.dumps(saved), "bpe")


def test_bpe_pieces_kept_between_calls_survive_threads_and_stay_short(monkeypatch):
    import threading

    import chargen.text.tokenizer as module

    monkeypatch.setattr(module, "_PIECES_KEPT", 5)  # the cache starts again almost every call
    tokenizer = tokenizer_for("the cat and the hat sat on a mat\n" * 3, "bpe", vocab_size=40)
    texts = [f"the {'cat ' * n}sat on {'a mat ' * (5 - n)}\n" for n in range(4)]
    expected = [tokenizer._hf.encode(t, add_special_tokens=False).ids for t in texts]
    failures = []

    def encode_many(k):
        for _ in range(100):
            if tokenizer.encode(texts[k]).tolist() != expected[k]:
                failures.append(k)

    threads = [threading.Thread(target=encode_many, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    word = "a" * 100
    assert tokenizer.decode(tokenizer.encode(f"the {word}\n")) == f"the {word}\n"
    assert all(len(piece) <= module._LONGEST_KEPT for piece in tokenizer._spelled)


def test_saved_bpe_tokenizer_with_repeated_merges_or_non_text_is_refused():
    tokenizer = tokenizer_for("the cat and the hat\n" * 5, "bpe", vocab_size=40)
    saved = json.loads(tokenizer.to_json())
    saved["model"]["merges"].append(saved["model"]["merges"][0])
    with pytest.raises(TokenizerError, match="repeats"):
        Tokenizer.from_json(json.dumps(saved), "bpe")
    for level in ("bpe", "word"):
        broken = json.loads(tokenizer_for("the cat\n", level, vocab_size=40).to_json())
        vocab = broken["model"]["vocab"]
        vocab["\ud800"] = len(vocab)  # a lone surrogate: JSON can hold it, Rust cannot
        with pytest.raises(TokenizerError, match="not text"):
            Tokenizer.from_json(json.dumps(broken), level)


def test_malformed_tokenizer_json_is_a_tokenizer_error():
    with pytest.raises(TokenizerError):
        Tokenizer.from_json("{not json", "char")


def test_encoding_returns_int64_arrays():
    ids = tokenizer_for("abc", "char").encode("abc")
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 3]


@settings(max_examples=200)
@given(
    train_text=st.text(st.characters(max_codepoint=127)),
    text=st.text(st.characters(max_codepoint=127)),
)
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_ascii_fast_path_matches_the_hugging_face_tokenizer(level, train_text, text):
    tokenizer = tokenizer_for(train_text, level, vocab_size=10_000 if level == "word" else 300)
    saved = HFTokenizer.from_str(tokenizer.to_json())  # the file a run keeps, as HF reads it
    expected = saved.encode(text, add_special_tokens=False).ids if text else []
    assert tokenizer.encode(text).tolist() == expected


def test_abc_header_values_are_one_token_and_older_abc_runs_keep_their_cuts():
    from chargen.text.tokenizer import ABC_PATTERN_0_1

    text = "X:1\nO:irish\nR:slip jig\nT:A\nM:9/8\nL:1/8\nK:Ador\nA2B|]\n"
    tokenizer = tokenizer_for(text, "abc")
    pieces = [tokenizer.pieces[i] for i in tokenizer.encode(text)]
    assert pieces[3:8] == ["O:", "irish", "\n", "R:", "slip jig"]
    saved = json.loads(tokenizer.to_json())
    saved["pre_tokenizer"]["pattern"]["Regex"] = ABC_PATTERN_0_1  # a run made by chargen 0.1
    older = Tokenizer.from_json(json.dumps(saved), "abc")
    assert older.pattern == ABC_PATTERN_0_1
    assert len(tokenizer.encode("R:slip jig\n")) == 3 < len(older.encode("R:slip jig\n"))
