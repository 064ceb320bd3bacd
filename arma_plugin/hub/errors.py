"""The errors of a checkpoint: one ``CheckpointError`` hierarchy, each naming the file at fault."""
from __future__ import annotations

import os

__all__ = ["CheckpointError", "CheckpointNotFoundError", "IncompatibleCheckpointError",
           "CorruptCheckpointError", "CheckpointMismatchError", "UnknownArchitectureError",
           "UnsafeCheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; ``path`` names the file (or directory) at fault.

    Every failure of :func:`~arma_plugin.from_pretrained` caused by what a checkpoint holds is
    one of the subclasses below; a ``ValueError`` that is not a ``CheckpointError`` means the
    caller's own arguments were refused.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointNotFoundError(CheckpointError):
    """``config.json`` or ``model.safetensors`` is missing (locally, on the Hub or in its cache)."""


class IncompatibleCheckpointError(CheckpointError):
    """``config.json`` is from a newer format version, or is not an arma-plugin/timm/SMP config."""


class CorruptCheckpointError(CheckpointError):
    """A file is truncated, is not valid JSON/safetensors, lacks or misuses a field, asks for
    weights from anywhere but the checkpoint, or comes from another save than its companion file
    (a save interrupted between ``model.safetensors`` and ``config.json``)."""


class CheckpointMismatchError(CheckpointError):
    """The weights or the ARMA config do not fit the rebuilt model: shapes differ, keys are
    missing/unexpected, or ``target_modules`` matches nothing."""


class UnknownArchitectureError(CheckpointError):
    """The base architecture, library or model class cannot be found in this environment."""


class UnsafeCheckpointError(CheckpointError):
    """Loading would run code the checkpoint brings: a pickle file (``.bin``, ``.pt``, ...), or a
    model factory whose module is not an installed package (nor one the caller trusts)."""
