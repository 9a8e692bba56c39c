"""Run directories and the checkpoints in them: save, load, list, remove, prune.

A run is one self-contained directory::

    NAME/
      run.json            format version, model and training config, progress summary
      tokenizer.json      a standard Hugging Face tokenizer file
      best.safetensors    weights with the lowest validation loss
      last.safetensors    latest weights plus everything --resume needs: optimizer moments,
                          carried hidden state, RNG state, and the TrainState in its metadata
      metrics.jsonl       one JSON object per evaluation, and per tenth of a timed run

Every file is written to a temporary file and renamed into place, so a crash leaves the previous
version whole. Tensors are stored in safetensors and nothing is ever unpickled. This is the only
module that knows the layout.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from chargen.config import ModelConfig, TrainConfig, from_dict, to_dict
from chargen.errors import (
    CheckpointError,
    RunExistsError,
    RunLockedError,
    TokenizerError,
    UsageError,
)
from chargen.files import (
    atomic_path,
    clean_leftovers,
    read_capped,
    remove_tree,
    staged_directory,
    write_atomic,
)
from chargen.model.ngram import NGram
from chargen.model.rnn import RNNLanguageModel
from chargen.runs import schema
from chargen.text.tokenizer import Tokenizer
from chargen.training.trainer import Trainer, TrainState

FORMAT_VERSION = 1
"""Bump when the layout changes, and add a named upgrade function for the old version."""

ENV_VAR = "CHARGEN_CHECKPOINTS"
DEFAULT_DIR = "checkpoints"
RUN_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
METRICS_FILE = "metrics.jsonl"
COUNTS_FILE = "counts.npz"  # the n-gram model mixed in (``--ngram``), when the run has one
WEIGHTS = ("best", "last")

_NAME = re.compile(r"^\w[\w.-]{0,99}$")  # \w: letters and digits of any script, and _


def checkpoint_root(override: str | Path | None = None) -> Path:
    """``override``, else ``$CHARGEN_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(override or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
        raise UsageError(
            f"invalid run name {shown}: use 1 to 100 letters, digits, '.', '_' and '-' "
            "(no '/' or '..')"
        )
    return name


def run_path(root: Path, name: str) -> Path:
    """The directory of run ``name``, refusing names (or symlinks) that lead out of ``root``."""
    path = root / check_name(name)
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"run {name!r} is a link to {path.resolve()}, outside {root}; refusing it")
    return path


# ---------------------------------------------------------------------------- atomic writes


