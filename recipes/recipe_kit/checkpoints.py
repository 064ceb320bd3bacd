"""A run's folders: ``checkpoints/epoch_XXXX`` (Accelerate's ``save_state`` plus the
:class:`TrainerState`), ``best`` (the best-val weights) and ``final`` (``save_pretrained``);
which checkpoint a resume starts from, and whether a checkpoint is complete."""
from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch.nn as nn
from accelerate import PartialState
from safetensors import SafetensorError
from safetensors.torch import load_file

CHECKPOINTS_DIRNAME = "checkpoints"
BEST_DIRNAME = "best"
FINAL_DIRNAME = "final"
WEIGHTS_NAME = "model.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"


@dataclass
class TrainerState:
    """What :func:`~recipe_kit.loop.fit` needs besides Accelerate's state to continue a run exactly.

    ``history`` has one entry per finished epoch (``train_loss`` + validation metrics);
    ``steps`` one entry per micro-batch of the main process (``step``, ``loss``, extras);
    ``first_nonfinite_step`` is the first micro-batch whose loss was NaN/inf (None if none);
    ``run_config`` is the :func:`~recipe_kit.flags.run_config` of the run (None if ``fit`` was not given one).
    """

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    first_nonfinite_step: int | None = None
    run_config: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        """Read ``path``; a truncated or foreign file is a ``ValueError`` naming it."""
        try:
            stored = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is corrupt (not JSON: {error})") from error
        names = {f.name for f in fields(cls)}
        if not isinstance(stored, dict) or not set(stored) <= names:
            raise ValueError(f"{path} is not a trainer state (expected the keys {sorted(names)})")
        return cls(**stored)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Epoch checkpoints of a run whose save finished (those with a trainer state), oldest first."""
    root = run_dir / CHECKPOINTS_DIRNAME
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch_*") if (p / TRAINER_STATE_NAME).is_file())


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (naming the broken file), or ``None``.

    Reads the trainer state, every safetensors file in full and checks the CRCs of every
    ``torch.save`` archive (optimizer, scheduler, RNG states) without unpickling anything.
    """
    state_path = checkpoint / TRAINER_STATE_NAME
    if not state_path.is_file():
        return f"{state_path} is missing (the save was interrupted)"
    try:
        TrainerState.load(state_path)
    except ValueError as error:
        return str(error)
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix in (".bin", ".pkl", ".pt"):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{path} is corrupt (bad CRC in {bad})"
        except (SafetensorError, OSError, zipfile.BadZipFile, EOFError) as error:
            return f"{path} is corrupt ({type(error).__name__}: {error})"
    return None


def resolve_resume(resume_from_checkpoint: str | None, run_dir: Path) -> Path | None:
    """Where a run in ``run_dir`` resumes from: ``None`` → a fresh run; a path → that checkpoint,
    which must be complete; ``"latest"`` → the newest complete checkpoint of ``run_dir`` (a fresh
    run if there is none). Skipping a broken newer checkpoint is said in one line; a broken
    named checkpoint, or only broken ones, is a ``ValueError`` naming the broken file."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint != "latest":
        problem = checkpoint_problem(Path(resume_from_checkpoint))
        if problem:
            raise ValueError(f"--resume-from-checkpoint: {problem}")
        return Path(resume_from_checkpoint)
    found = checkpoint_dirs(run_dir)
    broken = []
    for checkpoint in reversed(found):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if broken:
                PartialState().print(f"resuming from {checkpoint}: the newer checkpoint {broken[0]} "
                                     f"cannot be loaded ({broken[1]})")
            return checkpoint
        broken = broken or [checkpoint.name, problem]
    if broken:
        raise ValueError(f"--resume-from-checkpoint: no complete checkpoint in {run_dir / CHECKPOINTS_DIRNAME}; "
                         f"the newest one cannot be loaded: {broken[1]}")
    return None


def load_best_weights(model: nn.Module, run_dir: Path) -> None:
    """Load ``run_dir/best`` (the best-val weights :func:`~recipe_kit.loop.fit` kept) into ``model``."""
    path = run_dir / BEST_DIRNAME / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no best-val weights at {path}: was fit() run for this run_dir?")
    model.load_state_dict(load_file(str(path)))
