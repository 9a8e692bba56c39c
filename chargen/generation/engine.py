"""The one generation loop: text samples, tunes, beam search and the server all step through here.

An ``Engine`` holds the sequences one model is generating, one row of a batch each. A ``step``
chooses a token for every row (one vectorised draw for all of them, each row with its own
temperature, top-k, top-p and random stream), lets each sequence's ``Control`` mask or force
tokens and say when the sequence is complete, drops the finished rows, and advances the model one
token for the rest, carrying the hidden state: a token costs the same at step 10 as at 10,000.
Sequences join (``add``) and leave (``cancel``) between steps, which is continuous batching.
``BeamEngine`` is the same loop with another way of choosing: the likeliest continuations.

Rules about the text (stop strings, tune headers, bar lengths) live in controls, not here.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from chargen.config import SampleConfig
from chargen.generation.sampling import (
    Settings,
    choose,
    log_normalisers,
    picked,
    sequence_key,
    stream_start,
    uniforms,
)
from chargen.model import compiled, ngram
from chargen.model.compiled import CompiledStepper
from chargen.model.device import use_bf16
from chargen.model.rnn import Hidden, RNNLanguageModel, join_hidden, select_hidden
from chargen.model.stepper import Stepper

UNK_ID = 0
"""The tokenizers' ``<unk>``: never generated."""

MANY_ROWS = 16
"""Fewest rows that step on torch's bf16 products, where the CPU has them (over twice as fast as
float32 for many rows there). Every other step runs on the compiled LSTM step where it can
(``chargen.model.compiled``: a third of torch's time for one stream, as fast for 64 float32
streams; docs/experiments.md, 2026-12-07, later), else on torch's float32 products."""


class Control:
    """Rules one sequence follows while it is generated; this one has none. Subclasses override
    what they need, each method called once per step for their own sequence."""

    def allowed(self) -> torch.Tensor | None:
        """A boolean mask (V,) of the tokens that may be chosen next; None allows every one."""
        return None

    def override(self, sampled: int) -> int | None:
        """A token to feed instead of the ``sampled`` one (forcing), or None to keep it."""
        return None

    def accept(self, token: int, forced: bool) -> bool:
        """Take the token written at this step; return True when the sequence is complete."""
        return False


class Sequence:
    """One sequence being generated: its prompt, its settings, its random stream and its tokens.

    ``finish_reason`` is None while it runs, then ``"stop"`` (its control ended it),
    ``"length"`` (``max_tokens`` reached) or ``"cancelled"``. With ``sizes`` (one whole number of
    at least 1 for each token id: its characters, say), ``max_tokens`` caps the sum of the
    written tokens' sizes, the last token going past it where it must.
    """

    def __init__(
        self,
        prompt: list[int],
        max_tokens: int,
        config: SampleConfig | None = None,
        key: int | None = None,
        control: Control | None = None,
        sizes: np.ndarray | None = None,
    ):
        if not prompt:
            raise ValueError("a sequence needs at least one prompt token")
        self.prompt = list(prompt)
        self.max_tokens = max_tokens
        self.sizes = sizes
        self.config = config or SampleConfig()
        self.key = sequence_key(None) if key is None else key
        self.control = control
        self.ids: list[int] = []  # generated tokens, forced ones included
        # Tokens the model chose itself, and their summed log-probability in nats under the
        # model's distribution over the tokens it may write (<unk> excluded), before any
        # temperature or rule; both brought up to date when the sequence leaves the engine.
        self.chosen = 0
        self.logprob = 0.0
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.chosen if self.chosen else 0.0


