"""Helpers shared by the Accelerate recipes (``isic.py``, ``classify.py``, ``moving_mnist.py``).

A recipe keeps its own data, model and metrics; everything about *how* it trains
lives here, so every recipe gets the same flags and the same behaviour:

- :func:`add_training_args` — the common flags (precision, accumulation, trackers,
  output dir and its overwrite, resume, seeds, Hub push, epochs, batch size, lr and its
  schedule, CPU, workers).
- :func:`make_lr_scheduler` — the ``--lr-scheduler-type`` schedule with ``--num-warmup-steps``
  (the shapes of ``transformers.get_scheduler``), stepped by :func:`fit` after each optimizer step.
- :func:`seeds_from_args`, :func:`seed_everything`, :func:`make_accelerator`.
- :func:`prepare_output_dir` — one run per output folder: a new run refuses a folder that
  holds another run (unless ``--overwrite-output-dir``, which clears it), a resumed run must
  have the configuration stored in ``<output_dir>/run_config.json`` (see :func:`run_config`).
- :func:`fit` — the epoch loop: refuses a loader that yields no batch, tqdm on the main
  process, gradient accumulation, tracker logging, validation, best-val weights kept in
  ``<run_dir>/best``, ``accelerator.save_state`` every epoch in
  ``<run_dir>/checkpoints/epoch_XXXX`` (with ``trainer_state.json``, which also stores the
  run configuration), and resume from such a folder.
- :func:`load_best_weights` — put the best-val weights back into the model.
- :func:`write_seed_table` — Table-2-style ``mean ± std`` over seeds (markdown + JSON).
- :func:`seeded_split`, :func:`load_hf_dataset`, :func:`open_image`, :func:`check_decodable`
  — data plumbing every recipe needs (every file is decoded once before the first step).

Run layout: ``<output_dir>/run_config.json``, ``<output_dir>/seed_<s>/{checkpoints,best,final}``
per seed, and ``<output_dir>/results.{md,json}`` across seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Sized

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
from PIL import Image
from safetensors.torch import load_file
from tqdm.auto import tqdm

from arma_plugin import push_to_hub, save_pretrained
from arma_plugin.table import format_table
from arma_plugin.validation import check_choice, check_positive_int

REPORT_TO_CHOICES = ("tensorboard", "wandb", "none")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
LR_DECAYS: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}
"""``--lr-scheduler-type``: the lr factor after the warm-up, as a function of the progress 0 → 1."""
CHECKPOINTS_DIRNAME = "checkpoints"
BEST_DIRNAME = "best"
TRAINER_STATE_NAME = "trainer_state.json"
RUN_CONFIG_NAME = "run_config.json"
NOT_RUN_CONFIG = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "epochs", "push_to_hub",
                  "report_to", "checkpoints_total_limit", "num_workers", "cpu")
"""Flags that say where and how long a run goes, not what it trains: a resumed run may change
them. ``--epochs`` may extend a run only under a constant lr schedule: any other schedule
spans all the epochs, so there it is part of the run (:func:`run_config`)."""
IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for an unreadable, truncated or corrupt image file."""

TrainingStep = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
"""``training_step(model, batch) -> {"loss": scalar tensor, **other scalar tensors to log}``."""

Evaluate = Callable[[nn.Module], Mapping[str, float]]
"""``evaluate(model) -> {metric: value}``; must return the same values on every process
(use ``accelerator.gather_for_metrics``)."""