def _save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports a full disk as its own error type
            raise CheckpointError(f"cannot write {path}: {exc}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


# ---------------------------------------------------------------------------- runs


@dataclass
class Run:
    """A run directory and its ``run.json``."""

    path: Path
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name  # the folder, so a copied or renamed run lists under its new name

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.info["model"])

    @property
    def train_config(self) -> TrainConfig:
        # Runs saved before these were settings: a cosine decay, AdamW's betas (0.9, 0.99).
        before = {"schedule": "cosine", "beta1": 0.9, "beta2": 0.99}
        return from_dict(TrainConfig, before | self.info["train"])

    @property
    def level(self) -> str:
        return self.info["train"]["level"]

    def file(self, name: str) -> Path:
        return self.path / name

    def summary(self) -> dict[str, Any]:
        """What ``checkpoints list`` and ``show`` report of the run."""
        state, model = self.info.get("state", {}), self.info["model"]
        return {
            "name": self.name,
            "path": str(self.path),
            "level": self.info["train"].get("level"),
            "cell": model.get("cell"),
            "layers": model.get("num_layers"),
            "hidden": model.get("hidden_size"),
            "parameters": self.info.get("parameters"),
            "steps": state.get("step", 0),
            "tokens_seen": state.get("tokens_seen", 0),
            "best_val_loss": state.get("best_val_loss"),
            "best_val_bpc": state.get("best_val_bpc"),
            "status": self.info.get("status"),
            "resumable": self.info.get("resumable", False),
            "corpus": self.info.get("corpus"),
            "updated": self.info.get("updated"),
            "disk_bytes": self.disk_bytes(),
        }

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory (readable or not)."""
    return (path / RUN_FILE).is_file()


RUN_FILE_LIMIT = 1 << 20  # bytes: a run.json is a few KB
TOKENIZER_LIMIT = 256 << 20  # bytes: a word vocabulary of a million entries is tens of MB


def open_run(path: Path) -> Run:
    """Read and check ``run.json`` of the run at ``path``; ``CheckpointError`` if it is not a
    run or the file is damaged."""
    run_file = path / RUN_FILE
    if not run_file.is_file() and not run_file.is_symlink():
        raise CheckpointError(f"{path}: not a chargen run (no {RUN_FILE})")
    data = read_capped(run_file, RUN_FILE_LIMIT, CheckpointError)
    try:
        info = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run_file}: unreadable ({exc}); the run is damaged") from None
    schema.check_info(info, run_file, FORMAT_VERSION)
    return Run(path, info)


def scan_runs(root: Path) -> tuple[list[Run], list[Path]]:
    """Readable runs under ``root``, most recently updated first, and the damaged ones."""
    if not root.is_dir():
        return [], []
    clean_leftovers(root)
    runs, damaged = [], []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir() or not _NAME.match(child.name):
            continue
        try:
            runs.append(open_run(child))
        except CheckpointError:
            damaged.append(child)  # a damaged run, or a folder a killed rm left without run.json
    runs.sort(key=lambda r: r.info.get("updated", 0), reverse=True)
    return runs, damaged


def list_runs(root: Path) -> list[Run]:
    return scan_runs(root)[0]


def find_run_dir(spec: str, root: Path) -> Path:
    """The directory of a run to remove, by name or path, even if the run inside is damaged:
    by name, any folder (or link) of that name in ``root`` (a killed removal can leave one
    without ``run.json``); by path, only a folder that holds a ``run.json``."""
    candidate = Path(spec)
    if os.sep in spec or (candidate.is_dir() and not (root / spec).exists()):
        if not is_run(candidate):
            raise CheckpointError(f"{spec}: not a chargen run (no {RUN_FILE}); left alone")
        return candidate
    path = root / check_name(spec)
    if not path.is_dir() and not path.is_symlink():
        raise CheckpointError(f"no run named {spec!r} in {root}")
    return path


PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"
"""Runs that ship with chargen (``folk``: built by ``benchmarks/music.py --ship``), found by name
when ``root`` has no run of that name."""


def shipped_names() -> list[str]:
    """The names of the runs that ship with chargen."""
    if not PRETRAINED.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED.iterdir() if (p / RUN_FILE).is_file())


def resolve_run(spec: str | None, root: Path, *, shipped: bool = True) -> Run:
    """A run by name under ``root`` (else, with ``shipped``, one that ships with chargen), by
    path to its directory, or the latest if ``spec`` is None.

    Callers that change a run (prune, resume) pass ``shipped=False``: a shipped run is read-only.
    """
    if spec is None:
        runs = list_runs(root)
        if not runs:
            raise CheckpointError(
                f"no runs in {root}; train one first: chargen train CORPUS --name NAME"
            )
        return runs[0]
    candidate = Path(spec)
    if (os.sep in spec or (os.altsep and os.altsep in spec)) or (
        candidate.is_dir() and (candidate / RUN_FILE).is_file() and not (root / spec).exists()
    ):
        if candidate.is_file() and candidate.parent.joinpath(RUN_FILE).is_file():
            candidate = candidate.parent  # a path to best.safetensors means its run
        if not candidate.is_dir():
            raise CheckpointError(f"{spec}: no such run directory")
        return open_run(candidate)
    path = run_path(root, spec)
    if shipped and not path.is_dir() and (PRETRAINED / spec / RUN_FILE).is_file():
        return open_run(PRETRAINED / spec)  # a model that ships with chargen
    if not path.is_dir():
        names = [r.name for r in list_runs(root)]
        hint = f"; runs in {root}: {', '.join(names)}" if names else f"; {root} has no runs yet"
        raise CheckpointError(f"no run named {spec!r}{hint}")
    return open_run(path)


def remove_run(path: Path) -> None:
    """Delete a run directory (a link to one: the link alone), refusing one being trained."""
    if not path.is_symlink():
        lock_run(path).close()
    remove_tree(path)


LOCK_FILE = ".lock"


def lock_run(path: Path):
    """An exclusive lock on the run at ``path``, held while the returned file stays open.

    The operating system drops the lock when the process ends, however it ends, so a crash
    leaves no stale lock behind.
    """
    handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115 (the caller holds it open)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are the user's to avoid
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunLockedError(
            f"run {path.name!r} is being trained by another process; wait for it to finish "
            "or stop it first"
        ) from None
    return handle


# ---------------------------------------------------------------------------- saving


def create_run(
    root: Path,
    name: str,
    tokenizer: Tokenizer,
    model_config: ModelConfig,
    train_config: TrainConfig,
    corpus: str,
    parameters: int,
    force: bool = False,
    counts: NGram | None = None,
) -> Run:
    """Make the directory of a new run with its ``run.json``, ``tokenizer.json`` and the
    ``counts`` its model mixes in, if any."""
    path = run_path(root, name)
    if root.is_dir():
        clean_leftovers(root)
    if path.exists() or path.is_symlink():
        if not force and not is_run(path):
            raise RunExistsError(
                f"{path} exists but is not a run (damaged, or left by an interrupted rm); "
                f"remove it (chargen checkpoints rm {name}) or use --force to replace it"
            )
        if not force:
            raise RunExistsError(
                f"a run named {name!r} already exists in {root}; "
                "use --resume to continue it, --force to replace it, or another --name"
            )
        if path.is_dir() and not path.is_symlink():
            lock_run(path).close()  # refuse to delete a run that another process is training
    now = time.time()
    info = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": now,
        "updated": now,
        "status": "new",
        "corpus": corpus,
        "parameters": parameters,
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "state": to_dict(TrainState()),
        "resumable": False,
    }
    # Built in a hidden folder and renamed into place: a crash never leaves a half-made run.
    with staged_directory(path) as staging:
        write_atomic(staging / TOKENIZER_FILE, tokenizer.to_json().encode())
        if counts is not None:
            counts.save(staging / COUNTS_FILE)
        _write_json(staging / RUN_FILE, info)
    return Run(path, info)


def _model_tensors(model: RNNLanguageModel) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, value in model.state_dict().items():
        if model.config.tie_weights and key == "head.weight":
            continue  # the same matrix as embedding.weight; safetensors stores no aliases
        tensors[f"model.{key}"] = value.detach().to("cpu", torch.float32).contiguous()
    return tensors


def save_best(run: Run, trainer: Trainer) -> None:
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "step": str(trainer.state.step),
        "val_loss": repr(trainer.state.best_val_loss),
    }
    _save_tensors_atomic(run.file(BEST_FILE), _model_tensors(trainer.model), metadata)


def save_last(run: Run, trainer: Trainer, status: str) -> None:
    """Everything ``--resume`` needs, in one file, then the summary in ``run.json``."""
    tensors = _model_tensors(trainer.model)
    optimizer = trainer.optimizer.state_dict()
    for index, slots in optimizer["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    saved = trainer.checkpoint_hidden
    hidden = saved if isinstance(saved, tuple) else (saved,)
    for index, tensor in enumerate(hidden):
        tensors[f"hidden.{index}"] = tensor.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if trainer.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "state": json.dumps(to_dict(trainer.state)),
        "param_groups": json.dumps(optimizer["param_groups"]),
    }
    _save_tensors_atomic(run.file(LAST_FILE), tensors, metadata)
    update_info(
        run,
        status=status,
        state=to_dict(trainer.state),
        resumable=True,
        train=to_dict(trainer.config),
    )


def save_counts(run: Run, counts: NGram) -> None:
    """The counts a resumed run rebuilt from its corpus, in place of the saved ones."""
    counts.save(run.file(COUNTS_FILE))


def update_info(run: Run, **changes: Any) -> None:
    run.info.update(changes, updated=time.time())
    _write_json(run.file(RUN_FILE), run.info)


def append_metrics(run: Run, record: dict[str, Any]) -> None:
    # Appending one short line is as good as atomic here: a torn last line is skipped on reading.
    # A link in its place is not followed: training appends to the run's own file only.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(run.file(METRICS_FILE), flags, 0o666)
    except OSError as exc:
        raise CheckpointError(f"{run.file(METRICS_FILE)}: cannot append ({exc.strerror})") from None
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


METRICS_LIMIT = 256 << 20  # bytes: a line per evaluation; a million evaluations fit


def read_metrics(run: Run) -> list[dict[str, Any]]:
    """The points recorded so far: evaluations, and training-loss points without ``val_loss``;
    lines that are neither (a torn last line, a tampered one) are skipped."""
    path = run.file(METRICS_FILE)
    if not path.exists() and not path.is_symlink():
        return []
    records = []
    for line in read_capped(path, METRICS_LIMIT, CheckpointError).splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn line, or bytes that are not UTF-8
            continue
        if isinstance(record, dict) and all(
            isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
            for k in ("step", "train_loss", "val_loss")
            if k in record or k != "val_loss"
        ):
            records.append(record)
    return records


# ---------------------------------------------------------------------------- loading


def load_tokenizer(run: Run) -> Tokenizer:
    path = run.file(TOKENIZER_FILE)
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{run.path}: {TOKENIZER_FILE} is missing; the run is damaged")
    data = read_capped(path, TOKENIZER_LIMIT, CheckpointError)
    try:
        tokenizer = Tokenizer.from_json(data, run.level)
    except TokenizerError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if tokenizer.vocab_size != run.model_config.vocab_size:
        raise CheckpointError(
            f"{run.path}: tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{run.model_config.vocab_size}; the run is damaged"
        )
    return tokenizer


def _read_tensors(run: Run, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file of ``run``, checked before they are loaded: a
    regular file no larger than the run's config allows, a sound header, weights of exactly
    the shapes the config implies.

    The file is read whole, in one ``open``: a trainer may replace it at any moment, and a
    reader that opened it twice (once for the header, once for the data) could mix versions.
    """
    expected = schema.expected_shapes(run.model_config)
    data = read_capped(path, _size_limit(run, expected), CheckpointError)
    header = schema.check_header(data, path)
    schema.check_weights(header, expected, path)
    try:
        tensors = load_safetensors(data)  # JSON header and raw data: the format has no code
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, header.get("__metadata__") or {}


