"""What a run's files may contain, checked before anything is built from them.

Run directories are shared (copied, downloaded, mounted from another machine), so ``run.json``,
the safetensors headers and the training state are input like any other. ``check_info`` checks
``run.json``'s fields, types and bounds; ``check_header`` checks a safetensors header against the
shapes the model config implies and the file's size, before a byte of tensor data is read or a
weight allocated; ``check_state`` and ``optimizer_key`` check what ``--resume`` restores. Every
failure is a ``CheckpointError`` naming the file. This module knows no file names: the store
passes what it read.
"""

from __future__ import annotations

import json
import math
import re
import typing
from typing import Any

import torch

from chargen.config import ModelConfig, TrainConfig, from_dict
from chargen.errors import CheckpointError, UsageError
from chargen.model.rnn import RNNLanguageModel
from chargen.training.trainer import TrainState

REQUIRED = {
    "model": ("cell", "vocab_size", "embedding_dim", "hidden_size", "num_layers"),
    "train": ("level",),
}
"""Config fields a run must have: the rest have defaults that older runs rightly take."""

_TOP_LEVEL = {
    "format_version": (int,),
    "name": (str,),
    "created": (int, float),
    "updated": (int, float),
    "status": (str,),
    "corpus": (str, list),
    "corpus_sha256": (str,),
    "corpus_bytes": (int,),
    "corpus_chars": (int,),
    "parameters": (int,),
    "resumable": (bool,),
    "model": (dict,),
    "train": (dict,),
    "state": (dict,),
}

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
"""safetensors dtypes a checkpoint may hold, with their sizes in bytes."""

MAX_HEADER = 16 << 20  # bytes of JSON header: a few hundred tensors need a few KB

OPTIMIZER_SLOTS = {"step": (), "exp_avg": None, "exp_avg_sq": None}
"""AdamW's state per parameter: a scalar step count and two moments shaped like the parameter."""

_OPTIM_KEY = re.compile(r"^optim\.(\d+)\.(\w+)$")


def damaged(where: object, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; the run is damaged")


def corrupt(where: object, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; the checkpoint is corrupt or truncated")


def check_info(info: object, where: object, newest: int) -> None:
    """``run.json``'s content: an object whose fields have their types, whose configs have their
    required fields and pass their own validation, of a format no newer than ``newest``."""
    if not isinstance(info, dict):
        raise damaged(where, "not a JSON object")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > newest:
        raise CheckpointError(
            f"{where}: checkpoint format {version!r} is newer than this chargen understands "
            f"({newest}); upgrade chargen"
        )
    for field, kinds in _TOP_LEVEL.items():
        value = info.get(field)
        if value is not None and not _is(value, kinds):
            raise damaged(where, f"{field} is {_shown(value)}")
    corpus = info.get("corpus")
    if isinstance(corpus, list) and not all(isinstance(c, str) for c in corpus):
        raise damaged(where, f"corpus is {_shown(corpus)}")
    for section, required in REQUIRED.items():
        if not isinstance(info.get(section), dict):
            raise damaged(where, f"{section!r} is missing or not an object")
        missing = [f for f in required if f not in info[section]]
        if missing:
            raise damaged(where, f"{section} has no {', '.join(missing)}")
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("state", TrainState)):
        check_types(info.get(section, {}), cls, f"{where}: {section}")
    try:
        from_dict(ModelConfig, info["model"]).validate()
        from_dict(TrainConfig, info["train"]).validate()
    except UsageError as exc:
        raise damaged(where, str(exc)) from None
    if info["model"]["vocab_size"] < 2:
        raise damaged(where, f"model.vocab_size is {info['model']['vocab_size']}")


def check_types(values: object, cls: type, where: str) -> None:
    """Every field of ``cls`` present in ``values`` has its annotated type (a float may be an
    int in JSON; a bool is never a number) and, for numbers, a finite value."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where} is not an object; the run is damaged")
    for name, hint in typing.get_type_hints(cls).items():
        value = values.get(name)
        optional = type(None) in typing.get_args(hint)
        if value is None and name in values and not optional:
            raise CheckpointError(f"{where}.{name} is null; the run is damaged")
        if value is None:
            continue
        kinds = tuple(k for k in typing.get_args(hint) or (hint,) if k is not type(None))
        if float in kinds:
            kinds += (int,)
        endless = isinstance(value, float) and not math.isfinite(value)
        if not _is(value, kinds) or (endless and name not in _NAN_FIELDS):
            raise CheckpointError(f"{where}.{name} is {_shown(value)}; the run is damaged")


_NAN_FIELDS = {"loss"}  # the training loss is NaN before the first step


def check_state(values: object, where: str) -> TrainState:
    """The training state ``--resume`` continues from: typed fields, counts that are not
    negative."""
    check_types(values, TrainState, where)
    for name in ("step", "epoch", "window", "tokens_seen", "best_step", "bad_evals"):
        if values.get(name, 0) < 0:
            raise CheckpointError(f"{where}.{name} is {values[name]}; the run is damaged")
    if values.get("elapsed", 0.0) < 0:
        raise CheckpointError(f"{where}.elapsed is negative; the run is damaged")
    known = set(typing.get_type_hints(TrainState))
    return TrainState(**{k: v for k, v in values.items() if k in known})


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every weight a model of ``config`` saves, worked out, not allocated:
    however large the config says the model is."""
    shapes = {f"model.{k}": v for k, v in RNNLanguageModel.shapes(config).items()}
    if config.tie_weights:
        shapes.pop("model.head.weight")  # stored once, as the embedding
    return shapes


def check_header(data: bytes, where: object) -> dict[str, Any]:
    """The header of a safetensors file whose bytes are ``data``: a JSON object of tensors whose
    dtypes are known and whose offsets tile the data exactly, as the format requires."""
    if len(data) < 8:
        raise corrupt(where, "truncated (no safetensors header)")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER, len(data) - 8):
        raise corrupt(where, f"header of {size:,} bytes does not fit")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt(where, "unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise corrupt(where, "the safetensors header is not an object")
    end = 0
    for name, entry in sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda item: _offsets(item[1], where, item[0])[0],
    ):
        start, stop = _offsets(entry, where, name)
        count = math.prod(_shape(entry, where, name))
        if start != end or stop - start != count * DTYPES[entry["dtype"]]:
            raise corrupt(where, f"tensor {name} has wrong offsets")
        end = stop
    if end != len(data) - 8 - size:
        raise corrupt(where, "its tensor data does not match its header")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt(where, "damaged metadata")
    return header


