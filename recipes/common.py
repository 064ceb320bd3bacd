"""Helpers shared by the Accelerate recipes (``isic.py``, ``classify.py``, ``moving_mnist.py``).

A recipe keeps its own data, model and metrics; everything about *how* it trains
lives here, so every recipe gets the same flags and the same behaviour:

- :func:`add_training_args` — the common flags (precision, accumulation, trackers,
  output dir, resume, seeds, Hub push, epochs, batch size, lr, CPU, workers).
- :func:`seeds_from_args`, :func:`seed_everything`, :func:`make_accelerator`.
- :func:`fit` — the epoch loop: tqdm on the main process, gradient accumulation,
  tracker logging, validation, best-val weights kept in ``<run_dir>/best``,
  ``accelerator.save_state`` every epoch in ``<run_dir>/checkpoints/epoch_XXXX``
  (with ``trainer_state.json``), and resume from such a folder.
- :func:`load_best_weights` — put the best-val weights back into the model.
- :func:`write_seed_table` — Table-2-style ``mean ± std`` over seeds (markdown + JSON).
- :func:`seeded_split`, :func:`load_hf_dataset` — data plumbing every recipe needs.

Run layout: ``<output_dir>/seed_<s>/{checkpoints,best,final}`` per seed, and
``<output_dir>/results.{md,json}`` across seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from safetensors.torch import load_file
from tqdm.auto import tqdm

from arma_plugin import push_to_hub, save_pretrained

REPORT_TO_CHOICES = ("tensorboard", "wandb", "none")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
CHECKPOINTS_DIRNAME = "checkpoints"
BEST_DIRNAME = "best"
TRAINER_STATE_NAME = "trainer_state.json"

TrainingStep = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
"""``training_step(model, batch) -> {"loss": scalar tensor, **other scalar tensors to log}``."""

Evaluate = Callable[[nn.Module], Mapping[str, float]]
"""``evaluate(model) -> {metric: value}``; must return the same values on every process
(use ``accelerator.gather_for_metrics``)."""


def add_training_args(parser: argparse.ArgumentParser, *, output_dir: str, epochs: int,
                      batch_size: int, lr: float) -> argparse._ArgumentGroup:
    """Add the flags every recipe shares, with recipe-specific defaults; returns the group."""
    group = parser.add_argument_group("training (shared by all recipes)")
    group.add_argument("--output-dir", type=Path, default=Path(output_dir),
                       help="runs go to OUTPUT_DIR/seed_<s>/, the seed table to OUTPUT_DIR/results.{md,json}")
    group.add_argument("--epochs", type=int, default=epochs)
    group.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    group.add_argument("--lr", type=float, default=lr)
    group.add_argument("--mixed-precision", choices=MIXED_PRECISION_CHOICES, default=None,
                       help="default: whatever `accelerate launch`/`accelerate config` set (else no)")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1)
    group.add_argument("--report-to", choices=REPORT_TO_CHOICES, default="none",
                       help="Accelerate tracker; logs go to OUTPUT_DIR/logs")
    group.add_argument("--resume-from-checkpoint", nargs="?", const="latest", default=None,
                       metavar="PATH",
                       help="a checkpoints/epoch_XXXX folder, or no value for the latest one of each seed")
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
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
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
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    no_gpu = not (torch.cuda.is_available() or torch.xpu.is_available())
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=args.cpu or (launched_processes > 1 and no_gpu),
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir),
                                            logging_dir=str(args.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """``vars(args)`` flattened to the scalar types trackers (TensorBoard hparams) accept."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in vars(args).items()}


@dataclass
class TrainerState:
    """What :func:`fit` needs besides Accelerate's state to continue a run exactly.

    ``history`` has one entry per finished epoch (``train_loss`` + validation metrics);
    ``steps`` one entry per micro-batch of the main process (``step``, ``loss``, extras);
    ``first_nonfinite_step`` is the first micro-batch whose loss was NaN/inf (None if none).
    """

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    first_nonfinite_step: int | None = None

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


def fit(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
        train_loader: Iterable, *, training_step: TrainingStep, evaluate: Evaluate, epochs: int,
        run_dir: Path, monitor: str, mode: str = "max", resume_from: Path | None = None,
        checkpoints_total_limit: int = 2, log_prefix: str = "") -> TrainerState:
    """Train ``model`` (already ``accelerator.prepare``-d with ``optimizer`` and loaders).

    Each epoch: train (gradient accumulation via ``accelerator.accumulate``), ``evaluate``,
    keep the weights in ``run_dir/best`` when ``monitor`` improves (``mode`` ``max``/``min``),
    then ``accelerator.save_state`` to ``run_dir/checkpoints/epoch_XXXX`` plus the
    :class:`TrainerState`. With ``resume_from`` the state is loaded and training continues
    after the epoch stored there; a finished run returns its state without training.
    Metrics go to the trackers under ``log_prefix`` (e.g. ``"seed_0/"``).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    state = TrainerState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = TrainerState.load(resume_from / TRAINER_STATE_NAME)
        accelerator.print(f"resumed from {resume_from} (epoch {state.epoch} done)")

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
                outputs = training_step(model, batch)
                loss = outputs["loss"]
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            logged = {name: value.detach().float().item() for name, value in outputs.items()}
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


def hub_repo_for_seed(args: argparse.Namespace, seed: int) -> str | None:
    """``--push-to-hub REPO`` for this run: ``REPO`` for one run, ``REPO-seed<s>`` under ``--seeds``."""
    if not args.push_to_hub:
        return None
    return args.push_to_hub if args.seeds is None else f"{args.push_to_hub}-seed{seed}"


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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    payload: dict[str, Any] = {}
    for model, per_seed in rows.items():
        seeds = sorted(per_seed)
        missing = [c for c in columns for s in seeds if c not in per_seed[s]]
        if missing:
            raise ValueError(f"rows[{model!r}] lacks metrics {sorted(set(missing))}")
        stats = {c: summarize([per_seed[s][c] for s in seeds]) for c in columns}
        cells = [format_mean_std(stats[c], digits) for c in columns]
        extras = [extra_columns.get(model, {}).get(name, "") for name in extra_names]
        lines.append("| " + " | ".join([model, *extras, *cells]) + " |")
        payload[model] = {"seeds": seeds, **extra_columns.get(model, {}),
                          "metrics": {c: {**stats[c], "per_seed": [per_seed[s][c] for s in seeds]}
                                      for c in columns}}
    n_seeds = sorted({len(per_seed) for per_seed in rows.values()})
    caption = f"mean ± std (sample std, ddof=1) over {'/'.join(map(str, n_seeds))} seed(s)"
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_stem.with_suffix(".md"), out_stem.with_suffix(".json")
    md_path.write_text("\n".join([*lines, "", caption, ""]))
    json_path.write_text(json.dumps(payload, indent=1))
    return md_path, json_path
