"""Tokenizers: text to token ids and back, built on Hugging Face ``tokenizers``.

Each level cuts text into pieces with a pre-tokenizer regex and decodes with the ``Fuse``
decoder, so decoding concatenates pieces instead of joining them with spaces. Most levels are a
``WordLevel`` model, one token a piece:

- ``char``: every character is a piece (``[\\s\\S]``: a plain ``.`` would skip newlines).
- ``word``: runs of word characters, single punctuation marks and single whitespace characters are
  pieces, so whitespace and punctuation survive the round trip exactly.
- ``abc``: music tokens of ABC notation (header fields, notes with accidentals and octave marks,
  durations, bar lines and repeats, decorations; see ``ABC_PATTERN``), and single characters for
  everything else, such as titles. Its texts are separate pieces (tunes) divided by a blank line.

The ``bpe`` level is a ``BPE`` model (byte-pair encoding over characters, Sennrich et al. 2016):
pieces are words with the space before them, numbers, runs of punctuation, single newlines and
other whitespace, and each piece is spelled with learned sub-word tokens of one or more
characters (``--vocab-size`` of them, single characters included). A token stands for two
characters of tinyshakespeare on average at 512 tokens, so a recurrent model reads twice the
text a step; its losses per character stay comparable with the character level's.

The saved ``tokenizer.json`` is a standard file that ``tokenizers.Tokenizer.from_file`` loads and
that encodes exactly as this module does. Encoding a whole corpus goes through fast paths (a numpy
lookup for characters, batched encoding for words, Python's ``re`` and spelled pieces kept for
ASCII sub-words) that give the same ids as the Hugging Face tokenizer; one ``encode`` call on a
megabyte string would take seconds.

This module knows nothing about models, files on disk or the command line.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from chargen.config import LEVELS
from chargen.errors import TokenizerError, UsageError

UNK = "<unk>"
"""Stands for any piece outside the vocabulary; always id 0."""

PIECE_END = "\n\n"
"""What ends one piece of a corpus made of separate pieces (an ABC tune): a blank line."""

ABC_PATTERN = "|".join(
    [
        r"^[A-Za-z]:(?!\|)",  # a field at the start of a line: X: T: M: K: ... (not "B:|")
        r"(?<=^[MLKRO]:)[^\n]+",  # the whole value of M:, L:, K:, R:, O: (6/8, Dmix, jig)
        r"\[[A-Za-z]:[^\]\n]*\]",  # inline field: [K:G] [M:3/4]
        r'"[^"\n]*"',  # chord symbol or annotation
        r"![^!\s|]+!",  # decoration: !trill! !fermata!
        r"\[\||:*\|+[\]:]*\d*|::+\d*|\[\d+",  # bar lines, repeats, first and second endings
        r"\(\d(?::\d*){0,2}",  # tuplet: (3 (3:2:3
        r"[_^=]*[A-Ga-gzx][,']*",  # note or rest with accidentals and octave marks
        r"\d*/+\d*|\d",  # duration: 2 /2 3/2 // 3/ (single digits: X:1234 is four pieces)
        r"[<>]+",  # broken rhythm
        r"[\s\S]",  # anything else, one character at a time (newlines included)
    ]
)
"""Pieces of the ``abc`` level, tried in order at each position.

