"""Typed errors raised by the library.

The library raises these; only the CLI turns them into ``Error: ...`` lines and exit codes.
Nothing here prints or exits.
"""


class ChargenError(Exception):
    """Something the user can fix: a bad file, a missing run, a broken checkpoint.

    ``exit_code`` is what the CLI exits with: 2 for a usage error, 1 otherwise.
    """

    exit_code = 1


class UsageError(ChargenError):
    """The command line asked for something impossible (bad option values, wrong arguments)."""

    exit_code = 2


class CorpusError(ChargenError):
    """A corpus file cannot be used for training or evaluation."""


class TokenizerError(ChargenError):
    """Text cannot be encoded with this tokenizer, or a tokenizer file is unusable."""


class CheckpointError(ChargenError):
    """A run directory or checkpoint file is missing, corrupt or from an unknown format."""


class RunExistsError(UsageError):
    """``train --name X`` where X already exists, without ``--resume`` or ``--force``."""


class TrainingDiverged(ChargenError):
    """The loss or the gradient became NaN or infinite; the weights were not updated with it."""


class RunLockedError(ChargenError):
    """Another process is training the same run."""


class MusicError(ChargenError):
    """An ABC tune cannot be checked or exported, or a music tool (music21, abcm2ps) is missing."""
