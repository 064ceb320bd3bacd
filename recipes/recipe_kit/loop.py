"""The training loop of every recipe: the Accelerator, seeding, the lr schedule and :func:`fit`
(epochs, validation, best-val weights, a checkpoint every epoch, resume)."""
from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sized

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from arma_plugin import check_choice

from .checkpoints import BEST_DIRNAME, CHECKPOINTS_DIRNAME, TRAINER_STATE_NAME, TrainerState, checkpoint_dirs
from .errors import RecipeError

LR_DECAYS: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}
"""``--lr-scheduler-type``: the lr factor after the warm-up, as a function of the progress 0 → 1."""

TrainingStep = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
"""``training_step(model, batch) -> {"loss": scalar tensor, **other scalar tensors to log}``."""

Evaluate = Callable[[nn.Module], Mapping[str, float]]
"""``evaluate(model) -> {metric: value}``; must return the same values on every process
(use ``accelerator.gather_for_metrics``)."""


def seed_everything(seed: int, *, deterministic: bool) -> None:
    """Seed python, numpy and torch on every device (Accelerate's ``set_seed``).

    ``deterministic`` additionally asks torch for deterministic kernels in warn-only mode,
    so ops without a deterministic CUDA kernel (e.g. upsampling backward) warn instead of failing.
    """
    set_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The Accelerator every recipe uses.

    Several launched processes on a machine without GPUs (``accelerate launch --multi_gpu
    --num_processes 2`` on a laptop) train as gloo CPU processes; without ``cpu=True`` each
    would silently run its own single-process training.

    The seedable sampler makes the shuffle order a function of (seed, epoch) only — it takes
    torch's initial seed at ``prepare`` time, so call :func:`seed_everything` first — which is
    what lets a resumed run see exactly the batches an uninterrupted one would.
    """
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=use_cpu(args),
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir),
                                            logging_dir=str(args.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def use_cpu(args: argparse.Namespace) -> bool:
    """``--cpu``, or several launched processes on a machine without GPUs (gloo on CPU)."""
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    no_gpu = not (torch.cuda.is_available() or torch.xpu.is_available())
    return args.cpu or (launched_processes > 1 and no_gpu)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
        train_loader: Iterable, *, training_step: TrainingStep, evaluate: Evaluate, epochs: int,
        run_dir: Path, monitor: str, mode: str = "max", resume_from: Path | None = None,
        checkpoints_total_limit: int = 2, log_prefix: str = "",
        run_config: Mapping[str, Any] | None = None,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> TrainerState:
    """Train ``model`` (already ``accelerator.prepare``-d with ``optimizer`` and loaders).

    Each epoch: train (gradient accumulation via ``accelerator.accumulate``), ``evaluate``,
    keep the weights in ``run_dir/best`` when ``monitor`` improves (``mode`` ``max``/``min``),
    then ``accelerator.save_state`` to ``run_dir/checkpoints/epoch_XXXX`` plus the
    :class:`TrainerState`. With ``resume_from`` the state is loaded and training continues
    after the epoch stored there; a finished run returns its state without training.
    Metrics go to the trackers under ``log_prefix`` (e.g. ``"seed_0/"``); ``run_config``
    (:func:`~recipe_kit.flags.run_config`) is stored in every checkpoint so that a resume can be checked.
    ``lr_scheduler`` (prepared, e.g. from :func:`make_lr_scheduler`) steps after every
    optimizer step; the learning rate of each step is logged as ``lr``.

    A ``train_loader`` that yields no batch (e.g. fewer samples than one batch with
    ``drop_last``) is refused before anything is trained or written: it would give zero
    optimizer steps and a NaN training loss.
    """
    check_choice("mode", mode, ("max", "min"))
    _check_batches(accelerator, train_loader)
    state = TrainerState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = TrainerState.load(resume_from / TRAINER_STATE_NAME)
        accelerator.print(f"resumed from {resume_from} (epoch {state.epoch} done)")
    if run_config is not None:
        state.run_config = dict(run_config)

    for epoch in range(state.epoch, epochs):
        model.train()
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=accelerator.device)
        batches = 0
        bar = tqdm(train_loader, desc=f"{log_prefix}epoch {epoch + 1}/{epochs}",
                   disable=not accelerator.is_local_main_process, leave=False)
        for batch in bar:
            with accelerator.accumulate(model):
                lr = optimizer.param_groups[0]["lr"]
                outputs = training_step(model, batch)
                loss = outputs["loss"]
                accelerator.backward(loss)
                optimizer.step()
                if lr_scheduler is not None:
                    lr_scheduler.step()
                optimizer.zero_grad()
            logged = {**{name: value.detach().float().item() for name, value in outputs.items()}, "lr": lr}
            state.step += 1
            state.steps.append({"step": state.step, **logged})
            if state.first_nonfinite_step is None and not math.isfinite(logged["loss"]):
                state.first_nonfinite_step = state.step
                accelerator.print(f"{log_prefix}non-finite loss at step {state.step}")
            loss_sum += loss.detach().float()
            batches += 1
            bar.set_postfix(loss=f"{logged['loss']:.4f}")
            accelerator.log({f"{log_prefix}train/{name}": value for name, value in logged.items()},
                            step=state.step)
        totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(batches),
                                                                        device=loss_sum.device)]))
        metrics = {"epoch": epoch + 1, "train_loss": (totals[0] / totals[1]).item(),
                   **{f"val_{k}": float(v) for k, v in evaluate(model).items()}}
        if f"val_{monitor}" not in metrics:
            raise ValueError(f"monitor={monitor!r} is not a metric returned by evaluate(); "
                             f"got {sorted(k[4:] for k in metrics if k.startswith('val_'))}")
        state.history.append(metrics)
        state.epoch = epoch + 1
        accelerator.log({f"{log_prefix}{k}": v for k, v in metrics.items() if k != "epoch"},
                        step=state.step)
        if _is_better(metrics[f"val_{monitor}"], state.best_metric, mode):
            state.best_metric, state.best_epoch = metrics[f"val_{monitor}"], state.epoch
            accelerator.wait_for_everyone()
            accelerator.save_model(model, run_dir / BEST_DIRNAME)
        accelerator.print(f"{log_prefix}epoch {state.epoch}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        _save_checkpoint(accelerator, state, run_dir, checkpoints_total_limit)
    return state


def make_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                      batches_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``--lr-scheduler-type`` and ``--num-warmup-steps`` over ``--epochs``.

    ``batches_per_epoch`` is the length of the training loader *before*
    ``accelerator.prepare``: the prepared scheduler steps once per process for each optimizer
    step, as in Accelerate's examples. Pass the scheduler through ``accelerator.prepare`` (so
    that ``save_state`` checkpoints it) and then to :func:`fit`.
    """
    total = math.ceil(batches_per_epoch / args.gradient_accumulation_steps) * args.epochs
    warmup = args.num_warmup_steps
    if warmup >= total > 0:  # no steps at all: fit() refuses such a loader with its own message
        raise RecipeError(f"--num-warmup-steps must be less than the run's {total} optimizer steps "
                         f"({batches_per_epoch} batches per epoch x --epochs {args.epochs} / "
                         f"--gradient-accumulation-steps {args.gradient_accumulation_steps}), got {warmup}")
    decay = LR_DECAYS[args.lr_scheduler_type]

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, decay(min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _check_batches(accelerator: Accelerator, train_loader: Iterable) -> None:
    if not isinstance(train_loader, Sized) or len(train_loader) > 0:
        return
    dataset = getattr(train_loader, "dataset", None)
    samples = f"{len(dataset)} training samples" if isinstance(dataset, Sized) else "the training data"
    batch = getattr(train_loader, "total_batch_size", None) or getattr(train_loader, "batch_size", None)
    raise RecipeError(f"{samples} give no batch per epoch at a batch size of {batch} (--batch-size per "
                     f"process x {accelerator.num_processes} process(es); an incomplete last batch is "
                     "dropped): training would take 0 optimizer steps; lower --batch-size")


def _save_checkpoint(accelerator: Accelerator, state: TrainerState, run_dir: Path,
                     checkpoints_total_limit: int) -> None:
    path = run_dir / CHECKPOINTS_DIRNAME / f"epoch_{state.epoch:04d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # The trainer state is written last: a folder without it is an interrupted save.
        state.save(path / TRAINER_STATE_NAME)
        for old in checkpoint_dirs(run_dir)[:-checkpoints_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