Every character falls into exactly one piece and no piece spans a newline, so decoding the
pieces gives the text back exactly. A header's value is one piece, so that a sampler can ask
for a meter, key, rhythm or origin as one token.
"""

ABC_PATTERN_0_1 = ABC_PATTERN.replace("MLKRO", "MLK")
"""The ``abc`` pattern of chargen 0.1 (R: and O: values cut one character at a time): runs made
with it keep it."""


@dataclass(frozen=True)
class Level:
    """A tokenizer level: how text is cut into pieces, and whether its corpora are one text."""

    name: str
    pattern: str  # the pre-tokenizer regex; every character falls into exactly one piece
    separate: bool = False  # a corpus is separate pieces (tunes), each ending at ``PIECE_END``
    subwords: bool = False  # a BPE model spells each piece with learned tokens (else one token)
    older: tuple[str, ...] = ()  # patterns of earlier versions, which their runs keep


LEVEL_SPECS = {
    "char": Level("char", r"[\s\S]"),  # [\s\S], not ".": a plain dot skips newlines
    "word": Level("word", r"\w+|[^\w\s]|\s"),
    "abc": Level("abc", ABC_PATTERN, separate=True, older=(ABC_PATTERN_0_1,)),
    # a word with the space before it, a number, punctuation, a newline alone, other whitespace
    # (its last space left to the word after it)
    "bpe": Level(
        "bpe",
        r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\n|[^\S\n]+(?!\S)|[^\S\n]+",
        subwords=True,
    ),
}
assert tuple(LEVEL_SPECS) == LEVELS, "config.LEVELS and the registry must list the same levels"

_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+|[^A-Za-z0-9_\s]|\s", re.ASCII)
"""The word level's pieces for ASCII text, where Rust's Unicode classes agree with these."""
_ASCII_SUBWORD_PIECE = re.compile(
    r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\n|[^\S\n]+(?!\S)|[^\S\n]+", re.ASCII
)
"""The bpe level's pieces for ASCII text: its pattern with the letters, digits and whitespace
that Unicode's classes hold within ASCII."""
_PIECES_KEPT = 1 << 18  # a sub-word tokenizer's cache of spelled pieces starts again past this
_LONGEST_KEPT = 64  # characters of the longest piece the cache keeps
_CHUNK_CHARS = 1 << 16  # corpus pieces handed to encode_batch; big enough to amortise call cost


