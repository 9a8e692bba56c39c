"""Small builders the tests share."""

from __future__ import annotations

from chargen.text.tokenizer import Tokenizer


def tokenizer_for(text: str, level: str = "char", vocab_size: int = 10_000, min_freq: int = 1):
    """The tokenizer of ``level`` that training on ``text`` builds."""
    if level == "char":
        return Tokenizer.from_characters(set(text))
    return Tokenizer.train_from_chunks([text], level, vocab_size, min_freq)


def split_text(text: str, val_frac: float, boundary: str | None = None) -> tuple[str, str]:
    """The split the corpus reader must make, computed on the whole text: the last ``val_frac``
    of the characters is validation, the cut moved to just after the next ``boundary``."""
    cut = int(len(text) * (1.0 - val_frac))
    if boundary:
        at = text.find(boundary, max(cut - len(boundary) + 1, 0))
        if at >= 0 and at + len(boundary) < len(text):
            cut = at + len(boundary)
    return text[:cut], text[cut:]
