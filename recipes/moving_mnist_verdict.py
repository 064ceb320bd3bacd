"""What the Moving-MNIST job concludes: the ARMA-vs-baseline criterion declared before any run,
whether each model learned the motion, and the environment the numbers were measured in."""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from arma_plugin.metrics import frame_psnr, frame_ssim, summarize_video_metrics
from moving_mnist_data import TEST_DATA_SEED, make_datasets, split_video
from moving_mnist_plots import seed_count
from recipe_kit import summarize

COMPARE = ("armalstm3", "convlstm3")
"""(ARMA model, its baseline) of :data:`CRITERION`: the same cells, with and without the AR part."""
MIN_CRITERION_SEEDS = 5
"""Below this the standard error of the differences is itself too uncertain to judge by."""
CRITERION = ("ARMA beats its baseline at the fastest speed run: over the seeds s (at least 5), "
             "the paired differences d_s = PSNR(armalstm3, s) - PSNR(convlstm3, s) on the same test "
             "sequences have mean(d) > 2 x standard error = 2 x std(d, ddof=1) / sqrt(n)")
"""Declared before any run of the quick preset was compared (docs/moving_mnist.md)."""
LEARNED_MARGIN_DB = 1.0
"""A model 'learned the motion' when its mean PSNR is this far above the best trivial predictor."""


def paired_criterion(arma: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """:data:`CRITERION` on per-seed PSNRs of the same seeds; ``holds`` is None with too few seeds."""
    differences = np.asarray(arma, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n = len(differences)
    result: dict[str, Any] = {"criterion": CRITERION, "differences": differences.tolist(),
                              "mean_difference": float(differences.mean()) if n else None}
    if n < MIN_CRITERION_SEEDS:
        return {**result, "holds": None, "verdict": f"not tested: {seed_count(n)}, the criterion needs "
                                                    f">= {MIN_CRITERION_SEEDS}"}
    threshold = 2 * differences.std(ddof=1) / math.sqrt(n)
    holds = bool(differences.mean() > threshold)
    verdict = (f"{'HOLDS' if holds else 'DOES NOT HOLD'}: mean difference {differences.mean():+.3f} dB "
               f"{'>' if holds else '<='} 2 x standard error {threshold:.3f} dB over {n} seeds")
    return {**result, "threshold": threshold, "holds": holds, "verdict": verdict}


def table_columns(speeds: Sequence[int]) -> list[str]:
    return [f"{metric}@{s}x" for s in speeds for metric in ("psnr", "ssim")]


def learned_motion(rows: dict[str, dict[int, dict[str, float]]], models: Sequence[str],
                   speeds: Sequence[int]) -> list[str]:
    """One line per model and speed: its mean PSNR margin over the best trivial predictor."""
    lines = []
    for speed in speeds:
        column = f"psnr@{speed}x"
        floor_name, floor = max(((name, per_seed[0][column]) for name, per_seed in rows.items()
                                 if name.startswith("trivial")), key=lambda item: item[1])
        for model in models:
            margin = summarize([s[column] for s in rows[model].values()])["mean"] - floor
            lines.append(f"{model} at {speed}x: {margin:+.2f} dB over the best trivial predictor ({floor_name}): "
                         f"{'learned the motion' if margin >= LEARNED_MARGIN_DB else 'NOT clearly better'} "
                         f"(threshold {LEARNED_MARGIN_DB:.1f} dB)")
    return lines


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers depend on besides the code and the seeds: library versions, CPU, threads."""
    versions = {}
    for package in ("arma-plugin", "torch", "numpy", "numba", "accelerate"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": {"python": platform.python_version(), **versions}, "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(), "threads_per_run": args.cpu_threads or torch.get_num_threads(),
            "parallel_runs": args.parallel_runs, "platform": platform.platform()}


def trivial_predictions(inputs: torch.Tensor, future_frames: int) -> dict[str, torch.Tensor]:
    """Predictors that learn nothing, the floor a trained model must clear."""
    shape = (-1, future_frames, -1, -1, -1)
    return {"trivial: zeros": torch.zeros_like(inputs[:, :1]).expand(shape),
            "trivial: mean of inputs": inputs.mean(1, keepdim=True).expand(shape),
            "trivial: copy last input": inputs[:, -1:].expand(shape)}


def score_trivial(args: argparse.Namespace, speed: int) -> dict[str, dict[str, Any]]:
    """:func:`summarize_video_metrics` of every trivial predictor on the test sequences."""
    _, _, test = make_datasets(args, speed, TEST_DATA_SEED)
    psnrs: dict[str, list] = {}
    ssims: dict[str, list] = {}
    for video in DataLoader(test, batch_size=256):
        inputs, target = split_video(video, args)
        for name, prediction in trivial_predictions(inputs, args.future_frames).items():
            psnrs.setdefault(name, []).append(frame_psnr(prediction, target))
            ssims.setdefault(name, []).append(frame_ssim(prediction, target))
    return {name: summarize_video_metrics(torch.cat(psnrs[name]), torch.cat(ssims[name])) for name in psnrs}
