"""chargen: train recurrent neural networks on text and generate new text (and folk tunes).

The Python API::

    import chargen

    model = chargen.load("bard")                      # a run name or a run directory
    model.generate("ROMEO:", length=500, temperature=0.8, seed=1)
    for piece in model.stream("ROMEO:", length=500):
        print(piece, end="")
    model.score(text).bits_per_char
    chargen.train("corpus.txt", name="bard", time="2m")

``__all__`` is the public surface. Names are imported on first use, so ``import chargen`` (and
the ``chargen`` command's start-up) does not pay for torch until it is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_HOMES = {
    "chargen.api": (
        "Model",
        "Ranked",
        "Sample",
        "Score",
        "TrainingSummary",
        "Tune",
        "TuneCheck",
        "identify",
        "latest",
        "load",
        "list_runs",
        "start",
        "train",
    ),
    "chargen.config": ("ModelConfig", "SampleConfig", "TrainConfig"),
    "chargen.errors": (
        "ChargenError",
        "CheckpointError",
        "CorpusError",
        "MusicError",
        "RunExistsError",
        "RunLockedError",
        "TokenizerError",
        "TrainingDiverged",
        "UsageError",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'chargen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static checkers and IDEs see
    from chargen.api import (  # noqa: F401
        Model,
        Ranked,
        Sample,
        Score,
        TrainingSummary,
        Tune,
        TuneCheck,
        identify,
        latest,
        list_runs,
        load,
        start,
        train,
    )
    from chargen.config import ModelConfig, SampleConfig, TrainConfig  # noqa: F401
    from chargen.errors import (  # noqa: F401
        ChargenError,
        CheckpointError,
        CorpusError,
        MusicError,
        RunExistsError,
        RunLockedError,
        TokenizerError,
        TrainingDiverged,
        UsageError,
    )