class Tokenizer:
    """A trained tokenizer of one level, wrapping a Hugging Face ``Tokenizer``."""

    def __init__(self, hf: HFTokenizer, level: str, pattern: str | None = None):
        if level not in LEVELS:
            raise UsageError(f"unknown level {level!r}; choose one of: {', '.join(LEVELS)}")
        self._hf = hf
        self.level = level
        self.spec = LEVEL_SPECS[level]
        self.pattern = pattern or self.spec.pattern  # how this tokenizer cuts text
        vocab = hf.get_vocab()
        if vocab.get(UNK) != 0:
            raise TokenizerError(
                f"tokenizer has no {UNK} token at id 0; it was not made by chargen"
            )
        self.pieces: list[str] = [""] * len(vocab)
        for piece, index in vocab.items():
            self.pieces[index] = piece
        self._vocab = vocab
        # Characters each token stands for (<unk> counts as one), for bits per character.
        self.piece_lengths = np.array([len(p) for p in self.pieces], dtype=np.int64)
        self.piece_lengths[0] = 1
        self._char_table: np.ndarray | None = None
        self._spelled: dict[str, list[int]] = {}  # bpe: a piece's token ids, once worked out

    # ----------------------------------------------------------------- building and storing

    @classmethod
    def from_characters(cls, characters):
        """A character-level tokenizer over ``characters``, in code-point order."""
        pieces = sorted(set(characters) - {UNK})
        vocab = {UNK: 0} | {piece: i + 1 for i, piece in enumerate(pieces)}
        return cls(_build_hf(vocab, "char"), "char")

    @classmethod
    def train_from_chunks(cls, chunks, level: str, vocab_size: int = 10_000, min_freq: int = 1):
        """A word-like or sub-word level trained on text given in pieces that end at line
        breaks: ``vocab_size`` caps the vocabulary, ``<unk>`` included."""
        # Count pieces with the tokenizer's own pre-tokenizer: Python's re and the Rust
        # regex engine disagree on what \w matches (combining marks, for one).
        hf = _build_hf({UNK: 0}, level)
        options = dict(
            vocab_size=vocab_size, min_frequency=min_freq, special_tokens=[UNK], show_progress=False
        )
        if LEVEL_SPECS[level].subwords:
            # every character of the training text is a token (the trainer keeps them all)
            trainer = trainers.BpeTrainer(**options)
        else:
            trainer = trainers.WordLevelTrainer(**options)
        hf.train_from_iterator(chunks, trainer)
        # rebuilt from the vocabulary as a saved file would be: the trainer also registers <unk>
        # as a special token, which would make a literal "<unk>" in a text one token on some
        # paths and five on others
        return cls.from_json(hf.to_str(), level)

    @classmethod
    def from_json(cls, data: str | bytes, level: str):
        """The tokenizer of a saved ``tokenizer.json``.

        Only its vocabulary (and a sub-word level's merges) is taken; the pipeline around it
        (pre-tokenizer, decoder) is this level's own, rebuilt here. A shared file cannot bring a
        regular expression of its own (one that takes forever, or panics the Rust engine) or a
        vocabulary with holes.
        """
        try:
            saved = json.loads(data)
            vocab = saved["model"]["vocab"]
        except (ValueError, KeyError, TypeError):
            raise TokenizerError("not a chargen tokenizer file (no model.vocab)") from None
        if level not in LEVELS:
            raise TokenizerError(f"unknown level {level!r}")
        if not isinstance(vocab, dict) or not all(
            isinstance(piece, str) and type(i) is int for piece, i in vocab.items()
        ):
            raise TokenizerError("model.vocab is not a map from pieces to ids")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise TokenizerError("model.vocab's ids are not 0, 1, ... with none repeated")
        if not all(_is_text(piece) for piece in vocab):
            raise TokenizerError("model.vocab holds a piece that is not text (a lone surrogate)")
        merges = _saved_merges(saved, vocab) if LEVEL_SPECS[level].subwords else None
        pattern = _saved_pattern(saved, LEVEL_SPECS[level])
        return cls(_build_hf(vocab, level, pattern, merges), level, pattern)

    def to_json(self) -> str:
        return self._hf.to_str(pretty=True)

    # ----------------------------------------------------------------- encoding and decoding

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array, equal to what the HF tokenizer gives."""
        if not text:
            return np.zeros(0, dtype=np.int64)
        if self.level == "char":
            return self._encode_chars(text)
        if self.level == "word" and text.isascii():
            # On ASCII text this pattern cuts exactly where the Rust regex of the word level
            # does, and a dict lookup per piece is five times faster than encode_batch.
            vocab = self._vocab
            pieces = _ASCII_WORD.findall(text)
            return np.fromiter((vocab.get(p, 0) for p in pieces), np.int64, len(pieces))
        if self.spec.subwords and text.isascii() and self.pattern == self.spec.pattern:
            return self._encode_ascii_subwords(text)
        ids: list[int] = []
        for encoding in self._hf.encode_batch(list(_chunks(text)), add_special_tokens=False):
            ids.extend(encoding.ids)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; ``<unk>`` decodes to the literal ``<unk>``."""
        pieces = self.pieces
        return "".join(pieces[i] for i in ids)

    @property
    def separate_pieces(self) -> bool:
        """Whether this level's corpora are separate pieces (tunes) ending at ``PIECE_END``."""
        return self.spec.separate

    def id_of(self, piece: str) -> int | None:
        """The id of ``piece``, or None where it is not in the vocabulary."""
        return self._vocab.get(piece)

    def unknown_pieces(self, text: str) -> list[str]:
        """Pieces of ``text`` outside the vocabulary, in order of first appearance (for a
        sub-word level, the characters it cannot spell)."""
        if self.spec.subwords:
            return [c for c in dict.fromkeys(text) if c not in self._vocab]
        found = self._hf.pre_tokenizer.pre_tokenize_str(text)
        return list(dict.fromkeys(p for p, _ in found if p not in self._vocab))

    def _encode_ascii_subwords(self, text: str) -> np.ndarray:
        """``encode`` for ASCII text at a sub-word level: the pieces cut by Python's ``re``, each
        distinct piece spelled once by the Hugging Face model (a piece's tokens do not depend on
        its neighbours), pieces up to ``_LONGEST_KEPT`` characters kept for the next call. Once
        a text's common words are kept, about twice as fast as ``encode_batch`` on prose."""
        if len(self._spelled) > _PIECES_KEPT:
            self._spelled = {}  # a new dict: another thread may still be reading the old one
        kept = self._spelled
        pieces = _ASCII_SUBWORD_PIECE.findall(text)
        new = list(set(pieces).difference(kept))
        encodings = self._hf.encode_batch(new, add_special_tokens=False)
        long = {}
        for piece, encoding in zip(new, encodings, strict=True):
            (kept if len(piece) <= _LONGEST_KEPT else long)[piece] = encoding.ids
        spell = (
            (lambda piece: long[piece] if piece in long else kept[piece])
            if long
            else kept.__getitem__
        )
        return np.fromiter(itertools.chain.from_iterable(map(spell, pieces)), np.int64)

    def _encode_chars(self, text: str) -> np.ndarray:
        if self._char_table is None:
            # id of every code point up to the largest known one; one slot past it stays 0 (<unk>)
            # so that np.take's clipping sends every larger code point there.
            singles = {ord(p): i for p, i in self._vocab.items() if len(p) == 1}
            self._char_table = np.zeros(max(singles, default=0) + 2, dtype=np.int64)
            self._char_table[list(singles)] = list(singles.values())
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point each
        return np.take(self._char_table, codes, mode="clip")