def _size_limit(run: Run, expected: dict[str, tuple[int, ...]]) -> int:
    """The most bytes a weights file of ``run`` can hold: the weights and AdamW's two moments
    in float32, the carried state of every stream, the random state and the header."""
    weights = sum(math.prod(shape) for shape in expected.values()) * 4
    config, train = run.model_config, run.train_config
    states = 2 * config.num_layers * train.batch_size * config.hidden_size * 4
    return 3 * weights + len(expected) * 64 + states + schema.MAX_HEADER + (1 << 20)


def _load_weights(model: RNNLanguageModel, tensors: dict[str, torch.Tensor]) -> None:
    """The model's weights from checked tensors (``_read_tensors`` matched their shapes)."""
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    defaults = model.state_dict()
    for key in schema.OPTIONAL_WEIGHTS:  # what an earlier chargen did not save: as made
        name = key.removeprefix("model.")
        if name in defaults and name not in state:
            state[name] = defaults[name]
    model.load_state_dict(state, strict=not model.config.tie_weights)


def weights_path(run: Run, weights: str = "best") -> Path:
    """``best`` falls back to ``last`` for runs that never evaluated."""
    if weights not in WEIGHTS:
        raise UsageError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path = run.file(BEST_FILE if weights == "best" else LAST_FILE)
    if weights == "best" and not path.exists() and run.file(LAST_FILE).exists():
        path = run.file(LAST_FILE)
    if not path.exists():
        if weights == "last" and run.file(BEST_FILE).exists():
            raise CheckpointError(
                f"{run.path}: the last weights were pruned (prune --best-only); use --weights best"
            )
        raise CheckpointError(f"{run.path}: no weights saved yet")
    return path


