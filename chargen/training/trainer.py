"""Training: truncated BPTT with AdamW, warm-up and decay, clipping, validation, early stop.

``Trainer.run`` is the loop. It prints nothing, draws nothing and writes no files: it reports
through ``on_step`` and ``on_eval`` callbacks and asks ``should_stop`` between steps, so the CLI
decides about progress bars, checkpoints and Ctrl-C. Everything needed to continue a run exactly
(weights, optimizer, data position, carried hidden state, RNG) is in the trainer and its
``TrainState``, which ``chargen.runs.store`` saves and restores.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from chargen.config import TrainConfig
from chargen.errors import TrainingDiverged
from chargen.metrics import Score
from chargen.model.device import autocast
from chargen.model.rnn import (
    Hidden,
    RNNLanguageModel,
    detach_hidden,
    join_hidden,
    reset_rows,
    select_hidden,
)
from chargen.text.batches import IGNORE, Batches, Stream
from chargen.training.distributed import (
    SINGLE,
    World,
    any_true,
    average_gradients,
    broadcast_parameters,
    gather_rows,
)
from chargen.training.evaluate import evaluate
from chargen.training.workers import ThreadTuner, Workers
from chargen.training.workers import plan as plan_workers


@dataclass
class TrainState:
    """Where a run stands; saved with every checkpoint so ``--resume`` continues exactly."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next window of the epoch
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumed sessions
    loss: float = math.nan  # training loss of the last step
    val_loss: float | None = None  # validation loss of the last evaluation, nats/token
    val_bpc: float | None = None  # the same in bits per character
    best_val_loss: float | None = None
    best_val_bpc: float | None = None
    best_step: int = 0
    bad_evals: int = 0  # evaluations in a row without a new best
    stop_reason: str | None = None  # why the last run() returned