def _saved_pattern(saved: dict, level: Level) -> str:
    """The pattern a saved tokenizer cuts text with: this level's, or one of its earlier
    versions; never one the file brings of its own."""
    try:
        pattern = saved["pre_tokenizer"]["pattern"]["Regex"]
    except (KeyError, TypeError):
        return level.pattern
    if pattern not in (level.pattern, *level.older):
        raise TokenizerError(f"its pre-tokenizer is not one of the {level.name} level's")
    return pattern


def _saved_merges(saved: dict, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """A saved sub-word tokenizer's merges, each a pair of tokens whose joining is a token."""
    merges = saved["model"].get("merges")
    if not isinstance(merges, list):
        raise TokenizerError("model.merges is missing: not a bpe tokenizer file")
    pairs = []
    for merge in merges:
        if not (
            isinstance(merge, list)
            and len(merge) == 2
            and all(isinstance(part, str) and part in vocab for part in merge)
            and merge[0] + merge[1] in vocab
        ):
            raise TokenizerError(
                f"model.merges holds {repr(merge)[:60]}, not a pair of known tokens"
            )
        pairs.append((merge[0], merge[1]))
    if len(set(pairs)) != len(pairs):
        raise TokenizerError("model.merges repeats a merge")
    return pairs


def _is_text(piece: str) -> bool:
    """Whether ``piece`` is text the Rust side can take (no lone surrogates)."""
    try:
        piece.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _build_hf(
    vocab: dict[str, int],
    level: str,
    pattern: str | None = None,
    merges: list[tuple[str, str]] | None = None,
) -> HFTokenizer:
    if LEVEL_SPECS[level].subwords:
        hf = HFTokenizer(models.BPE(vocab, merges or [], unk_token=UNK))
    else:
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
    pattern = pattern or LEVEL_SPECS[level].pattern
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return hf


def _chunks(text: str) -> Iterable[str]:
    """Cut ``text`` after newlines into pieces of about ``_CHUNK_CHARS``.

    Every level's pieces end at a newline (a newline is a piece of its own), so encoding the
    chunks separately gives the same ids as encoding the whole text.
    """
    start = 0
    while start < len(text):
        end = text.find("\n", start + _CHUNK_CHARS)
        end = len(text) if end == -1 else end + 1
        yield text[start:end]
        start = end
