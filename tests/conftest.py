"""Shared fixtures: a hermetic checkpoint directory and tiny corpora written by the tests."""

from __future__ import annotations

import pytest
import torch

from chargen.config import ModelConfig, TrainConfig

# Our own few lines, repeated: small enough to overfit in seconds, long enough for many windows.
VERSE = (
    "The tide came in at the turn of the moon,\n"
    "and the keeper lit the lamp too soon.\n"
    "Row, row, the boats go home;\n"
    "salt on the rope and gulls on the foam.\n\n"
)


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch):
    """Every test gets its own checkpoint and cache directories and a fixed thread count."""
    monkeypatch.setenv("CHARGEN_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("CHARGEN_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    yield


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 40, encoding="utf-8")
    return path


def tiny_model(cell: str = "lstm", **changes) -> ModelConfig:
    return ModelConfig(**{"cell": cell, "embedding_dim": 16, "hidden_size": 32, **changes})


def tiny_train(**changes) -> TrainConfig:
    values = dict(
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        warmup_steps=5,
        eval_every=10,
        max_steps=30,
        precision="fp32",
    )
    values.update(changes)
    return TrainConfig(**values)
