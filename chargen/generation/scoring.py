"""Scoring text with trained models: log-likelihood of short texts, and ranking models by it.

A model that finds a text likely is evidence that the text is in the model's language (or
tradition): ``identify`` ranks models by bits per character on the same text. Texts here are
scored from a line start, so every one of their tokens is predicted. Long files are scored by
``chargen.training.evaluate`` instead, which lays them out as parallel streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chargen.metrics import Score
from chargen.model import ngram
from chargen.model.rnn import RNNLanguageModel
from chargen.text.tokenizer import Tokenizer


@torch.inference_mode()
def score_texts(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    texts: list[str],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    window: int = 512,
) -> list[Score]:
    """The score of each text, predicted token by token after a line break.

    Texts are batched by length and padded at the end; padding comes after every real token, so
    it cannot change their predictions, and a mask leaves it out of the sums.
    """
    model.eval()
    start = tokenizer.id_of("\n")
    sequences = []
    for text in texts:
        ids = tokenizer.encode(text).tolist()
        sequences.append(([start] if start is not None else []) + ids)
    scores: list[Score | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(sequences[i]))
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        width = max(len(sequences[i]) for i in rows)
        if width < 2:
            for i in rows:
                scores[i] = Score(0.0, 0, 0)
            continue
        padded = torch.zeros(len(rows), width, dtype=torch.long)  # (B, L)
        lengths = torch.tensor([len(sequences[i]) for i in rows])
        for r, i in enumerate(rows):
            padded[r, : lengths[r]] = torch.tensor(sequences[i])
        mask = torch.arange(1, width)[None, :] < lengths[:, None]  # (B, L-1): real targets
        nats = torch.zeros(len(rows), dtype=torch.float64)
        hidden = model.init_hidden(len(rows))
        counts = model.counts
        if counts is not None:  # each position's n-gram context, read from the text's start
            contexts = ngram.states_along(padded.numpy(), counts.order)  # (B, L, order)
            mixing = model.mixing
        for begin in range(0, width - 1, window):
            x = padded[:, begin : begin + window].to(device)  # (B, T)
            y = padded[:, begin + 1 : begin + window + 1].to(device)  # (B, T)
            x = x[:, : y.shape[1]]
            logits, hidden = model(x, hidden)
            if counts is not None:
                at = contexts[:, begin : begin + y.shape[1]].reshape(-1, counts.order)
                chosen = y.cpu().numpy().ravel()
                loss = counts.target_nats(logits.flatten(0, 1), at, chosen, mixing)
                loss = torch.from_numpy(loss).view(y.shape)
            else:
                loss = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
                loss = loss.cpu().double()  # (B, T)
            nats += (loss * mask[:, begin : begin + y.shape[1]]).sum(dim=1)
        for r, i in enumerate(rows):
            predicted = int(lengths[r]) - 1
            chars = len(texts[i]) if start is not None else max(len(texts[i]) - 1, 0)
            scores[i] = Score(float(nats[r]), predicted, chars)
    return scores  # type: ignore[return-value]


@dataclass(frozen=True)
class Ranked:
    name: str
    score: Score
    confidence: float  # softmax over the models' log-likelihoods of the text


def identify(
    text: str,
    models: dict[str, tuple[RNNLanguageModel, Tokenizer]],
    device: torch.device | str = "cpu",
) -> list[Ranked]:
    """Models ranked by how likely they find ``text``, best first.

    The confidence is the posterior under equal priors: softmax of each model's log-likelihood of
    the whole text. Texts with characters a model never saw are scored through ``<unk>``, which
    favours no model in particular but makes the comparison rougher.
    """
    scored = {name: score_texts(m, t, [text], device)[0] for name, (m, t) in models.items()}
    loglik = torch.tensor([-s.nats for s in scored.values()], dtype=torch.float64)
    confidence = torch.softmax(loglik, dim=0).tolist()
    ranked = [Ranked(n, s, c) for (n, s), c in zip(scored.items(), confidence, strict=True)]
    return sorted(ranked, key=lambda r: r.score.bits_per_char)