def add_training_args(parser: argparse.ArgumentParser, *, output_dir: str, epochs: int,
                      batch_size: int, lr: float, lr_scheduler_type: str = "constant",
                      num_warmup_steps: int = 0) -> argparse._ArgumentGroup:
    """Add the flags every recipe shares, with recipe-specific defaults; returns the group."""
    group = parser.add_argument_group("training (shared by all recipes)")
    group.add_argument("--output-dir", type=Path, default=Path(output_dir),
                       help="runs go to OUTPUT_DIR/seed_<s>/, the seed table to OUTPUT_DIR/results.{md,json}")
    group.add_argument("--epochs", type=int, default=epochs)
    group.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    group.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    group.add_argument("--lr-scheduler-type", choices=tuple(LR_DECAYS), default=lr_scheduler_type,
                       help="learning rate after the warm-up, over all optimizer steps of --epochs: "
                            "constant, linear decay to 0, or cosine decay to 0")
    group.add_argument("--num-warmup-steps", type=int, default=num_warmup_steps,
                       help="optimizer steps of linear warm-up from 0 to --lr")
    group.add_argument("--mixed-precision", choices=MIXED_PRECISION_CHOICES, default=None,
                       help="default: whatever `accelerate launch`/`accelerate config` set (else no)")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1)
    group.add_argument("--report-to", choices=REPORT_TO_CHOICES, default="none",
                       help="Accelerate tracker; logs go to OUTPUT_DIR/logs")
    reuse = group.add_mutually_exclusive_group()
    reuse.add_argument("--resume-from-checkpoint", nargs="?", const="latest", default=None,
                       metavar="PATH",
                       help="a checkpoints/epoch_XXXX folder, or no value for the latest one of each seed; "
                            "only a run with the same configuration (OUTPUT_DIR/run_config.json) continues")
    reuse.add_argument("--overwrite-output-dir", action="store_true",
                       help="delete the run already in OUTPUT_DIR first (without it, a new run refuses "
                            "a folder that holds another run)")
    group.add_argument("--checkpoints-total-limit", type=int, default=2,
                       help="keep only this many newest epoch checkpoints per seed")
    seeds = group.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="train once per seed and write a mean ± std table")
    group.add_argument("--deterministic", action="store_true",
                       help="torch.use_deterministic_algorithms (warn-only) and no cuDNN autotuning")
    group.add_argument("--push-to-hub", metavar="REPO", default=None,
                       help="push the final model of each seed to this Hub repo (suffixed -seed<s> with --seeds)")
    group.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is available")
    group.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    return group


