"""The command line every recipe shares: the training flags, the AR layer flags, what defines
a run (:func:`run_config`), and how a user mistake ends a script: one line, exit status 2."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from arma_plugin import ARMAConfig, check_positive_int

from .checkpoints import TRAINER_STATE_NAME
from .loop import LR_DECAYS

REPORT_TO_CHOICES = ("tensorboard", "wandb", "none")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
NOT_RUN_CONFIG = ("output_dir", "output_dir_given", "overwrite_output_dir", "resume_from_checkpoint", "epochs",
                  "push_to_hub", "report_to", "checkpoints_total_limit", "num_workers", "cpu")
"""Flags that say where and how long a run goes, not what it trains: a resumed run may change
them. ``--epochs`` may extend a run only under a constant lr schedule: any other schedule
spans all the epochs, so there it is part of the run (:func:`run_config`)."""


class _OutputDir(argparse.Action):
    """``--output-dir``, remembering that it was given (a default folder is replaced by a new run)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, Path(values))
        namespace.output_dir_given = True


def add_training_args(parser: argparse.ArgumentParser, *, output_dir: str, epochs: int,
                      batch_size: int, lr: float, lr_scheduler_type: str = "constant",
                      num_warmup_steps: int = 0) -> argparse._ArgumentGroup:
    """Add the flags every recipe shares, with recipe-specific defaults; returns the group."""
    group = parser.add_argument_group("training (shared by all recipes)")
    group.add_argument("--output-dir", action=_OutputDir, default=Path(output_dir),
                       help=f"runs go to OUTPUT_DIR/seed_<s>/, the seed table to OUTPUT_DIR/results.{{md,json}} "
                            f"(default {output_dir}: a new run there replaces the previous one)")
    parser.set_defaults(output_dir_given=False)
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
                       help="a checkpoints/epoch_XXXX folder, or no value for the latest complete one of each "
                            "seed; only a run with the same configuration (OUTPUT_DIR/run_config.json) continues")
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


def add_arma_args(group: argparse._ArgumentGroup, *, ar_kernel_size: int = 3, boundary: str = "circular") -> None:
    """``--ar-kernel-size`` and ``--boundary`` of the AR layers (checked by :func:`validate_training_args`)."""
    group.add_argument("--ar-kernel-size", type=int, default=ar_kernel_size)
    group.add_argument("--boundary", default=boundary, help="AR boundary: circular or zeros")


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
    if hasattr(args, "ar_kernel_size"):
        ARMAConfig(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary)  # validates both


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    """``--seeds`` if given, else ``[--seed]``."""
    return list(args.seeds) if args.seeds is not None else [args.seed]


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that define a run (all but :data:`NOT_RUN_CONFIG`), as JSON values.

    Stored in ``<output_dir>/run_config.json`` and in every checkpoint's trainer state; a
    resumed run must have the same (:func:`~recipe_kit.run_dir.prepare_output_dir`).
    """
    config = {key: value for key, value in vars(args).items() if key not in NOT_RUN_CONFIG}
    if args.lr_scheduler_type != "constant":
        config["epochs"] = args.epochs
    return json.loads(json.dumps(config, default=str))  # paths -> str, tuples -> lists


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """``vars(args)`` flattened to the scalar types trackers (TensorBoard hparams) accept."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in vars(args).items()}