def load_model(
    run: Run, weights: str = "best", device: torch.device | str = "cpu"
) -> tuple[RNNLanguageModel, Tokenizer]:
    """The model (in eval mode, on ``device``) and tokenizer of a run."""
    tokenizer = load_tokenizer(run)
    tensors, _ = _read_tensors(run, weights_path(run, weights))
    model = RNNLanguageModel(run.model_config)  # only now: the weights fit its shapes
    _load_weights(model, tensors)
    if model.config.ngram:
        config = model.config
        model.counts = NGram.load(run.file(COUNTS_FILE), config.vocab_size, config.ngram)
    return model.to(device).eval(), tokenizer


def restore_trainer(run: Run, trainer: Trainer) -> None:
    """Restore model, optimizer, data position, hidden state and RNG as ``save_last`` left them,
    each checked against what this trainer has before it is taken."""
    path = run.file(LAST_FILE)
    if not path.exists():
        raise CheckpointError(
            f"{run.path}: nothing to resume yet (stopped before its first checkpoint); "
            "start it again with --force"
        )
    tensors, metadata = _read_tensors(run, path)
    if "state" not in metadata:
        raise CheckpointError(
            f"{run.path}: this run cannot be resumed (no optimizer state; was it pruned?)"
        )
    try:
        state = json.loads(metadata["state"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: damaged training state; cannot resume") from None
    state = schema.check_state(state, f"{path}: state")
    optimizer = _optimizer_state(tensors, trainer.params, path)
    hidden = _hidden_state(tensors, trainer, path)
    rng = _rng_state(tensors, path)
    _load_weights(trainer.model, tensors)
    # Hyperparameters come from the run's config; how the update is computed (fused or not)
    # belongs to this machine: the saved file contributes the moments alone.
    # (each group numbers its parameters in ``trainer.params``' order, as the saved moments are)
    groups = trainer.optimizer.state_dict()["param_groups"]
    trainer.optimizer.load_state_dict({"state": optimizer, "param_groups": groups})
    trainer.load_hidden(hidden)
    torch.set_rng_state(rng)
    if "rng.cuda" in tensors and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], trainer.device)
    trainer.state = state


