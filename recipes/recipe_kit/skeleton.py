"""The train-and-test skeleton of every recipe's ``training_function``: the Accelerator and its
trackers for one run (:func:`recipe_accelerator`), then seed, model, Adam, loaders, lr
schedule, ``prepare``, :func:`~recipe_kit.loop.fit`, best-val weights and the test pass
(:func:`train_and_test`). A recipe keeps its data, model, loss and metrics."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset

from .checkpoints import TrainerState, load_best_weights, resolve_resume
from .errors import user_input
from .flags import run_config, tracker_config
from .loop import TrainingStep, fit, make_accelerator, make_lr_scheduler, seed_everything
from .results import count_parameters

SPLITS = ("train", "val", "test")


@dataclass
class TrainedRun:
    """What :func:`train_and_test` returns: the prepared ``model`` holding the best-val weights
    (the last epoch's if validation never gave a finite value), the :class:`TrainerState`,
    the model's ``parameters`` and whatever the recipe's ``test`` returned."""

    model: nn.Module
    state: TrainerState
    parameters: int
    test: Any


@contextmanager
def recipe_accelerator(args: argparse.Namespace, project: str) -> Iterator[Accelerator]:
    """The run's :func:`~recipe_kit.loop.make_accelerator` with its trackers started under
    ``project``; on leaving, every process has finished, the trackers are closed (not
    ``end_training()``: later runs of the invocation still need the process group) and the
    memory is freed."""
    accelerator = make_accelerator(args)
    accelerator.init_trackers(project, config=tracker_config(args))
    try:
        yield accelerator
    finally:
        accelerator.wait_for_everyone()
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.free_memory()


def train_and_test(accelerator: Accelerator, args: argparse.Namespace, config: Mapping[str, Any], *,
                   build_model: Callable[[], nn.Module], datasets: Mapping[str, Dataset],
                   training_step: TrainingStep, evaluate: Callable[[nn.Module, DataLoader], Mapping[str, float]],
                   test: Callable[[nn.Module, DataLoader], Any], run_dir: Path, monitor: str,
                   mode: str = "max", log_prefix: str = "") -> TrainedRun:
    """Train ``build_model()`` on ``datasets["train"]`` into ``run_dir`` and test its best-val weights.

    ``config`` holds ``seed``, ``lr``, ``epochs`` and ``batch_size``; the shared flags in
    ``args`` give the rest (lr schedule, workers, checkpoints, resume). The model is built
    right after seeding, so its initial weights depend on the seed only. ``evaluate(model,
    val_loader)`` returns the validation metrics (``monitor`` among them, ``mode`` max/min),
    ``test(model, test_loader)`` whatever the recipe reports; both must gather across
    processes (``accelerator.gather_for_metrics``).
    """
    seed_everything(config["seed"], deterministic=args.deterministic)
    with user_input():  # the model is built from the flags: its ValueError is a bad flag
        model = build_model()
    parameters = count_parameters(model)
    accelerator.print(f"{log_prefix}model: {parameters:,} parameters")
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loaders = [DataLoader(datasets[key], batch_size=config["batch_size"], shuffle=key == "train",
                          num_workers=args.num_workers, drop_last=key == "train") for key in SPLITS]
    lr_scheduler = make_lr_scheduler(args, optimizer, len(loaders[0]))
    model, optimizer, lr_scheduler, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, lr_scheduler, *loaders)
    with user_input():
        resume_from = resolve_resume(args.resume_from_checkpoint, run_dir)
    state = fit(accelerator, model, optimizer, train_loader, training_step=training_step,
                evaluate=lambda m: evaluate(m, val_loader), epochs=config["epochs"], run_dir=run_dir,
                monitor=monitor, mode=mode, resume_from=resume_from, log_prefix=log_prefix,
                checkpoints_total_limit=args.checkpoints_total_limit, run_config=run_config(args),
                lr_scheduler=lr_scheduler)
    accelerator.wait_for_everyone()
    if state.best_epoch is not None:
        load_best_weights(accelerator.unwrap_model(model), run_dir)
    return TrainedRun(model, state, parameters, test(model, test_loader))