def _distinct(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors``, with a copy of each that shares its memory with one before it. Autograd may
    hand one tensor to two parameters (the gradient of a sum of them), and the trainer adds to
    and scales its gradients in place."""
    seen: set[int] = set()
    distinct = []
    for tensor in tensors:
        address = tensor.data_ptr()
        distinct.append(tensor.clone() if address in seen else tensor)
        seen.add(address)
    return distinct


def _global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The norm of all ``grads`` taken as one vector."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _clip_gradients(grads: list[torch.Tensor], limit: float) -> float:
    """Scale ``grads`` in place so that their global norm is at most ``limit``; returns the
    norm before. BPTT gradients can explode (Pascanu et al. 2013). Unlike torch's
    ``clip_grad_norm_``, which always multiplies (by 1 when under the limit), this leaves
    gradients under the limit alone: one pass over every gradient fewer on those steps."""
    norm = _global_norm(grads).item()
    if norm > limit:
        torch._foreach_mul_(grads, limit / (norm + 1e-6))
    return norm


def _adamw(
    decayed: list[torch.nn.Parameter], undecayed: list[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.AdamW:
    """AdamW, in torch's fused kernel where the device has one: on one CPU thread it takes about
    a quarter of the multi-tensor version's time (docs/experiments.md). The ``undecayed``
    parameters get a group of their own without weight decay; with none, there is one group."""
    options = dict(
        lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )
    groups = [{"params": decayed}]
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except RuntimeError:  # no fused kernel for this device
        return torch.optim.AdamW(groups, **options)


class _Gradients(NamedTuple):
    """What one group of streams contributes to a training step."""

    total: float  # summed loss of its scored targets
    grads: tuple[torch.Tensor, ...]  # of the scaled loss, one per parameter
    hidden: Hidden  # its state after the window, detached


class Trainer:
    def __init__(
        self,
        model: RNNLanguageModel,
        batches: Batches,
        val: Stream | None,
        config: TrainConfig,
        device: torch.device,
        bf16: bool = False,
        world: World = SINGLE,
        workers: Workers | None = None,
    ):
        self.world = world
        broadcast_parameters(model, world)  # every process starts from the same weights
        self.model = model.to(device)
        self.batches = batches
        self.val = val
        self.config = config
        self.device = device
        self.bf16 = bf16
        undecayed = {id(p) for p in model.undecayed_parameters()}
        decayed = [p for p in model.parameters() if id(p) not in undecayed]
        kept = [p for p in model.parameters() if id(p) in undecayed]
        self.params = decayed + kept  # in the optimizer's order, which numbers its saved moments
        global_random = model.draws_from_global_random
        self.workers = workers or plan_workers(device, batches.batch_size, global_random)
        if self.workers.count > 1 and global_random:
            # Dropout between stacked layers comes from torch's one generator: threads would
            # draw from it in an order that changes from run to run.
            raise ValueError("a model with dropout between layers trains on one worker thread")
        self.optimizer = _adamw(decayed, kept, config)
        self.state = TrainState()
        self.step_seconds = 0.0  # wall time inside train_step, this session: no evaluation
        self.eval_seconds = 0.0  # how long the last evaluation took
        self.hidden: Hidden = model.init_hidden(batches.batch_size)
        self.checkpoint_hidden: Hidden = self.hidden  # every process's state, for saving
        # A lone worker's thread count follows its measured speed, unless --threads fixed it;
        # in float32 only where the count does not change a step's sums (ThreadTuner.for_workers).
        self.tuner = None
        if not config.threads:
            self.tuner = ThreadTuner.for_workers(self.workers, device, bf16, self._probe)

    # ------------------------------------------------------------------ schedule and limits

    @property
    def max_steps(self) -> int | None:
        """The step budget implied by ``--max-steps`` and ``--epochs``; None if only time limits."""
        budgets = []
        if self.config.max_steps is not None:
            budgets.append(self.config.max_steps)
        if self.config.epochs is not None:
            budgets.append(max(1, round(self.config.epochs * self.batches.steps_per_epoch)))
        return min(budgets) if budgets else None

    def progress(self) -> float:
        """Fraction of the run done, by whichever limit is nearest; drives the LR schedule."""
        fractions = [0.0]
        if self.max_steps is not None:
            fractions.append(self.state.step / self.max_steps)
        if self.config.time_limit is not None:
            fractions.append(self.state.elapsed / self.config.time_limit)
        return min(max(fractions), 1.0)

    def learning_rate(self) -> float:
        """Linear warm-up, then down to ``min_lr_frac`` of the peak at the end: ``wsd`` holds
        the peak until the last ``decay_frac`` of the run and decays linearly over it
        (warm-up, stable, decay: Hu et al. 2024, MiniCPM; Hägele et al. 2024); ``cosine``
        decays along half a cosine from the start."""
        peak = self.config.lr
        if self.state.step < self.config.warmup_steps:
            return peak * (self.state.step + 1) / self.config.warmup_steps
        floor = peak * self.config.min_lr_frac
        if self.config.schedule == "cosine":
            return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * self.progress()))
        left = 1.0 - self.progress()  # of the run
        return floor + (peak - floor) * min(1.0, left / self.config.decay_frac)

    def _limit_reached(self) -> str | None:
        if self.max_steps is not None and self.state.step >= self.max_steps:
            return "max_steps" if self.max_steps == self.config.max_steps else "epochs"
        if self.config.time_limit is not None and self.state.elapsed >= self.config.time_limit:
            return "time"
        return None

    def close(self) -> None:
        """Stop the worker threads, if any, and give the process its thread count back."""
        self.workers.close()
        if self.tuner is not None:
            self.tuner.close()

    # ------------------------------------------------------------------ the loop

    def train_step(self) -> float:
        began = time.perf_counter()
        state, batches = self.state, self.batches
        if state.window >= batches.windows_in_epoch(state.epoch):
            # A new epoch starts at a new shift: the streams no longer continue the last window.
            state.epoch += 1
            state.window = 0
            self.hidden = self.model.init_hidden(batches.batch_size)
        x, y, reset, scored = batches.window(state.epoch, state.window)
        if reset is not None and bool(reset.any()):
            # A new piece (tune) starts here in these streams: from the state sampling starts at.
            self.hidden = reset_rows(self.hidden, reset.to(self.device))
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The loss is the mean cross-entropy over every scored time step of every stream of
        # every process: with gradients averaged over processes, N processes take the same
        # step as one. Each worker thread takes a group of streams; their sums are added up.
        scale = self.world.size / scored

        def gradients(rows: slice) -> _Gradients:
            hidden = select_hidden(self.hidden, rows)
            return self._gradients(x[rows], y[rows], hidden, scale, self._generator(rows))

        parts = self.workers.map(gradients, x.shape[0])
        grads = _distinct([grad.contiguous() for grad in parts[0].grads])  # summed into these
        for part in parts[1:]:
            torch._foreach_add_(grads, part.grads)
        for parameter, grad in zip(self.params, grads, strict=True):
            parameter.grad = grad
        loss = sum(part.total for part in parts) * scale
        average_gradients(self.params, self.world)
        norm = _clip_gradients(grads, self.config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            # Stop before the optimizer step so the weights (and saved checkpoints) stay good.
            raise TrainingDiverged(
                f"training diverged at step {state.step + 1} (loss {loss}, gradient norm "
                f"{norm}); the last checkpoint is intact. Lower the learning rate, "
                f"e.g. --lr {self.config.lr / 4:g}, and resume or start again"
            )
        self.optimizer.step()
        self.hidden = join_hidden([part.hidden for part in parts])
        state.step += 1
        state.window += 1
        state.tokens_seen += scored
        state.loss = loss
        if self.tuner is not None:
            self.tuner.record(time.perf_counter() - began)
        return loss

    def _probe(self) -> list[torch.Tensor]:
        """The loss, gradients and gradient norm of a step from the first window: what must not
        depend on the thread count for the tuner to run. Nothing of the run changes: not its
        state, its hidden state, its weights nor any random state."""
        x, y, _, scored = self.batches.window(0, 0)
        scale, rows = self.world.size / scored, slice(0, x.shape[0])
        random_state = torch.get_rng_state()
        try:
            part = self._gradients(x, y, self.hidden, scale, self._generator(rows))
        finally:
            torch.set_rng_state(random_state)
        return [
            torch.tensor(part.total, dtype=torch.float64),
            _global_norm(part.grads),
            *part.grads,
        ]

    def _generator(self, rows: slice) -> torch.Generator | None:
        """The source of this step's dropout masks for streams ``rows`` of this process, when
        worker threads share the streams: seeded from the run's seed, the step, the process and
        the group's first stream, so that the masks depend neither on which thread runs the
        group, nor when, nor on a resume. One worker draws from torch's global generator (which
        checkpoints save), with torch's own fused dropout."""
        if self.model.config.dropout == 0 or self.workers.count == 1:
            return None
        generator = torch.Generator(self.device)
        key = [self.config.seed, self.state.step, self.world.rank, rows.start]
        generator.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        return generator

    def _gradients(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        hidden: Hidden,
        scale: float,
        generator: torch.Generator | None = None,
    ) -> _Gradients:
        """Forward and backward through one window of some streams (B, T), from ``hidden``."""
        x, y = x.to(self.device), y.to(self.device)
        with autocast(self.device, self.bf16):
            logits, hidden = self.model(x, hidden, generator)
        total = F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        grads = torch.autograd.grad(total * scale, self.params)
        return _Gradients(total.item(), grads, detach_hidden(hidden))

    def evaluate(self) -> Score | None:
        if self.val is None or len(self.val) < 2:
            return None
        began = time.perf_counter()
        with self.tuner.all_threads() if self.tuner else contextlib.nullcontext():
            # at one thread count always: evaluation's sums (other shapes than training's) are
            # not probed, and its loss chooses the best weights
            result = evaluate(
                self.model,
                self.val,
                self.device,
                self.bf16,
                world=self.world,
                workers=self.workers,
                fit=True,
            )
        self.eval_seconds = time.perf_counter() - began
        state = self.state
        state.val_loss, state.val_bpc = result.nats_per_token, result.bits_per_char
        if state.best_val_loss is None or result.nats_per_token < state.best_val_loss:
            state.best_val_loss, state.best_val_bpc = result.nats_per_token, result.bits_per_char
            state.best_step = state.step
            state.bad_evals = 0
        else:
            state.bad_evals += 1
        return result

    @property
    def improved(self) -> bool:
        """Whether the last evaluation set a new best."""
        return self.state.best_step == self.state.step and self.state.val_loss is not None

    def run(
        self,
        on_step: Callable[[Trainer], None] | None = None,
        on_eval: Callable[[Trainer, Score | None], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> TrainState:
        """Train until a limit, patience or ``should_stop``; evaluate every ``eval_every`` steps
        and once at the end. Returns the state, with ``stop_reason`` set."""
        self.model.train()
        state = self.state
        state.stop_reason = None
        started, elapsed_before = time.perf_counter(), state.elapsed
        last_eval_step = state.step if state.val_loss is not None else -1
        while True:
            reason = self._agreed_stop(should_stop)
            if reason is not None:
                break
            step_started = time.perf_counter()
            self.train_step()
            now = time.perf_counter()
            self.step_seconds += now - step_started
            state.elapsed = elapsed_before + now - started
            if on_step:
                on_step(self)
            if state.step % self.config.eval_every == 0 and not self._time_ends_first():
                result = self.evaluate()
                last_eval_step = state.step
                self._gather_hidden()
                if on_eval:
                    on_eval(self, result)
                if self.config.patience and state.bad_evals >= self.config.patience:
                    reason = "patience"
                    break
        if last_eval_step != state.step and state.step > 0 and reason != "interrupted":
            result = self.evaluate()
            self._gather_hidden()
            if on_eval:
                on_eval(self, result)
        self._gather_hidden()
        state.stop_reason = reason
        return state

    def _time_ends_first(self) -> bool:
        """Whether the time limit comes before an evaluation begun now would end: the run's
        final evaluation (and checkpoint), at most one evaluation's length of training later,
        then takes its place, rather than two passes over the validation text back to back.
        Every process decides alike."""
        limit = self.config.time_limit
        ends_first = limit is not None and self.state.elapsed + self.eval_seconds >= limit
        return any_true(ends_first, self.world) if self.world.active else ends_first

    def _agreed_stop(self, should_stop: Callable[[], bool]) -> str | None:
        """Why to stop now, if at all. Step limits are the same everywhere; the clock and
        Ctrl-C are not, so in a distributed run the processes agree: any one stops them all."""
        reason = self._limit_reached()
        if reason is None and should_stop():
            reason = "interrupted"
        if not self.world.active or reason in ("max_steps", "epochs"):
            return reason
        timed_out = any_true(reason == "time", self.world)
        interrupted = any_true(reason == "interrupted", self.world)
        return "interrupted" if interrupted else "time" if timed_out else None

    def _gather_hidden(self) -> None:
        """Collect every process's carried state (batch dimension, rank order) for saving."""
        if isinstance(self.hidden, tuple):
            self.checkpoint_hidden = tuple(gather_rows(h, self.world, 1) for h in self.hidden)
        else:
            self.checkpoint_hidden = gather_rows(self.hidden, self.world, 1)

    def load_hidden(self, hidden: Hidden) -> None:
        """Take this process's rows of a saved state of every process's streams."""
        rows = self.batches.batch_size
        start = self.world.rank * rows
        if isinstance(hidden, tuple):
            self.hidden = tuple(h[:, start : start + rows].to(self.device) for h in hidden)
        else:
            self.hidden = hidden[:, start : start + rows].to(self.device)
        self.checkpoint_hidden = hidden