def _optimizer_state(tensors, params: list[torch.Tensor], path) -> dict[int, dict]:
    """AdamW's saved moments, each named for a parameter and shaped like it."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, slot = schema.optimizer_key(key, params, path)
            if tuple(value.shape) != schema.optimizer_shape(slot, params[index]):
                raise CheckpointError(f"{path}: {key} has the wrong shape; the run is damaged")
            state.setdefault(index, {})[slot] = value.float()
    if any(set(slots) != set(schema.OPTIMIZER_SLOTS) for slots in state.values()):
        raise CheckpointError(f"{path}: incomplete optimizer state; the run is damaged")
    return state


def _hidden_state(tensors, trainer: Trainer, path):
    """The carried state of every stream, shaped as this trainer's state (all processes')."""
    hidden = [tensors[f"hidden.{i}"] for i in range(2) if f"hidden.{i}" in tensors]
    expected = trainer.hidden if isinstance(trainer.hidden, tuple) else (trainer.hidden,)
    streams = trainer.batches.batch_size * trainer.world.size
    shape = (trainer.model.config.num_layers, streams, trainer.model.config.hidden_size)
    if len(hidden) != len(expected) or any(tuple(h.shape) != shape for h in hidden):
        raise CheckpointError(f"{path}: saved hidden state does not fit this run's batch size")
    return tuple(h.float() for h in hidden) if len(hidden) == 2 else hidden[0].float()


def _rng_state(tensors, path) -> torch.Tensor:
    rng = tensors.get("rng.torch")
    current = torch.get_rng_state()
    if rng is None or rng.dtype != current.dtype or rng.shape != current.shape:
        raise CheckpointError(f"{path}: damaged random state; the run is damaged")
    return rng


# ---------------------------------------------------------------------------- pruning


def prune_run(run: Run, best_only: bool = False, force: bool = False) -> int:
    """Free disk: drop resume state from ``last`` (or ``last`` itself with ``best_only``).

    Returns the bytes freed. A pruned run still samples and evaluates but cannot be resumed, so
    a run that has not finished is refused unless ``force``.
    """
    with lock_run(run.path):  # not while it trains, --force or not
        return _prune(run, best_only, force)


def _prune(run: Run, best_only: bool, force: bool) -> int:
    if run.info.get("status") != "finished" and run.info.get("resumable") and not force:
        raise UsageError(
            f"run {run.name!r} is {run.info.get('status')} and could still be resumed; "
            "pruning would prevent that. Add --force to prune it anyway"
        )
    before = run.disk_bytes()
    last = run.file(LAST_FILE)
    if best_only and run.file(BEST_FILE).exists():
        last.unlink(missing_ok=True)
    elif last.exists() and run.info.get("resumable"):
        tensors, metadata = _read_tensors(run, last)
        weights = {k: v for k, v in tensors.items() if k.startswith("model.")}
        _save_tensors_atomic(last, weights, {"format_version": metadata.get("format_version", "1")})
    update_info(run, resumable=False)
    return before - run.disk_bytes()
