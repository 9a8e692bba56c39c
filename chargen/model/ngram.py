"""Counts beside the network: an n-gram model of the training tokens, mixed with the RNN's
distribution (``--ngram``).

A model with ``ngram`` > 0 predicts ``w * q + (1 - w) * p_counts``, where ``p_counts`` is an
interpolated Kneser-Ney model (Chen and Goodman 1998) of order ``ngram`` over the training
split's tokens and ``q``, proportional to ``p_rnn ** a * p_counts ** b``, is the network's
distribution reweighted by the counts'. ``w``, ``a`` and ``b`` (``Mixing``) are fitted on the
validation split at every evaluation (``evaluate(..., fit=True)``), so the mixture never scores
worse there than the network alone. The counts are exact about rare contexts (a name, a stage
direction seen twice) where two minutes of training leave the network vague, and the network
generalises where the counts have nothing; the mixture is better than either
(docs/experiments.md, 2026-12-08, later: tinyshakespeare, 120 s, 0.06 nats/char). The product
part flattens the network (``a`` about 0.7) and leans it towards what the counts favour, which
a plain sum cannot do: 0.01 nats/char more (2026-12-08, last).

Contexts are hashed, not stored: a context of ``m`` tokens is a 64-bit hash rolled token by
token (``advance``), so a state of ``order`` hashes a row carries everything the model needs to
look its next token up, in the training loop's evaluation and in the generation engine alike.
Positions before a text's start are padding, whose contexts were never counted: the model backs
off to the contexts it has, as at the start of a stream.

Each order ``k`` keeps its contexts of ``k - 1`` tokens sorted, and beside them (in compressed
sparse rows) the tokens that followed each with their counts: raw counts at the highest order,
at lower orders the number of distinct tokens seen before the ``k``-gram (the continuation
counts that make Kneser-Ney's lower orders good at backing off).
"""

from __future__ import annotations

import ctypes
import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from chargen.errors import CheckpointError
from chargen.files import atomic_path
from chargen.model import native

SOURCE = Path(__file__).with_name("ngram.c")

SEED = np.uint64(0x243F6A8885A308D3)
"""The hash of the empty context."""
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
PAD = -1
"""The token before a text's start: its contexts are never counted, so lookups back off."""

CHUNK = 1 << 21
"""Most (row, token) values a scoring pass takes at once, whatever the vocabulary's size: 16 MB
for each of the few arrays of that shape it holds (per worker thread)."""

MAX_TOKENS = 2_000_000
"""Training tokens counted at most (the first ones). At order 10 (tinyshakespeare) the saved
tables take 25 bytes a token, 102 in memory and 249 once sampling has merged them, and counting
peaks at 202 (order 8: 11, 45, 104 and 131): a big corpus's memory stays bounded, and its
network has text enough to learn from."""

WEIGHTS = np.round(np.arange(0.5, 1.0001, 0.025), 3)
"""The network's shares of the mixture that a fit tries; 1.0 is the network alone. The network
keeps at least half: fitted shares were 0.6 - 0.675 on real text without the product part and
0.8 - 0.95 with it, and a validation text that repeats the training text would otherwise hand
all of it to the counts, which only copy (``products_to_try`` bounds the product likewise)."""


class Mixing(NamedTuple):
    """How a model's network and counts are mixed: ``weight * q + (1 - weight) * p_counts``,
    where ``q`` is ``softmax(network * logits + counts * log p_counts)``, the network's
    distribution reweighted by the counts'. Fitted on the validation split at every evaluation
    and saved with the weights; the default is the network alone."""

    weight: float = 1.0
    network: float = 1.0
    counts: float = 0.0

    @property
    def product(self) -> tuple[float, float]:
        return self.network, self.counts


PRODUCTS = tuple((a, b) for a in (0.6, 0.7, 0.8, 0.9, 1.0) for b in (0.0, 0.1, 0.2, 0.3))
"""The (network, counts) exponents of the mixture's product part that every fit tries; (1, 0)
leaves the network as it is. Fitted values were 0.6 - 0.8 and 0.2 - 0.3 on tinyshakespeare."""


