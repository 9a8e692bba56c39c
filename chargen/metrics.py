"""How well a model predicts a text: the one metrics type every evaluation and score returns.

A ``Score`` is a sum of negative log-likelihoods with the number of tokens predicted and the
characters they cover; the per-token loss, bits per character and perplexity are derived from it,
so results from many parts add up exactly (``Score.sum``). Plain Python, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    nats: float  # total negative log-likelihood of the predicted tokens, in nats
    tokens: int  # tokens predicted
    chars: int  # characters those tokens cover (an <unk> counts as one)

    @property
    def nats_per_token(self) -> float:
        """The mean loss per token: what training minimises (nan when nothing was predicted)."""
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def bits_per_char(self) -> float:
        """The loss per character in bits: comparable across tokenizer levels."""
        return self.nats / self.chars / math.log(2) if self.chars else math.nan

    @property
    def perplexity(self) -> float:
        """exp(nats per token), capped where it would overflow a float."""
        return math.exp(min(self.nats_per_token, 700.0)) if self.tokens else math.nan

    def as_dict(self) -> dict[str, float | int | None]:
        """The figures for JSON: None where there is none (nothing was predicted)."""
        figures = {
            "nats_per_token": self.nats_per_token,
            "bits_per_char": self.bits_per_char,
            "perplexity": self.perplexity,
        }
        finite = {k: v if math.isfinite(v) else None for k, v in figures.items()}
        return finite | {"tokens": self.tokens, "chars": self.chars}

    @staticmethod
    def sum(scores: Iterable[Score]) -> Score:
        scores = list(scores)
        return Score(
            sum(s.nats for s in scores), sum(s.tokens for s in scores), sum(s.chars for s in scores)
        )