def validate_training_args(args: argparse.Namespace) -> None:
    """Reject values argparse cannot check on its own, before any training starts."""
    for name in ("epochs", "batch_size", "gradient_accumulation_steps", "checkpoints_total_limit"):
        check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    check_positive_int("--num-workers", args.num_workers, minimum=0)
    check_positive_int("--num-warmup-steps", args.num_warmup_steps, minimum=0)
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    seeds = seeds_from_args(args)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct, got {seeds}")
    if args.resume_from_checkpoint not in (None, "latest"):
        if len(seeds) > 1:
            raise ValueError("--resume-from-checkpoint PATH names one run; with several --seeds "
                             "give no PATH to resume each seed from its latest checkpoint")
        if not (Path(args.resume_from_checkpoint) / TRAINER_STATE_NAME).is_file():
            raise ValueError(f"--resume-from-checkpoint {args.resume_from_checkpoint!r} is not a "
                             f"checkpoint folder (no {TRAINER_STATE_NAME} in it)")


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    """``--seeds`` if given, else ``[--seed]``."""
    return list(args.seeds) if args.seeds is not None else [args.seed]


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
        cpu=_use_cpu(args),
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir),
                                            logging_dir=str(args.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def _use_cpu(args: argparse.Namespace) -> bool:
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    no_gpu = not (torch.cuda.is_available() or torch.xpu.is_available())
    return args.cpu or (launched_processes > 1 and no_gpu)


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that define a run (all but :data:`NOT_RUN_CONFIG`), as JSON values.

    Stored in ``<output_dir>/run_config.json`` and in every checkpoint's trainer state; a
    resumed run must have the same (:func:`prepare_output_dir`).
    """
    config = {key: value for key, value in vars(args).items() if key not in NOT_RUN_CONFIG}
    if args.lr_scheduler_type != "constant":
        config["epochs"] = args.epochs
    return json.loads(json.dumps(config, default=str))  # paths -> str, tuples -> lists


def _differing_keys(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(current), key=str)
    return ", ".join(f"--{key.replace('_', '-')} {stored.get(key, '(unset)')!r} -> {current.get(key, '(unset)')!r}"
                     for key in keys if stored.get(key) != current.get(key))


def prepare_output_dir(args: argparse.Namespace) -> dict[str, Any]:
    """Make ``--output-dir`` hold this run and only it; returns :func:`run_config` ``(args)``.

    Call once per invocation, before anything is written there (the seeds of one
    invocation are one run). Every process checks; the main process clears and writes.

    - A new run (no ``--resume-from-checkpoint``) refuses a folder that holds anything but a
      ``run_config.json`` (a run that stopped before writing anything), deleting nothing,
      unless ``--overwrite-output-dir``: then the previous run's files are deleted first —
      only in a folder whose ``run_config.json`` shows that a recipe run wrote it.
    - A resumed run refuses a stored configuration that differs from this one (naming the
      differing flags), both the folder's and, for ``--resume-from-checkpoint PATH``, the
      one in PATH's trainer state.
    """
    config = run_config(args)
    output_dir = Path(args.output_dir)
    config_path = output_dir / RUN_CONFIG_NAME
    stored = json.loads(config_path.read_text()) if config_path.is_file() else None
    held = sorted(p.name for p in output_dir.iterdir() if p.name != RUN_CONFIG_NAME) if output_dir.is_dir() else []
    shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
    if args.resume_from_checkpoint is None:
        if held and not args.overwrite_output_dir:
            raise ValueError(f"--output-dir {str(output_dir)!r} already holds a run ({shown}); pass "
                             "--overwrite-output-dir to replace it, --resume-from-checkpoint to continue "
                             "it, or choose another --output-dir")
        if held and stored is None:
            raise ValueError(f"--output-dir {str(output_dir)!r} holds files that no recipe run wrote "
                             f"({shown}; no {RUN_CONFIG_NAME}): --overwrite-output-dir deletes only a "
                             "previous run; choose another --output-dir")
    else:
        if held and stored is None:
            raise ValueError(f"--output-dir {str(output_dir)!r} holds files ({shown}) but no {RUN_CONFIG_NAME}: "
                             "it cannot be checked to be the run being resumed; choose another --output-dir")
        sources = {str(config_path): stored}
        if args.resume_from_checkpoint != "latest":
            checkpoint = Path(args.resume_from_checkpoint)
            sources[str(checkpoint)] = TrainerState.load(checkpoint / TRAINER_STATE_NAME).run_config
            if sources[str(checkpoint)] is None:
                raise ValueError(f"--resume-from-checkpoint {str(checkpoint)!r} stores no run configuration "
                                 "(fit() was not given run_config): it cannot be checked to be the same run")
        for where, previous in sources.items():
            if previous is not None and previous != config:
                raise ValueError(f"--resume-from-checkpoint continues only the same run, but {where} was "
                                 f"trained with other settings: {_differing_keys(previous, config)}")
    state = PartialState(cpu=_use_cpu(args))
    state.wait_for_everyone()  # every process has checked before the main process changes anything
    if state.is_main_process:
        if held and args.overwrite_output_dir:
            for name in held:
                path = output_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config, indent=1))
    state.wait_for_everyone()
    return config


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """``vars(args)`` flattened to the scalar types trackers (TensorBoard hparams) accept."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in vars(args).items()}


@dataclass
class TrainerState:
    """What :func:`fit` needs besides Accelerate's state to continue a run exactly.

    ``history`` has one entry per finished epoch (``train_loss`` + validation metrics);
    ``steps`` one entry per micro-batch of the main process (``step``, ``loss``, extras);
    ``first_nonfinite_step`` is the first micro-batch whose loss was NaN/inf (None if none);
    ``run_config`` is the :func:`run_config` of the run (None if ``fit`` was not given one).
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
        return cls(**json.loads(path.read_text()))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete epoch checkpoints of a run (those with a trainer state), oldest first."""
    root = run_dir / CHECKPOINTS_DIRNAME
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch_*") if (p / TRAINER_STATE_NAME).is_file())


def resolve_resume(resume_from_checkpoint: str | None, run_dir: Path) -> Path | None:
    """``None`` → fresh run; ``"latest"`` → newest checkpoint of ``run_dir`` (fresh if none); else the path."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoint_dirs(run_dir)
        return found[-1] if found else None
    return Path(resume_from_checkpoint)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit_options(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The :func:`fit` arguments the shared flags decide for the run in ``run_dir``: where it
    resumes from, how many checkpoints it keeps, and the run configuration it stores."""
    return {"resume_from": resolve_resume(args.resume_from_checkpoint, run_dir),
            "checkpoints_total_limit": args.checkpoints_total_limit,
            "run_config": run_config(args)}


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
    (:func:`run_config`) is stored in every checkpoint so that a resume can be checked.
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
        raise ValueError(f"--num-warmup-steps must be less than the run's {total} optimizer steps "
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
    raise ValueError(f"{samples} give no batch per epoch at a batch size of {batch} (--batch-size per "
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


def load_best_weights(accelerator: Accelerator, model: nn.Module, run_dir: Path) -> None:
    """Load ``run_dir/best/model.safetensors`` (written by :func:`fit`) into ``model``."""
    accelerator.wait_for_everyone()
    path = run_dir / BEST_DIRNAME / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no best-val weights at {path}: was fit() run for this run_dir?")
    accelerator.unwrap_model(model).load_state_dict(load_file(str(path)))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, as the paper's tables count them."""
    return sum(p.numel() for p in model.parameters())


def hub_repo_for_seed(args: argparse.Namespace, seed: int, variant: str | None = None) -> str | None:
    """``--push-to-hub REPO`` for this run: ``REPO`` for one run, ``REPO-<variant>`` when one
    invocation trains several variants, ``-seed<s>`` appended under ``--seeds``."""
    if not args.push_to_hub:
        return None
    repo = args.push_to_hub if variant is None else f"{args.push_to_hub}-{variant}"
    return repo if args.seeds is None else f"{repo}-seed{seed}"


def publish(model: nn.Module, save_directory: Path, card: Mapping[str, Any], repo_id: str | None) -> Path:
    """``save_pretrained`` the final model with ``card`` (measured results) in its model card,
    then ``push_to_hub`` it when a ``repo_id`` is given. Call on the main process only."""
    path = save_pretrained(model, save_directory, **card)
    if repo_id:
        push_to_hub(model, repo_id, **card)
    return path


def seeded_split(n: int, proportions: Mapping[str, float], seed: int) -> dict[str, list[int]]:
    """Cut a seeded permutation of ``range(n)`` into consecutive parts in ``proportions``
    (``round`` for every part but the last, which takes the rest); every part must be non-empty."""
    total = sum(proportions.values())
    names = list(proportions)
    sizes = [round(n * proportions[name] / total) for name in names[:-1]]
    sizes.append(n - sum(sizes))
    if min(sizes) < 1:
        raise ValueError(f"{n} samples are too few for a {'/'.join(names)} split in the proportions "
                         f"{tuple(proportions.values())}: parts would have {sizes} samples")
    order = np.random.default_rng(seed).permutation(n).tolist()
    bounds = np.cumsum([0, *sizes]).tolist()
    return {name: order[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}


def load_hf_dataset(name: str) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` from a Hub name, a ``save_to_disk`` folder or a ``.parquet`` file."""
    import datasets

    path = Path(name)
    if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
        loaded = datasets.load_from_disk(str(path))
    elif path.suffix == ".parquet":
        if not path.is_file():
            raise ValueError(f"--hf-dataset {name!r}: no such parquet file")
        loaded = datasets.load_dataset("parquet", data_files=str(path))
    else:
        loaded = datasets.load_dataset(name)
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def open_image(path: str | Path, *, draft_size: int | None = None) -> Image.Image:
    """Open and decode an image file; a JPEG is decoded at the smallest scale >= ``draft_size``
    when one is given (``Image.draft``: cheap for images much larger than the training size)."""
    image = Image.open(path)
    if draft_size is not None:
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return image


def check_decodable(names: Sequence[str], decode: Callable[[int], Any], *, what: str) -> None:
    """Decode every item once before the first step, so that a truncated or corrupt file
    fails now, named, rather than mid-training or at test time (and again on resume).

    ``decode(i)`` decodes item ``i``, named ``names[i]`` in the error. Each process decodes
    its share (``PartialState.split_between_processes``); the failures of all processes are
    gathered, so that every process raises the same ``ValueError``.
    """
    state = PartialState()
    failures = []
    with state.split_between_processes(list(range(len(names)))) as mine:
        for index in tqdm(mine, desc=f"checking {what}", disable=not state.is_local_main_process, leave=False):
            try:
                decode(index)
            except IMAGE_DECODE_ERRORS as error:
                failures.append(f"{names[index]} ({type(error).__name__}: {error})")
    failures = sorted(gather_object(failures))
    if failures:
        raise ValueError(f"{len(failures)} of {len(names)} {what} cannot be decoded: " + "; ".join(failures[:5]) +
                         ("; ..." if len(failures) > 5 else ""))


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof=1; ``None`` for a single value, which has none)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if array.size > 1 else None}


def format_mean_std(stats: Mapping[str, float | None], digits: int) -> str:
    """``mean ± std``, or the bare mean when there is no spread to report (one seed)."""
    mean = f"{stats['mean']:.{digits}f}"
    return mean if stats["std"] is None else f"{mean} ± {stats['std']:.{digits}f}"


def write_seed_table(rows: Mapping[str, Mapping[int, Mapping[str, float]]], columns: Sequence[str],
                     out_stem: Path, *, extra_columns: Mapping[str, Mapping[str, str]] | None = None,
                     digits: int = 3) -> tuple[Path, Path]:
    """Write ``out_stem.md`` (one row per model, ``mean ± std`` over seeds) and ``out_stem.json``.

    ``rows[model][seed][metric]`` holds each seed's value; ``extra_columns[model]`` adds
    text columns placed before the metrics (e.g. ``{"params": "3.45M"}``).
    The JSON keeps every seed's value next to the mean and std.
    """
    extra_columns = extra_columns or {}
    extra_names = list(dict.fromkeys(k for cells in extra_columns.values() for k in cells))
    header = ["model", *extra_names, *columns]
    table_rows = []
    payload: dict[str, Any] = {}
    for model, per_seed in rows.items():
        seeds = sorted(per_seed)
        missing = [c for c in columns for s in seeds if c not in per_seed[s]]
        if missing:
            raise ValueError(f"rows[{model!r}] lacks metrics {sorted(set(missing))}")
        stats = {c: summarize([per_seed[s][c] for s in seeds]) for c in columns}
        cells = [format_mean_std(stats[c], digits) for c in columns]
        extras = [extra_columns.get(model, {}).get(name, "") for name in extra_names]
        table_rows.append([model, *extras, *cells])
        payload[model] = {"seeds": seeds, **extra_columns.get(model, {}),
                          "metrics": {c: {**stats[c], "per_seed": [per_seed[s][c] for s in seeds]}
                                      for c in columns}}
    n_seeds = sorted({len(per_seed) for per_seed in rows.values()})
    caption = f"mean ± std (sample std, ddof=1) over {'/'.join(map(str, n_seeds))} seed(s)"
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_stem.with_suffix(".md"), out_stem.with_suffix(".json")
    md_path.write_text("\n".join([format_table(header, table_rows), "", caption, ""]))
    json_path.write_text(json.dumps(payload, indent=1))
    return md_path, json_path