def products_to_try(fitted: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """``PRODUCTS`` and the finer steps around the last fit: a run's later evaluations refine
    what its first one found, for a fraction of what a fine grid everywhere costs. The
    network's exponent stays within 0.5 - 1.5 and the counts' within 0 - 0.5, so that the
    network keeps its say, as ``WEIGHTS`` keeps it half the sum."""
    a, b = fitted
    near = {
        (round(a + da, 3), round(b + db, 3))
        for da in (-0.05, 0.0, 0.05)
        for db in (-0.05, 0.0, 0.05)
        if 0.5 <= round(a + da, 3) <= 1.5 and 0 <= round(b + db, 3) <= 0.5
    }
    return tuple(sorted(set(PRODUCTS) | near))


def product_log_probs(logits: torch.Tensor, counted: torch.Tensor, product) -> torch.Tensor:
    """log softmax(a * logits + b * log counted) (N, V): the network's distribution reweighted
    by the counts', at exponents ``product`` = (a, b)."""
    a, b = product
    scaled = a * logits
    if b:  # (not 0 * log 0 where the counts rule a token out: that is not a number)
        scaled = scaled + b * torch.log(counted)
    return torch.log_softmax(scaled, -1)


def mixed_log_probs(logits: torch.Tensor, counted: torch.Tensor, mixing: Mixing) -> torch.Tensor:
    """The mixture's log-probabilities (N, V) from the network's ``logits`` and the counts'
    distribution ``counted`` (N, V)."""
    network = product_log_probs(logits, counted, mixing.product).exp()
    return torch.log(mixing.weight * network + (1 - mixing.weight) * counted)


def mixed_nats(network_nats: torch.Tensor, counted: torch.Tensor, weight) -> torch.Tensor:
    """The mixture's loss in nats of predictions whose loss under the (reweighted) network is
    ``network_nats`` and whose probability under the counts is ``counted`` (tensors that
    broadcast), at the network's share ``weight``."""
    return -torch.log(weight * torch.exp(-network_nats) + (1 - weight) * counted)


def _mix(hashes: np.ndarray, tokens: np.ndarray | int) -> np.ndarray:
    """The hashes of contexts ``hashes`` each extended by one token."""
    h = (hashes ^ (np.asarray(tokens, dtype=np.int64) + 2).astype(np.uint64)) * _MULTIPLIER
    return h ^ (h >> np.uint64(29))  # uint64 arrays wrap around silently, as a hash needs


def start(rows: int, order: int) -> np.ndarray:
    """The context state (rows, order) of rows with nothing read yet: column ``m`` is the hash of
    the last ``m`` tokens, here all padding."""
    state = np.empty((rows, order), dtype=np.uint64)
    state[:, 0] = SEED
    for m in range(1, order):
        state[:, m] = _mix(state[:, m - 1], PAD)
    return state


def advance(state: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The context state after each row reads its token."""
    new = np.empty_like(state)
    new[:, 0] = SEED
    new[:, 1:] = _mix(state[:, :-1], np.asarray(tokens)[:, None])
    return new


def as_tensor(states: np.ndarray) -> torch.Tensor:
    """Context states as ``NGram.mixed`` takes them: the same bits, as int64, in a tensor."""
    return torch.from_numpy(np.ascontiguousarray(states).view(np.int64))


def states_along(ids: np.ndarray, order: int, before: np.ndarray | None = None) -> np.ndarray:
    """The context state after each token of each row of ``ids`` (B, T): (B, T, order).
    ``before`` (B, order) is the state before the first column (default: nothing read)."""
    rows, steps = ids.shape
    state = start(rows, order) if before is None else before
    out = np.empty((rows, steps, order), dtype=np.uint64)
    out[:, :, 0] = SEED
    for m in range(1, order):
        previous = np.concatenate([state[:, None, m - 1], out[:, :-1, m - 1]], axis=1)
        out[:, :, m] = _mix(previous, ids)
    return out


@dataclass
class _Order:
    contexts: np.ndarray  # uint64 (C,): sorted context hashes
    starts: np.ndarray  # int64 (C + 1,): each context's entries
    pairs: np.ndarray  # int64 (E,): context index * vocab + token, sorted
    counts: np.ndarray  # int32 (E,)
    discount: float

    def __post_init__(self) -> None:
        counts = self.counts.astype(np.float64)
        self.totals = np.add.reduceat(counts, self.starts[:-1]) if len(counts) else counts
        self.types = np.diff(self.starts).astype(np.float64)

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each hash's context index (clipped) and whether the context was seen."""
        if len(self.contexts) == 0:
            return np.zeros(len(hashes), dtype=np.int64), np.zeros(len(hashes), dtype=bool)
        index = np.minimum(np.searchsorted(self.contexts, hashes), len(self.contexts) - 1)
        return index, self.contexts[index] == hashes


@dataclass
class _Merged:
    """Every order's contexts in one sorted table (the orders' hashes differ), with what a
    lookup needs beside each: its entries, and its back-off weight; each entry's token and
    discounted share ``max(count - discount, 0) / total``."""

    contexts: np.ndarray  # uint64 (C,)
    starts: np.ndarray  # int64 (C,)
    lengths: np.ndarray  # int64 (C,)
    backoff: np.ndarray  # float64 (C,)
    tokens: np.ndarray  # int64 (E,)
    discounted: np.ndarray  # float64 (E,)
    vocab: int

    @property
    def last(self) -> int:
        return max(len(self.contexts) - 1, 0)

    @classmethod
    def of(cls, orders: list[_Order], vocab: int) -> _Merged:
        offsets = np.cumsum([0] + [len(t.pairs) for t in orders])
        contexts = np.concatenate([t.contexts for t in orders])
        starts = np.concatenate([t.starts[:-1] + o for t, o in zip(orders, offsets, strict=False)])
        lengths = np.concatenate([np.diff(t.starts) for t in orders])
        backoff = np.concatenate([t.discount * t.types / t.totals for t in orders])
        discounted = np.concatenate(
            [
                np.maximum(t.counts - t.discount, 0) / np.repeat(t.totals, np.diff(t.starts))
                for t in orders
            ]
        )
        tokens = np.concatenate([t.pairs % vocab for t in orders])
        sort = np.argsort(contexts, kind="stable")
        return cls(
            contexts[sort], starts[sort], lengths[sort], backoff[sort], tokens, discounted, vocab
        )

    def __post_init__(self) -> None:
        self.work = np.empty(self.vocab)  # the compiled mixture's scratch row
        self.work_at = _at(self.work)
        # the first context of each value of a hash's top ``bits`` bits, and the end
        self.bits = max(1, int(len(self.contexts)).bit_length())
        tops = np.arange(1 << self.bits, dtype=np.uint64) << np.uint64(64 - self.bits)
        self.buckets = np.append(np.searchsorted(self.contexts, tops), len(self.contexts))
        self.struct = _Tables(
            _at(self.contexts),
            len(self.contexts),
            _at(self.buckets),
            self.bits,
            *(_at(a) for a in (self.starts, self.lengths, self.backoff)),
            *(_at(a) for a in (self.tokens, self.discounted)),
        )
        self.tables = ctypes.byref(self.struct)


class _Tables(ctypes.Structure):
    """``_Merged``'s arrays as ngram.c reads them."""

    _fields_ = [
        ("contexts", ctypes.c_void_p),
        ("size", ctypes.c_int64),
        ("buckets", ctypes.c_void_p),
        ("bits", ctypes.c_int64),
        *((name, ctypes.c_void_p) for name in ("starts", "lengths", "backoff")),
        *((name, ctypes.c_void_p) for name in ("tokens", "discounted")),
    ]


def _at(array: np.ndarray) -> int:
    return array.ctypes.data


@functools.cache
def _kernel() -> ctypes.CDLL | None:
    lib = native.load(SOURCE, ("-O2", "-shared", "-fPIC", "-lm"), ())
    if lib is not None:
        pointer, size, wide = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        lib.ngram_distribution.argtypes = [pointer, size, size, pointer, size, pointer]
        lib.ngram_mix.argtypes = [pointer, size, size, pointer, pointer, size, wide, pointer]
        real = ctypes.c_double
        lib.ngram_mix.argtypes += [real, real, real, size, pointer, pointer]
        for function in (lib.ngram_distribution, lib.ngram_mix):
            function.restype = None
    return lib


class NGram:
    """An interpolated Kneser-Ney model of ``order`` over ``vocab`` token ids."""

    def __init__(self, vocab: int, orders: list[_Order]):
        self.vocab = vocab
        self.orders = orders

    @property
    def order(self) -> int:
        return len(self.orders)

    @classmethod
    def build(cls, ids: np.ndarray, vocab: int, order: int) -> NGram:
        """Count the first ``MAX_TOKENS`` of ``ids`` (training tokens, as one text)."""
        x = np.asarray(ids[:MAX_TOKENS], dtype=np.int64)
        n = len(x)
        context = np.full(n, SEED, dtype=np.uint64)  # hash of the k - 1 tokens before each
        orders = []
        for k in range(1, order + 1):
            longer = np.empty(n, dtype=np.uint64)  # hash of the k tokens before each
            longer[0] = start(1, k + 1)[0, k]
            longer[1:] = _mix(context[:-1], x[:-1])
            if k == order:
                positions = np.arange(k - 1, n)
            else:  # one position for each distinct (k + 1)-gram: continuation counts
                grams = _mix(longer[k:], x[k:])
                positions = k + np.unique(grams, return_index=True)[1]
            orders.append(_count(context[positions], x[positions], vocab))
            context = longer
        return cls(vocab, orders)

    def probability(self, states: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """p(target) after each context state: ``states`` (N, order), ``targets`` (N,)."""
        targets = np.asarray(targets, dtype=np.int64)
        p = np.full(len(targets), 1.0 / self.vocab)
        for k, table in enumerate(self.orders):
            index, seen = table.find(states[:, k])
            if not seen.any():
                continue
            keys = index * self.vocab + targets
            entry = np.minimum(np.searchsorted(table.pairs, keys), max(len(table.pairs) - 1, 0))
            count = np.where(table.pairs[entry] == keys, table.counts[entry], 0)
            total, d = table.totals[index], table.discount
            mixed = np.maximum(count - d, 0) / total + d * table.types[index] / total * p
            p = np.where(seen, mixed, p)
        return p

    def fit_nats(
        self,
        logits: torch.Tensor,
        states: np.ndarray,
        targets: np.ndarray,
        products,
        weights: np.ndarray,
    ) -> np.ndarray:
        """The summed loss in nats (len(products), len(weights)) of predicting ``targets``
        (N,) from the network's ``logits`` (N, V) and the context ``states`` (N, order), at
        each of ``products`` and the network's shares ``weights``."""
        shares = torch.from_numpy(np.asarray(weights, dtype=np.float64))[:, None]
        out = np.zeros((len(products), len(weights)))
        for rows in _chunks(len(targets), self.vocab):
            network, target = logits[rows].float().cpu(), torch.from_numpy(targets[rows])[:, None]
            counted = torch.from_numpy(self.distribution(states[rows]))
            found = counted.gather(1, target)[:, 0]
            logged = counted.float().log_()  # every token keeps some of the uniform share: > 0
            network_at, logged_at = network.gather(1, target)[:, 0], logged.gather(1, target)[:, 0]
            for i, (a, b) in enumerate(products):
                # the target's log-probability under product_log_probs, without writing them all
                scaled, chosen = network * a, a * network_at
                if b:
                    scaled.add_(logged, alpha=b)
                    chosen = chosen + b * logged_at
                chosen = chosen - torch.logsumexp(scaled, -1)
                out[i] += mixed_nats(-chosen.double(), found, shares).sum(dim=1).numpy()
        return out

    def target_nats(
        self, logits: torch.Tensor, states: np.ndarray, targets: np.ndarray, mixing: Mixing
    ) -> np.ndarray:
        """Each prediction's loss in nats (N,) under the mixture, as ``fit_nats`` sums them."""
        out = np.empty(len(targets))
        for rows in _chunks(len(targets), self.vocab):
            counted = torch.from_numpy(self.distribution(states[rows]))
            mixed = mixed_log_probs(logits[rows].double().cpu(), counted, mixing)
            out[rows] = -mixed.gather(1, torch.from_numpy(targets[rows])[:, None])[:, 0].numpy()
        return out

    def distribution(self, states: np.ndarray) -> np.ndarray:
        """The next token's distribution (N, vocab) after each context state (N, order)."""
        lib, merged = _kernel(), self.merged
        if lib is None:
            return self._distribution(states)
        states = np.ascontiguousarray(states, dtype=np.uint64)
        out = np.empty((len(states), self.vocab))
        lib.ngram_distribution(
            merged.tables, len(states), states.shape[1], _at(states), self.vocab, _at(out)
        )
        return out

    def mixed(
        self,
        logits: torch.Tensor,
        states: torch.Tensor,
        mixing: Mixing,
        never: int,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mixture's log-probabilities (N, vocab) from the network's ``logits`` (N, vocab)
        and the rows' context ``states`` (N, order): the hashes' bits in an int64 tensor on the
        CPU, rows side by side (``as_tensor``). Token ``never`` is taken out of the counts'
        distribution (the rest scaled up), as the network's logits must already have it. With
        ``tokens`` (N,), each row's state first reads its token, in place: one call a
        generated token. Where the compiled kernel runs, the mixture is written over
        ``logits``."""
        lib, merged = _kernel(), self.merged
        usable = logits.device.type == "cpu" and logits.dtype == torch.float32
        if lib is None or not usable or logits.stride(-1) != 1:
            hashes = states.numpy().view(np.uint64)
            if tokens is not None:
                hashes[:] = advance(hashes, tokens.cpu().numpy())
            counted = self._distribution(hashes)
            kept = 1.0 - counted[:, never]
            counted[:, never] = 0.0
            counted /= kept[:, None]
            counted = torch.from_numpy(counted).to(logits.device)
            return mixed_log_probs(logits.double(), counted, mixing).to(logits.dtype)
        if tokens is not None:
            tokens = tokens.to("cpu", torch.int64)
        lib.ngram_mix(
            merged.tables,
            len(states),
            states.shape[1],
            states.data_ptr(),
            None if tokens is None else tokens.data_ptr(),
            self.vocab,
            logits.stride(0),
            logits.data_ptr(),
            *mixing,
            never,
            merged.work_at,
            logits.data_ptr(),
        )
        return logits

    def _distribution(self, states: np.ndarray) -> np.ndarray:
        """``distribution`` in numpy, where the compiled kernel is not built.

        Unrolled, interpolated Kneser-Ney is a sum over the orders: each order's discounted
        counts, times the back-off weights of every higher order, plus the uniform share that
        backs off all the way. All orders are looked up at once in one merged table, so a step
        of one sampled stream costs a few dozen array operations, not a few per order."""
        merged = self.merged
        rows, order = states.shape
        if len(merged.contexts) == 0:  # nothing was counted
            return np.full((rows, self.vocab), 1.0 / self.vocab)
        index = np.minimum(np.searchsorted(merged.contexts, states.ravel()), merged.last)
        seen = merged.contexts[index] == states.ravel()  # (N * order,)
        found = np.flatnonzero(seen)
        first, lengths = merged.starts[index[found]], merged.lengths[index[found]]
        owner = np.repeat(found, lengths)
        entry = np.repeat(first - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        shares = np.zeros((rows * order, self.vocab))  # each order's discounted counts
        shares[owner, merged.tokens[entry]] = merged.discounted[entry]
        backoff = np.ones(rows * order)
        backoff[found] = merged.backoff[index[found]]
        backoff = backoff.reshape(rows, order)
        # the weight of each order's counts: the back-off weights of the orders above it
        above = np.ones((rows, order))
        above[:, :-1] = np.cumprod(backoff[:, :0:-1], axis=1)[:, ::-1]
        p = np.einsum("ro,rov->rv", above, shares.reshape(rows, order, self.vocab))
        return p + (above[:, 0] * backoff[:, 0] / self.vocab)[:, None]

    @functools.cached_property
    def merged(self) -> _Merged:
        """All orders in one table, built when sampling first needs it."""
        return _Merged.of(self.orders, self.vocab)

    # ------------------------------------------------------------------ saving

    def save(self, path: Path) -> None:
        """The tables in a numpy archive (no pickles): each context's hash and number of
        entries, each entry's token and count, in the narrowest integers that hold them."""
        arrays = {"vocab": np.array([self.vocab])}
        for k, table in enumerate(self.orders):
            lengths = np.diff(table.starts)
            arrays |= {
                f"contexts{k}": table.contexts,
                f"lengths{k}": _narrow(lengths),
                f"tokens{k}": _narrow(table.pairs % self.vocab if len(lengths) else lengths),
                f"counts{k}": _narrow(table.counts),
                f"discount{k}": np.array([table.discount]),
            }
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            np.savez(out, **arrays)

    @classmethod
    def load(cls, path: Path, vocab: int, order: int) -> NGram:
        """The counts saved at ``path`` for a model of ``vocab`` tokens and ``order``. Read
        without pickles, and only from an archive whose arrays are stored uncompressed, so that
        the file's size bounds the memory its arrays take (a shared run may be hostile)."""
        try:
            with zipfile.ZipFile(path) as archive:
                if any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()):
                    raise ValueError("compressed arrays (chargen saves them uncompressed)")
            with np.load(path, allow_pickle=False) as data:
                if int(data["vocab"][0]) != vocab:
                    raise ValueError(f"counts of {int(data['vocab'][0])} tokens, not {vocab}")
                orders = [_unpacked(data, k, vocab) for k in range(order)]
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; the run's counts were removed") from None
        except (OSError, KeyError, ValueError, IndexError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path}: not a readable counts file ({exc})") from None
        return cls(vocab, orders)


def _chunks(rows: int, vocab: int):
    step = max(1, CHUNK // vocab)
    return (slice(first, first + step) for first in range(0, rows, step))


def _narrow(values: np.ndarray) -> np.ndarray:
    return values.astype(np.min_scalar_type(int(values.max()) if len(values) else 0))


def _unpacked(data, k: int, vocab: int) -> _Order:
    contexts = data[f"contexts{k}"]
    lengths = data[f"lengths{k}"].astype(np.int64)
    tokens = data[f"tokens{k}"].astype(np.int64)
    counts = data[f"counts{k}"].astype(np.int32)
    if (
        contexts.dtype != np.uint64
        or len(lengths) != len(contexts)
        or int(lengths.sum()) != len(tokens)
        or len(tokens) != len(counts)
        or (len(tokens) and int(tokens.max()) >= vocab)
    ):
        raise ValueError(f"order {k + 1}'s tables do not fit together")
    owner = np.repeat(np.arange(len(contexts)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return _Order(contexts, starts, owner * vocab + tokens, counts, float(data[f"discount{k}"][0]))


def _count(contexts: np.ndarray, tokens: np.ndarray, vocab: int) -> _Order:
    """One order's table from the (context, token) pair of every counted position."""
    if len(tokens) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Order(empty.astype(np.uint64), np.zeros(1, np.int64), empty, empty, 0.5)
    order = np.lexsort((tokens, contexts))
    contexts, tokens = contexts[order], tokens[order]
    new_pair = np.ones(len(tokens), dtype=bool)
    new_pair[1:] = (contexts[1:] != contexts[:-1]) | (tokens[1:] != tokens[:-1])
    firsts = np.flatnonzero(new_pair)
    counts = np.diff(np.append(firsts, len(tokens))).astype(np.int32)
    pair_contexts, pair_tokens = contexts[firsts], tokens[firsts]
    new_context = np.ones(len(firsts), dtype=bool)
    new_context[1:] = pair_contexts[1:] != pair_contexts[:-1]
    context_firsts = np.flatnonzero(new_context)
    owner = np.cumsum(new_context) - 1  # each pair's context index
    ones, twos = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
    discount = ones / (ones + 2 * twos) if ones + twos else 0.5
    return _Order(
        pair_contexts[context_firsts],
        np.append(context_firsts, len(firsts)).astype(np.int64),
        owner * vocab + pair_tokens,
        counts,
        float(np.clip(discount, 0.05, 0.95)),
    )
