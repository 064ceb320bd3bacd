"""Pictures of the Moving-MNIST recipe: the prediction strip and the per-frame PSNR plot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def seed_count(n: int) -> str:
    """``"1 seed"``, ``"6 seeds"``."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


def time_labels(input_frames: int, future_frames: int) -> list[str]:
    """Column labels of a strip: ``t-(k-1) … t`` for the inputs, ``t+1 … t+m`` for the predicted frames."""
    return [f"t\u2212{input_frames - 1 - i}" if i < input_frames - 1 else "t" for i in range(input_frames)] + \
        [f"t+{i + 1}" for i in range(future_frames)]


def error_difference(arma: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|arma - target| - |baseline - target|`` per pixel: negative where the ARMA model is closer."""
    return (arma - target).abs() - (baseline - target).abs()


def write_strip(path: Path, video: torch.Tensor, predictions: dict[str, torch.Tensor], input_frames: int,
                title: str, compare: tuple[str, str]) -> None:
    """One time line per row, pixels drawn as squares: the sequence (inputs then ground truth), each
    model's predictions under the frames they predict, and, with both models of ``compare`` (ARMA
    model, baseline) among the predictions, their
    per-pixel error difference on a diverging scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    future = video[input_frames:input_frames + max(len(p) for p in predictions.values())]
    arma, baseline = compare
    # (label, frames, first column, colormap): the sequence spans every column, predictions the future ones
    rows = [("input | ground truth", torch.cat((video[:input_frames], future)), 0, "gray")]
    rows += [(name, frames, input_frames, "gray") for name, frames in predictions.items()]
    limit = 1.0
    if arma in predictions and baseline in predictions:
        difference = error_difference(predictions[arma], predictions[baseline], future)
        limit = max(float(difference.abs().max()), 0.05)
        rows.append(("", difference, input_frames, "RdBu_r"))
    columns = input_frames + len(future)
    labels = time_labels(input_frames, len(future))
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.15, len(rows) * 1.2), squeeze=False)
    for r, (label, frames, first, cmap) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=9, color="black" if c < input_frames else "tab:blue")
            if c < first:
                ax.axis("off")
                continue
            bounds = (-limit, limit) if cmap == "RdBu_r" else (0, 1)
            shown = ax.imshow(frames[c - first, 0].numpy(), cmap=cmap, vmin=bounds[0], vmax=bounds[1],
                              interpolation="nearest")
        axes[r][first].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if rows[-1][3] == "RdBu_r":  # the scale sits in the empty input columns of its row
        left, right = axes[-1][0].get_position(), axes[-1][input_frames - 1].get_position()
        bar = fig.colorbar(shown, orientation="horizontal", cax=fig.add_axes(
            [left.x0, left.y0 + 0.45 * left.height, right.x1 - left.x0, 0.15 * left.height]))
        bar.ax.set_title(f"per pixel: |error of {arma}| \u2212 |error of {baseline}|", fontsize=8)
        bar.set_label(f"\u2190 {arma} closer        {baseline} closer \u2192", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9, y=0.98 + 0.3 / fig.get_figheight())  # above the column labels
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def standard_error(values: np.ndarray) -> np.ndarray:
    """Standard error of the mean over axis 0 (``std(ddof=1) / sqrt(n)``); zeros for a single row."""
    return values.std(0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else np.zeros(values.shape[1:])


def write_psnr_curves(path: Path, curves: dict[str, list[list[float]]], title: str,
                      compare: tuple[str, str]) -> None:
    """Left: mean PSNR per predicted frame, one line per model (band: ± 1 standard error over seeds),
    dashed trivial predictors. Right, with both models of ``compare`` (ARMA model, baseline): their
    paired difference per
    frame, each seed and the mean ± 2 standard errors (the criterion's scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arma, baseline = compare
    paired = arma in curves and baseline in curves
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(10 if paired else 5.5, 3.6), squeeze=False)
    ax = axes[0][0]
    seeds = max(len(per_seed) for name, per_seed in curves.items() if not name.startswith("trivial"))
    for name, per_seed in curves.items():
        values = np.asarray(per_seed)
        frames = np.arange(1, values.shape[1] + 1)
        trivial = name.startswith("trivial")
        ax.plot(frames, values.mean(0), "--" if trivial else "-o", label=name, linewidth=1 if trivial else 2)
        if len(values) > 1:
            error = standard_error(values)
            ax.fill_between(frames, values.mean(0) - error, values.mean(0) + error, alpha=0.25)
    ax.set_xlabel("predicted frame (t+k)")
    ax.set_ylabel("PSNR (dB), mean over test sequences")
    band = "; band: \u00b1 1 standard error over seeds" if seeds > 1 else ""
    ax.set_title(f"mean over {seed_count(seeds)}{band}", fontsize=8)
    ax.legend(fontsize=7)
    if paired:
        differences = np.asarray(curves[arma]) - np.asarray(curves[baseline])
        frames = np.arange(1, differences.shape[1] + 1)
        right = axes[0][1]
        for per_seed in differences:
            right.plot(frames, per_seed, color="gray", linewidth=0.8, alpha=0.6)
        right.errorbar(frames, differences.mean(0), yerr=2 * standard_error(differences), fmt="-o", color="tab:red",
                       capsize=4, linewidth=2,
                       label=f"mean \u00b1 2 standard errors over {seed_count(len(differences))}")
        right.plot([], [], color="gray", linewidth=0.8, label="one seed")
        right.axhline(0, color="black", linewidth=0.8)
        right.set_xlabel("predicted frame (t+k)")
        right.set_ylabel(f"PSNR {arma} \u2212 {baseline} (dB)")
        right.set_title("paired difference (same seed, same test sequences); above 0: ARMA ahead", fontsize=8)
        right.legend(fontsize=7)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
