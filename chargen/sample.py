"""Sampling: generate tokens one at a time, carrying the hidden state.

``generate`` runs the prime once, then feeds each chosen token back as the next input, so a token
costs the same at position 10 as at 10,000. It is a generator under ``torch.inference_mode`` with
its own ``torch.Generator``, so a seed gives the same text. Stop rules and text assembly live
outside the loop (``StopScanner``, ``sample``); nothing here prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from chargen.config import SampleConfig
from chargen.device import use_bf16
from chargen.errors import UsageError
from chargen.model import Hidden, RNNLanguageModel, Stepper, select_hidden
from chargen.tokenizer import UNK, Tokenizer


def choose(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """One token per row of ``logits`` (N, V): greedy at temperature 0, else a filtered draw."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature < 1e-3:  # keep logits / temperature finite: the largest becomes 0
        logits = logits - logits.amax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    # Inverse transform: one uniform draw per row, located in the row's cumulative distribution.
    # It needs one random number per row where the Gumbel trick needs one per token (on a CPU,
    # drawing 64 x 65 exponentials took longer than the rest of choosing), and it is cheaper
    # than torch.multinomial. right=True never lands on a token of probability zero.
    wide = torch.float32 if logits.device.type == "mps" else torch.float64  # MPS has no float64
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1, dtype=wide)  # (N, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device)
    chosen = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return chosen.clamp_(max=logits.shape[-1] - 1).squeeze(-1)


BF16_MIN_STREAMS = 16


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """The random source of one sampling run: ``seed`` for the same text again, else fresh."""
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def warm_up(
    model: RNNLanguageModel,
    prime_ids: list[int],
    num: int,
    device: torch.device | str,
    chunk: int = 1024,
) -> tuple[torch.Tensor, Hidden]:
    """Run the prime through the fused module, ``chunk`` tokens at a time so that a huge prime
    never holds more than one chunk of logits; returns the last logits (N, V) and the state."""
    hidden = model.init_hidden(num)
    prime = torch.tensor(prime_ids, dtype=torch.long, device=device)
    for start in range(0, len(prime), chunk):
        piece = prime[start : start + chunk].expand(num, -1)  # (N, chunk)
        logits, hidden = model(piece, hidden)
    return logits[:, -1].float(), hidden