OPTIONAL_WEIGHTS = {"model.ngram_product"}
"""Weights that runs made by an earlier chargen lack, and that load with their defaults."""


def check_weights(header: dict[str, Any], expected: dict[str, tuple[int, ...]], where) -> None:
    """The model's weights in a checked header have exactly the shapes the config implies."""
    found = {k: tuple(v["shape"]) for k, v in header.items() if k.startswith("model.")}
    missing = sorted(set(expected) - set(found) - OPTIONAL_WEIGHTS)
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(unexpected)}" if unexpected else "",
                *(f"{k} is {list(found[k])} where {list(expected[k])} fits" for k in wrong[:3]),
            )
            if part
        )
        raise CheckpointError(f"{where}: weights do not fit the model config ({detail})")


def optimizer_key(key: str, parameters: list[torch.Tensor], where) -> tuple[int, str]:
    """The parameter index and slot of an ``optim.I.SLOT`` tensor name, checked."""
    match = _OPTIM_KEY.match(key)
    if not match or match[2] not in OPTIMIZER_SLOTS or int(match[1]) >= len(parameters):
        raise CheckpointError(f"{where}: unknown optimizer state {key!r}; the run is damaged")
    return int(match[1]), match[2]


def optimizer_shape(slot: str, parameter: torch.Tensor) -> tuple[int, ...]:
    shape = OPTIMIZER_SLOTS[slot]
    return tuple(parameter.shape) if shape is None else shape


def _offsets(entry: object, where, name: str) -> tuple[int, int]:
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        raise corrupt(where, f"tensor {name} has an unknown dtype")
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise corrupt(where, f"tensor {name} has wrong offsets")
    return offsets[0], offsets[1]


def _shape(entry: dict, where, name: str) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise corrupt(where, f"tensor {name} has a wrong shape")
    return shape


def _is(value: object, kinds: tuple[type, ...]) -> bool:
    """``isinstance`` where a bool counts only as a bool, never as a number."""
    return isinstance(value, kinds) and (not isinstance(value, bool) or bool in kinds)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
