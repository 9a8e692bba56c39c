"""Evaluation: the loss of a model over every prediction of a long text, as parallel streams.

Validation during training and ``chargen eval`` both come here. The text is laid out as parallel
streams (``chargen.text.batches.eval_layout``), each scored from a zero state and carried across
windows; worker threads and data-parallel processes share the streams, and their sums add up to
one ``Score``. Nothing here changes the model's weights; with ``fit``, an evaluation of a model
that mixes in n-gram counts (``chargen.model.ngram``) sets how they are mixed to the way that
scored best.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from chargen.metrics import Score
from chargen.model import ngram
from chargen.model.device import autocast
from chargen.model.rnn import RNNLanguageModel
from chargen.text.batches import IGNORE, Stream, eval_layout, forget, window_tensor
from chargen.training.distributed import SINGLE, World, sum_all
from chargen.training.workers import SINGLE as CALLING_THREAD
from chargen.training.workers import Workers

FORGET_EVERY = 64
"""Windows between two ``forget``s of the pages read: a few MB of ids at most stay resident."""


def evaluate(
    model: RNNLanguageModel,
    stream: Stream,
    device: torch.device,
    bf16: bool = False,
    window: int = 256,
    world: World = SINGLE,
    workers: Workers = CALLING_THREAD,
    fit: bool = False,
) -> Score:
    """Mean loss of ``model`` over every prediction of ``stream``, carrying state across windows.

    In a distributed run each process scores every ``world.size``-th stream and the sums are
    added up, so every process gets the same result; within a process ``workers`` share the
    streams. A model with counts is scored as its mixture; with ``fit``, at each of the
    products ``ngram.products_to_try`` gives and each share in ``ngram.WEIGHTS``, and the best
    is kept in ``model.mixing``."""
    was_training = model.training
    model.eval()
    mixing = model.mixing
    if fit and model.counts is not None:
        products, weights = ngram.products_to_try(mixing.product), ngram.WEIGHTS
    else:
        products, weights = (mixing.product,), np.array([mixing.weight])
    total, count = np.zeros((len(products), len(weights))), 0
    for all_inputs, all_targets in eval_layout(stream.ids, starts=stream.starts):
        inputs, targets = (
            all_inputs[world.rank :: world.size],
            all_targets[world.rank :: world.size],
        )
        if len(inputs) == 0:
            continue
        score = functools.partial(
            _score_streams, model, inputs, targets, device, bf16, window, products, weights
        )
        for part_total, part_count in workers.map(score, len(inputs)):
            total += part_total
            count += part_count
    model.train(was_training)
    *summed, count = sum_all([*total.ravel().tolist(), float(count)], world)
    product, weight = np.unravel_index(int(np.argmin(summed)), total.shape)
    if fit and model.counts is not None:
        model.mixing = ngram.Mixing(float(weights[weight]), *products[product])
    return Score(min(summed), int(count), stream.chars if count else 0)


@torch.inference_mode()  # per thread: each worker enters it itself
def _score_streams(
    model: RNNLanguageModel,
    inputs: np.ndarray,
    targets: np.ndarray,
    device: torch.device,
    bf16: bool,
    window: int,
    products: tuple[tuple[float, float], ...],
    weights: np.ndarray,
    rows: slice,
) -> tuple[np.ndarray, int]:
    """Summed loss (at each of the counts' ``products`` and ``weights``, where the model has
    counts) and count of the scored targets of streams ``rows`` of ``inputs`` (B, L)."""
    inputs, targets = inputs[rows], targets[rows]
    total, count = np.zeros((len(products), len(weights))), 0
    hidden = model.init_hidden(inputs.shape[0])
    counts = model.counts
    context = ngram.start(inputs.shape[0], counts.order) if counts is not None else None
    for number, start in enumerate(range(0, inputs.shape[1], window)):
        x = window_tensor(inputs, start, window).to(device)  # (B, T)
        y = window_tensor(targets, start, window).to(device)  # (B, T)
        if number % FORGET_EVERY == FORGET_EVERY - 1:
            forget(inputs)  # a memory-mapped text of any size: resident memory stays flat
        with autocast(device, bf16):
            logits, hidden = model(x, hidden)
        scored = (y != IGNORE).flatten()
        if counts is None:
            total += float(
                F.cross_entropy(
                    logits.float().flatten(0, 1), y.flatten(), reduction="sum", ignore_index=IGNORE
                )
            )
        else:
            states = ngram.states_along(x.cpu().numpy(), counts.order, before=context)
            context = states[:, -1]
            kept = scored.cpu().numpy()
            at = states.reshape(-1, counts.order)[kept]
            chosen = y.flatten().cpu().numpy()[kept]
            total += counts.fit_nats(logits.flatten(0, 1)[scored], at, chosen, products, weights)
        count += int(scored.sum())
    return total, count
