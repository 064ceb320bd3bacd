"""One run per ``--output-dir``: the folder is locked for the run, a new run refuses (or, in
the recipe's default folder, replaces) a previous one, and a resumed run must be the same run.

Layout: ``<output_dir>/run_config.json``, ``<output_dir>/seed_<s>/{checkpoints,best,final}``
per seed, ``<output_dir>/results.{md,json}`` across seeds, and the lock file ``.run.lock``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from .checkpoints import TRAINER_STATE_NAME, TrainerState
from .errors import RecipeError
from .flags import run_config
from .loop import use_cpu

RUN_CONFIG_NAME = "run_config.json"
LOCK_NAME = ".run.lock"


@contextmanager
def claim_output_dir(args: argparse.Namespace) -> Iterator[PartialState]:
    """Hold ``--output-dir`` for the run inside the ``with`` block, prepared by :func:`prepare_output_dir`.

    The main process takes an inter-process lock on the folder (``filelock``, not waiting): a
    second run into the same folder stops at once with a :class:`RecipeError`. On leaving, the
    lock is released and the process group (if any) destroyed. Yields the ``PartialState``.
    """
    state = PartialState(cpu=use_cpu(args))
    output_dir = Path(args.output_dir)
    lock, created, refusal = None, not output_dir.exists(), [None]
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(output_dir / LOCK_NAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            lock, created = None, False
            refusal[0] = (f"--output-dir {str(output_dir)!r} is in use by another run (it holds the lock "
                          f"{LOCK_NAME}); wait for that run to end or choose another --output-dir")
    if state.num_processes > 1:
        broadcast_object_list(refusal)
    try:
        if refusal[0]:
            raise RecipeError(refusal[0])
        try:
            prepare_output_dir(args)
        except RecipeError:
            if created and state.is_main_process:  # leave no folder behind that this run only locked
                shutil.rmtree(output_dir)
            raise
        yield state
    finally:
        if lock is not None:
            lock.release()
        state.destroy_process_group()


def prepare_output_dir(args: argparse.Namespace) -> dict[str, Any]:
    """Make ``--output-dir`` hold this run and only it; returns :func:`~recipe_kit.flags.run_config` ``(args)``.

    Call once per invocation, before anything is written there (the seeds of one
    invocation are one run). Every process checks; the main process clears and writes.

    - A new run (no ``--resume-from-checkpoint``) refuses a folder that holds anything but a
      ``run_config.json`` (a run that stopped before writing anything), deleting nothing,
      unless ``--overwrite-output-dir``: then the previous run's files are deleted first —
      only in a folder whose ``run_config.json`` shows that a recipe run wrote it. In the
      recipe's default folder (no ``--output-dir`` given) a previous run is replaced, and
      the script says so.
    - A resumed run refuses a stored configuration that differs from this one (naming the
      differing flags), both the folder's and, for ``--resume-from-checkpoint PATH``, the
      one in PATH's trainer state.
    """
    config = run_config(args)
    output_dir = Path(args.output_dir)
    stored = _stored_run_config(output_dir)
    held = sorted(p.name for p in output_dir.iterdir() if p.name not in (RUN_CONFIG_NAME, LOCK_NAME)) \
        if output_dir.is_dir() else []
    shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
    if args.resume_from_checkpoint is None:
        replace_default = bool(held) and stored is not None and not args.output_dir_given
        if held and not (args.overwrite_output_dir or replace_default):
            raise RecipeError(f"--output-dir {str(output_dir)!r} already holds a run ({shown}); pass "
                              "--overwrite-output-dir to replace it, --resume-from-checkpoint to continue "
                              "it, or choose another --output-dir")
        if held and stored is None:
            raise RecipeError(f"--output-dir {str(output_dir)!r} holds files that no recipe run wrote "
                              f"({shown}; no {RUN_CONFIG_NAME}): --overwrite-output-dir deletes only a "
                              "previous run; choose another --output-dir")
        if replace_default:
            PartialState().print(f"replacing the previous run in {output_dir} (the default --output-dir; "
                                 "give --output-dir to keep runs side by side)")
    else:
        _check_same_run(args, output_dir, config, stored, held, shown)
    state = PartialState(cpu=use_cpu(args))
    state.wait_for_everyone()  # every process has checked before the main process changes anything
    if state.is_main_process:
        if held and args.resume_from_checkpoint is None:
            for name in held:
                path = output_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_CONFIG_NAME).write_text(json.dumps(config, indent=1))
    state.wait_for_everyone()
    return config


def _stored_run_config(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / RUN_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path} is corrupt (not JSON: {error}): the run in --output-dir "
                          f"{str(output_dir)!r} cannot be checked; choose another --output-dir") from error
    if not isinstance(stored, dict):
        raise RecipeError(f"{path} is not a run configuration (a JSON object); choose another --output-dir")
    return stored


def _check_same_run(args: argparse.Namespace, output_dir: Path, config: Mapping[str, Any],
                    stored: Mapping[str, Any] | None, held: list[str], shown: str) -> None:
    if held and stored is None:
        raise RecipeError(f"--output-dir {str(output_dir)!r} holds files ({shown}) but no {RUN_CONFIG_NAME}: "
                          "it cannot be checked to be the run being resumed; choose another --output-dir")
    sources = {str(output_dir / RUN_CONFIG_NAME): stored}
    if args.resume_from_checkpoint != "latest":
        checkpoint = Path(args.resume_from_checkpoint)
        try:
            sources[str(checkpoint)] = TrainerState.load(checkpoint / TRAINER_STATE_NAME).run_config
        except ValueError as error:
            raise RecipeError(f"--resume-from-checkpoint: {error}") from error
        if sources[str(checkpoint)] is None:
            raise RecipeError(f"--resume-from-checkpoint {str(checkpoint)!r} stores no run configuration "
                              "(fit() was not given run_config): it cannot be checked to be the same run")
    for where, previous in sources.items():
        if previous is not None and previous != config:
            raise RecipeError(f"--resume-from-checkpoint continues only the same run, but {where} was "
                              f"trained with other settings: {_differing_keys(previous, config)}")


def _differing_keys(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(current), key=str)
    return ", ".join(f"--{key.replace('_', '-')} {stored.get(key, '(unset)')!r} -> {current.get(key, '(unset)')!r}"
                     for key in keys if stored.get(key) != current.get(key))