class Engine:
    """The sequences one model is generating, advanced together one token per ``step``."""

    def __init__(self, model: RNNLanguageModel, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        self.logits: torch.Tensor | None = None  # (N, V): the next token's logits of each row
        self.hidden: Hidden | None = None
        self._state = _RowState.of([], 0)  # per-row counters, in row order
        self._steps = 0  # steps taken: what the rows' ends are counted in
        self._bf16 = use_bf16(self.device, "auto")
        self._steppers: dict[bool, Stepper | CompiledStepper] = {}  # by: bf16 products
        self._rows: _Rows | None = None  # per-row settings, rebuilt when the rows change
        self.counts = model.counts  # the n-gram model mixed in, if any
        self.context: torch.Tensor | None = None  # (N, order): each row's n-gram context
        self._mixing = model.mixing

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def sequences(self) -> list[Sequence]:
        """The sequences being generated, in row order."""
        return self._state.sequences

    # ------------------------------------------------------------------ joining and leaving

    @torch.inference_mode()
    def add(self, sequences: list[Sequence]) -> None:
        """Run the sequences' prompts and give each a row; sequences with the same prompt share
        one run of it."""
        by_prompt: dict[tuple[int, ...], list[Sequence]] = defaultdict(list)
        for sequence in sequences:
            by_prompt[tuple(sequence.prompt)].append(sequence)
        for prompt, group in by_prompt.items():
            logits, hidden = self._warm_up(list(prompt), len(group))
            if self.counts is not None:
                read = ngram.states_along(np.array([prompt]), self.counts.order)[:, -1]
                context = ngram.as_tensor(read).repeat(len(group), 1)
                logits = self._mixed(logits, context)
                if self.sequences:
                    context = torch.cat([self.context, context])
                self.context = context
            if self.sequences:
                logits = torch.cat([self.logits, logits])
                hidden = join_hidden([self.hidden, hidden])
            self.logits, self.hidden = logits, hidden
            self._state = _RowState.join(self._state, _RowState.of(group, self._steps))
            self._rows = None

    def cancel(self, sequence: Sequence) -> None:
        """Take ``sequence`` out now; it ends as ``"cancelled"``."""
        if sequence in self.sequences:
            sequence.finish_reason = "cancelled"
            rows = [i for i, s in enumerate(self.sequences) if s is not sequence]
            self._state.write_back([self.sequences.index(sequence)])
            self._state = self._state.take(rows)
            self._rows = None
            if not rows:
                self.logits = self.hidden = None
                return
            index = torch.tensor(rows, device=self.logits.device)
            self.logits = self.logits[index]
            self.hidden = select_hidden(self.hidden, index)
            if self.context is not None:
                self.context = self.context[rows]  # rows: a list, so a copy

    def _warm_up(self, prompt: list[int], rows: int, chunk: int = 1024):
        """The prompt run through the fused model, ``chunk`` tokens at a time so that a huge prompt
        never holds more than one chunk of logits; the last logits (rows, V) and the state."""
        hidden = self.model.init_hidden(rows)
        ids = torch.tensor(prompt, dtype=torch.long, device=self.device)
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk].expand(rows, -1)  # (rows, chunk)
            logits, hidden = self.model(piece, hidden)
        logits = logits[:, -1].float()
        logits[:, UNK_ID] = -math.inf  # as the stepper's logits have it
        return logits, hidden

    # ------------------------------------------------------------------ the loop

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One token for every sequence; returns the sequences that finished at this step."""
        return self._step()

    @torch.inference_mode()
    def run(self, should_stop=lambda: False) -> None:
        """Step until every sequence is done or ``should_stop()``, asked after every step,
        says so."""
        while self.sequences:
            self._step()
            if should_stop():
                break

    def _step(self) -> list[Sequence]:
        if not self.sequences:
            return []
        if self._rows is None:
            self._rows = _Rows(self.sequences, self.logits.device)
        logits = self.logits  # <unk> is already minus infinity (the stepper's ``never``)
        normalisers = log_normalisers(logits)  # of the model's own distribution, before any rule
        model_logits = logits.clone() if self._rows.masking else logits  # rules mask in place
        for row in self._rows.masking:
            allowed = self.sequences[row].control.allowed()
            if allowed is not None:
                logits[row].masked_fill_(~allowed.to(logits.device), -math.inf)
        sources, tokens = self._choose(logits, normalisers)  # sources: the row each extends
        if sources is None:
            sequences, state = self.sequences, self._state
            chosen = picked(model_logits, tokens, normalisers)
        else:
            sequences = self._forked(sources)
            state = self._state.take(sources.tolist(), sequences)
            chosen = model_logits[sources, tokens].to(normalisers.dtype) - normalisers[sources]
        written = tokens.tolist()
        stopped, forced = self._apply_controls(sequences, written)
        for sequence, token in zip(sequences, written, strict=True):
            sequence.ids.append(token)
        self._steps += 1
        done = state.advance(chosen, forced, stopped, self._steps, written)
        finished = []
        if done is not None:
            for row in done:
                sequences[row].finish_reason = "stop" if row in stopped else "length"
                finished.append(sequences[row])
            state.write_back(done)
        if forced:
            tokens = torch.tensor(written, dtype=torch.long, device=self.device)
        self._advance(sequences, state, sources, tokens, done)
        return finished

    def _apply_controls(self, sequences: list[Sequence], tokens: list[int]):
        """Let each row's control force its token (``tokens`` is changed in place) and say
        whether its sequence is complete; returns the rows complete and the rows forced."""
        stopped, forced = set(), []
        rows = range(len(tokens)) if self._forking else self._rows.controlled
        for row in rows:
            control = sequences[row].control
            if control is None:
                continue
            override = control.override(tokens[row]) if _defines(control, "override") else None
            if override is not None:
                tokens[row] = override
                forced.append(row)
            if control.accept(tokens[row], override is not None):
                stopped.add(row)
        return stopped, forced

    _forking = False  # engines whose rows fork (beams) look at every row's control

    def _choose(
        self, logits: torch.Tensor, normalisers: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The row each continuation extends (None: every row extends itself) and its token,
        from ``logits`` with every rule applied (``logits - normalisers`` are the model's own
        log-probabilities where no rule masked a token). Sampling: one draw per row, with the
        row's own settings and random stream."""
        return None, choose(logits, self._rows.settings, self._state.uniforms())

    def _forked(self, sources: torch.Tensor) -> list[Sequence]:
        raise NotImplementedError  # only engines that choose across rows fork sequences

    def _advance(self, sequences, state, sources, tokens: torch.Tensor, done):
        """Carry the rows still running on by one token: reorder the state where rows moved or
        left (``done``: the rows that finished, or None), then step the model."""
        if sources is None and done is None:
            self.logits, self.hidden = self._stepper(len(sequences))(tokens, self.hidden)
            self._read(None, tokens)
            return
        kept = np.arange(len(sequences))
        if done is not None:
            kept = np.delete(kept, done)
        self._state = state.take(kept)
        self._rows = None
        if len(kept) == 0:
            self.logits = self.hidden = self.context = None
            return
        index = torch.from_numpy(kept).to(self.logits.device)
        origin = sources[index] if sources is not None else index
        hidden = select_hidden(self.hidden, origin)
        self.logits, self.hidden = self._stepper(len(kept))(tokens[index], hidden)
        self._read(origin.cpu(), tokens[index])

    def _read(self, origin: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """Where the model mixes in counts: carry each row's context on by its token (from row
        ``origin`` of the rows before, where rows moved) and mix the new logits."""
        if self.counts is None:
            return
        if origin is not None:
            self.context = self.context[origin]  # a copy: rows may come twice (beams)
        self.logits = self._mixed(self.logits, self.context, tokens)

    def _mixed(self, logits: torch.Tensor, context: torch.Tensor, tokens=None) -> torch.Tensor:
        """The mixture's log-probabilities in place of the network's ``logits`` (the rows'
        ``context`` first reading ``tokens``, in place, where given); <unk> stays impossible,
        the counts' share of it spread over the other tokens. The mixing is the model's
        when the engine was made: a trained model's does not change."""
        return self.counts.mixed(logits, context, self._mixing, UNK_ID, tokens)

    def _stepper(self, rows: int) -> Stepper | CompiledStepper:
        """torch's bf16 products for many rows where the hardware has them; else the compiled
        step where it runs, and torch's float32 products where it does not. On the compiled step
        a row's numbers (and so a seeded sequence's text) do not depend on the rows beside it;
        on a CPU with bf16 they change at ``MANY_ROWS``."""
        bf16 = self._bf16 and rows >= MANY_ROWS
        if bf16 not in self._steppers:
            if not bf16 and compiled.available(self.model, self.device):
                self._steppers[bf16] = CompiledStepper(self.model, never=(UNK_ID,))
            else:
                # The product ahead (output and recurrent weights at once) pays for many rows.
                self._steppers[bf16] = Stepper(self.model, bf16, chained=bf16, never=(UNK_ID,))
        return self._steppers[bf16]


class _Rows:
    """What the engine keeps about its rows while they stay the same: sampling settings as
    tensors, and which rows have controls."""

    def __init__(self, sequences: list[Sequence], device: torch.device):
        self.settings = Settings.of([s.config for s in sequences], device)
        self.controlled = [row for row, s in enumerate(sequences) if s.control is not None]
        self.masking = [
            row for row in self.controlled if _defines(sequences[row].control, "allowed")
        ]


def _defines(control: Control, method: str) -> bool:
    """Whether ``control`` has a rule of its own for ``method`` (the base class has none):
    rows without one cost no call per step."""
    return getattr(type(control), method) is not getattr(Control, method)


class _RowState:
    """Per-row counters as arrays, so that a step updates every row at once: when each row
    runs out of tokens, what is left of the sizes of the rows that count them, its next random
    draws (a block of them, computed ahead), the summed log-probability of its chosen tokens and
    how many of its tokens were forced (the last two are copied to the sequence when it
    leaves)."""

    BLOCK = 64  # random draws computed ahead per row
    UNCOUNTED = np.iinfo(np.int64).max // 2  # what a row without sizes has left: never spent

    def __init__(self, sequences, ends, logprob, forced, draws=None, left=None, sizes=None):
        self.sequences = sequences  # the rows' sequences, in row order
        self.ends = ends  # int64: the step count at which each row has written its last token
        self.next_end = int(ends.min()) if len(ends) else 0  # rows never change their ends
        self.logprob = logprob  # float64 tensor
        self.forced = forced  # int64
        self.draws = draws  # (N, k) float64: each row's next random draws, None to compute
        self.left = left  # int64: the size each row may still write, where a row counts sizes
        self.sizes = sizes  # every token's size (one model: one tokenizer, one table)

    @classmethod
    def of(cls, sequences: list[Sequence], now: int) -> _RowState:
        sizes = next((s.sizes for s in sequences if s.sizes is not None), None)
        left = None
        if sizes is not None:
            left = np.array(
                [
                    cls.UNCOUNTED if s.sizes is None else s.max_tokens - int(sizes[s.ids].sum())
                    for s in sequences
                ],
                dtype=np.int64,
            )
        return cls(
            list(sequences),
            np.array([now + s.max_tokens - len(s.ids) for s in sequences], dtype=np.int64),
            torch.tensor([s.logprob for s in sequences], dtype=torch.float64),
            np.array([len(s.ids) - s.chosen for s in sequences], dtype=np.int64),
            left=left,
            sizes=sizes,
        )

    @staticmethod
    def join(first: _RowState, second: _RowState) -> _RowState:
        draws = None
        if first.draws is not None and second.draws is not None:
            width = min(first.draws.shape[1], second.draws.shape[1])
            draws = torch.cat([first.draws[:, :width], second.draws[:, :width]])
        left = None
        if first.left is not None or second.left is not None:
            left = np.concatenate([part._left() for part in (first, second)])
        return _RowState(
            first.sequences + second.sequences,
            np.concatenate([first.ends, second.ends]),
            torch.cat([first.logprob, second.logprob]),
            np.concatenate([first.forced, second.forced]),
            draws,
            left,
            first.sizes if first.sizes is not None else second.sizes,
        )

    def _left(self) -> np.ndarray:
        if self.left is not None:
            return self.left
        return np.full(len(self.sequences), self.UNCOUNTED, dtype=np.int64)

    def take(self, rows, sequences: list[Sequence] | None = None) -> _RowState:
        """Rows ``rows`` (a row may come twice: beams), with ``sequences`` as their sequences
        (default: those of the rows taken)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return _RowState(
            sequences if sequences is not None else [self.sequences[i] for i in rows],
            self.ends[rows],
            self.logprob[index],
            self.forced[rows],
            None if self.draws is None else self.draws[index],
            None if self.left is None else self.left[rows],
            self.sizes,
        )

    def uniforms(self) -> torch.Tensor:
        """Each row's next random draw."""
        if self.draws is None or self.draws.shape[1] == 0:
            states = np.array(
                [stream_start(s.key, len(s.ids)) for s in self.sequences], dtype=np.uint64
            )
            self.draws = uniforms(states, self.BLOCK)
        draw, self.draws = self.draws[:, 0], self.draws[:, 1:]
        return draw

    def advance(
        self,
        logprobs: torch.Tensor,
        forced: list[int],
        stopped: set[int],
        now: int,
        tokens: list[int],
    ):
        """Count the ``tokens`` the rows wrote at step ``now`` (a forced one adds no
        log-probability); returns the rows that are done (stopped by their control, out of
        tokens or out of size), or None."""
        if forced:
            logprobs = logprobs.clone()
            logprobs[forced] = 0.0
            self.forced[forced] += 1
        self.logprob += logprobs.cpu()
        spent = None
        if self.left is not None:
            self.left -= self.sizes[tokens]
            spent = self.left <= 0
        if stopped or now >= self.next_end or (spent is not None and spent.any()):
            ended = self.ends <= now if spent is None else (self.ends <= now) | spent
            return sorted(set(np.flatnonzero(ended).tolist()) | stopped)
        return None

    def write_back(self, rows) -> None:
        for row in rows:
            sequence = self.sequences[row]
            sequence.logprob = float(self.logprob[row])
            sequence.chosen = len(sequence.ids) - int(self.forced[row])


class BeamEngine(Engine):
    """Beam search on the same loop: the ``width`` likeliest continuations of one prompt.

    Every step extends each kept continuation by every token and keeps the ``width`` with the
    highest total log-probability; rows are continuations, forked from the row they extend.
    Conservative: it favours safe, frequent, often repetitive text, where sampling gives variety.
    """

    def __init__(self, model: RNNLanguageModel, width: int, device: torch.device | str = "cpu"):
        super().__init__(model, device)
        self.width = width
        self.scores: torch.Tensor | None = None  # (N,) total log-probability of each row

    def _choose(self, logits: torch.Tensor, normalisers: torch.Tensor):
        logprobs = logits.to(normalisers.dtype) - normalisers[:, None]  # (N, V)
        logprobs = logprobs.masked_fill(logits == -math.inf, -math.inf)
        scores = self.scores if self.scores is not None else logprobs.new_zeros(len(logits))
        total = (scores[:, None] + logprobs).flatten()  # (N * V,)
        self.scores, flat = total.topk(min(self.width, total.numel()))
        vocab = logits.shape[-1]
        return flat // vocab, flat % vocab

    _forking = True

    def _forked(self, sources: torch.Tensor) -> list[Sequence]:
        forks = []
        for source in sources.tolist():
            parent = self.sequences[source]
            child = Sequence(
                parent.prompt, parent.max_tokens, parent.config, parent.key, sizes=parent.sizes
            )
            child.ids = list(parent.ids)
            forks.append(child)
        return forks

    def search(self, prompt: list[int], length: int, should_stop=lambda: False) -> Sequence:
        """The likeliest continuation of ``length`` tokens of ``prompt`` that the beam finds
        (shorter if ``should_stop`` ends the search early)."""
        self.add([Sequence(prompt, length, SampleConfig(temperature=0.0), key=0)])
        best = self.sequences[0]
        while self.sequences:
            finished = self.step()
            best = (finished or self.sequences)[0]  # rows stay in order of total score
            if should_stop():
                break
        return best