@torch.inference_mode()
def generate(
    model: RNNLanguageModel,
    prime_ids: list[int],
    config: SampleConfig,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(ids, logprobs)``, each of shape (num,), for ``config.length`` steps.

    ``logprobs`` are the log-probabilities of the chosen tokens under the model's own (untempered)
    distribution. ``prime_ids`` must not be empty. The ``<unk>`` token is never chosen.
    """
    generator = seeded_generator(config.seed, device)
    model.eval()
    logits, hidden = warm_up(model, prime_ids, config.num, device)
    # Many streams: bf16 products pay off where the hardware has them; one stream: they don't.
    bf16 = config.num >= BF16_MIN_STREAMS and use_bf16(torch.device(device), "auto")
    step = Stepper(model, bf16=bf16, chained=bf16)  # the product ahead pays for many streams
    for _ in range(config.length):
        logits[:, 0] = -math.inf  # id 0 is <unk>: a sample must not print it
        ids = choose(logits, config.temperature, config.top_k, config.top_p, generator)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, None]).squeeze(-1)
        yield ids, logprobs
        logits, hidden = step(ids, hidden)


@torch.inference_mode()
def beam_search(
    model: RNNLanguageModel,
    prime_ids: list[int],
    width: int,
    length: int,
    device: torch.device | str = "cpu",
) -> tuple[list[int], float]:
    """The likeliest continuation of ``length`` tokens that a beam of ``width`` finds.

    Returns its ids and total log-probability. Beam search is conservative: it favours safe,
    frequent, often repetitive text, where sampling gives variety.
    """
    model.eval()
    logits, hidden = warm_up(model, prime_ids, 1, device)
    logprobs = torch.log_softmax(logits, dim=-1)  # (1, V)
    vocab = logprobs.shape[-1]
    scores = torch.zeros(1, device=logprobs.device)
    history = torch.zeros(1, 0, dtype=torch.long, device=logprobs.device)  # (beams, t)
    step = Stepper(model)
    for _ in range(length):
        logprobs[:, 0] = -math.inf  # never <unk>
        total = (scores[:, None] + logprobs).flatten()  # (beams * V,)
        scores, flat = total.topk(min(width, total.numel()))
        beams, ids = flat // vocab, flat % vocab
        history = torch.cat([history[beams], ids[:, None]], dim=1)
        hidden = select_hidden(hidden, beams)
        logits, hidden = step(ids, hidden)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = int(scores.argmax())
    return history[best].tolist(), float(scores[best])


class StopScanner:
    """Passes text through until ``stop`` appears; holds back what could be the start of it.

    ``feed`` returns the text that is now safe to show; after the stop text is seen, ``done`` is
    true and nothing more passes. The stop text itself is not part of the output.
    """

    def __init__(self, stop: str | None):
        self.stop = stop or None
        self.pending = ""
        self.done = False

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        if self.stop is None:
            return piece
        self.pending += piece
        at = self.pending.find(self.stop)
        if at >= 0:
            self.done = True
            out, self.pending = self.pending[:at], ""
            return out
        keep = len(self.stop) - 1
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut] if cut > 0 else "", self.pending[max(cut, 0) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.done else out


@dataclass
class Sample:
    text: str  # the prime followed by the generated text
    tokens: int  # generated tokens (the prime and anything after a stop excluded)
    mean_logprob: float  # mean log-probability per generated token, in nats


def prime_ids(tokenizer: Tokenizer, prime: str) -> list[int]:
    """Token ids of the prime; an empty prime starts the text at a line break."""
    unknown = tokenizer.unknown_pieces(prime)
    if unknown:
        shown = ", ".join(repr(p) for p in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        what = "characters" if tokenizer.level == "char" else "tokens"
        raise UsageError(f"--prime has {what} the model never saw: {shown}{more}; remove them")
    if prime:
        return tokenizer.encode(prime).tolist()
    start = tokenizer.hf.token_to_id("\n")
    return [start if start is not None else min(1, tokenizer.vocab_size - 1)]


def sample(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: SampleConfig,
    device: torch.device | str = "cpu",
    on_text: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Sample]:
    """Generate ``config.num`` samples; ``on_text(i, piece)`` receives text as it becomes final.

    ``should_stop`` is asked after every step; when it says yes, the samples end there.
    """
    config.validate()
    if tokenizer.pieces[0] != UNK:
        raise UsageError("tokenizer has no <unk> at id 0")
    ids = prime_ids(tokenizer, config.prime)
    scanners = [StopScanner(config.stop) for _ in range(config.num)]
    texts = [[config.prime] for _ in range(config.num)]
    counts = [0] * config.num
    logprob_sums = [0.0] * config.num
    if on_text and config.prime:
        for i in range(config.num):
            on_text(i, config.prime)

    def emit(i: int, text: str) -> None:
        if text:
            texts[i].append(text)
            if on_text:
                on_text(i, text)

    for step_ids, step_logprobs in generate(model, ids, config, device):
        for i, (token, logprob) in enumerate(
            zip(step_ids.tolist(), step_logprobs.tolist(), strict=True)
        ):
            if scanners[i].done:
                continue
            counts[i] += 1
            logprob_sums[i] += logprob
            emit(i, scanners[i].feed(tokenizer.pieces[token]))
        if all(s.done for s in scanners) or should_stop():
            break
    for i, scanner in enumerate(scanners):
        emit(i, scanner.flush())
    return [
        Sample("".join(texts[i]), counts[i], logprob_sums[i] / counts[i] if counts[i] else 0.0)
        for i in range(config.num)
    ]
