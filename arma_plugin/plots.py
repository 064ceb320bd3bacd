"""Figures of Su et al., NeurIPS 2020, as PNG files: Fig. 3 (ERF of linear ARMA networks over
depth and AR coefficient), Fig. 6 (histogram of learned AR coefficients) and ERF maps of
models side by side (e.g. before and after armafy + fine-tuning).

matplotlib is imported only when a figure is drawn (it is in the ``recipes`` extra); the
object-oriented ``Figure`` API is used, so no pyplot state or GUI backend is involved.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .erf import erf_radius, linear_arma_erf


def _new_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("figures need matplotlib: pip install 'arma-plugin[recipes]' (or pip install matplotlib)") from err
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _window(erf: torch.Tensor, origin: tuple[int, int], radius: float) -> int:
    """Side of a square that ends at ``origin`` and holds ~all of ``erf``: its mean offset plus four radii."""
    rows = erf.sum(dim=1)
    mean_offset = float(((origin[0] - torch.arange(rows.numel(), dtype=torch.float64)) * rows).sum())
    return math.ceil(mean_offset + 4 * radius) + 2


def plot_erf_grid(layers: Sequence[int], coeffs: Sequence[float], path: str | Path, *, kernel_size: int = 3,
                  dilation: int = 1) -> dict[tuple[int, float], float]:
    """Fig. 3: ERF of the 2-D linear ARMA network (:func:`~arma_plugin.erf.linear_arma_network`,
    ``ndim=2``) for every depth L (columns) and AR coefficient a (rows).

    The panels of a row share one window that ends at the output pixel (bottom right, marked
    ``+``), so the growth with L is visible; each panel's colours are scaled to its own maximum.
    Returns the measured eq.-3 radius per ``(L, a)``, the number printed on its panel.
    """
    if not layers or not coeffs:
        raise ValueError("layers and coeffs must each name at least one value")
    maps = {(n, a): linear_arma_erf(n, kernel_size, dilation, a, ndim=2, tail=1e-6) for a in coeffs for n in layers}
    radii = {key: erf_radius(erf, origin=origin) for key, (erf, origin) in maps.items()}
    fig = _new_figure(2.2 * len(layers) + 0.4, 2.2 * len(coeffs) + 0.4)
    axes = fig.subplots(len(coeffs), len(layers), squeeze=False)
    for row, a in enumerate(coeffs):
        window = max(_window(*maps[(n, a)], radii[(n, a)]) for n in layers)
        for col, n in enumerate(layers):
            erf, (oi, oj) = maps[(n, a)]
            canvas = np.zeros((window, window))
            crop = erf[max(0, oi + 1 - window):oi + 1, max(0, oj + 1 - window):oj + 1].numpy()
            canvas[window - crop.shape[0]:, window - crop.shape[1]:] = crop / crop.max()
            ax = axes[row][col]
            ax.imshow(canvas, cmap="inferno", vmin=0.0, vmax=1.0)
            ax.plot([window - 1], [window - 1], marker="+", color="cyan", markersize=8)
            ax.text(0.04, 0.04, f"r = {radii[(n, a)]:.2f}", transform=ax.transAxes, color="white", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"L = {n}")
            if col == 0:
                ax.set_ylabel(f"a = {a:g}" + (" (CNN)" if a == 0 else ""))
    fig.suptitle(f"ERF of linear ARMA networks (K = {kernel_size}, d = {dilation}; r: eq. 3, measured)")
    _save(fig, path)
    return radii


def plot_ar_histogram(coefficients: Mapping[str, np.ndarray | torch.Tensor], path: str | Path, *,
                      bins: int = 41) -> Path:
    """Fig. 6: histogram (percent of coefficients) of AR taps, one outline per entry
    (e.g. one per checkpoint, or one per layer). An odd ``bins`` keeps 0 (the plain conv) mid-bin."""
    if not coefficients:
        raise ValueError("coefficients is empty: the model has no AR layers")
    values = {label: np.asarray(torch.as_tensor(v).detach().cpu().double().flatten()) for label, v in coefficients.items()}
    if any(v.size == 0 for v in values.values()):
        raise ValueError(f"no coefficients for {[k for k, v in values.items() if v.size == 0]}")
    limit = max(float(np.abs(v).max()) for v in values.values())
    edges = np.linspace(-limit, limit, bins + 1) if limit > 0 else np.linspace(-1.0, 1.0, bins + 1)
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    for label, v in values.items():
        ax.hist(v, bins=edges, weights=np.full(v.size, 100.0 / v.size), histtype="step", linewidth=1.5, label=label)
    ax.set_xlabel("coefficient")
    ax.set_ylabel("percentage (%)")
    ax.set_title("Histogram of the autoregressive coefficients")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_erf_comparison(erfs: Mapping[str, torch.Tensor], path: str | Path) -> dict[str, tuple[float, float]]:
    """ERF maps side by side (e.g. the original model and the armafied, fine-tuned one).

    Each panel gives the eq.-3 radius about the map's centre and the radius about the ERF's
    centre of mass (see :func:`~arma_plugin.erf.erf_radius`); both are returned per label.
    """
    if not erfs:
        raise ValueError("erfs is empty: give at least one ERF map")
    fig = _new_figure(3.2 * len(erfs) + 0.4, 4.0)
    axes = fig.subplots(1, len(erfs), squeeze=False)[0]
    radii = {}
    for ax, (label, erf) in zip(axes, erfs.items()):
        erf = torch.as_tensor(erf, dtype=torch.float64)
        radii[label] = (erf_radius(erf), erf_radius(erf, about="mean"))
        ax.imshow((erf / erf.max()).numpy(), cmap="inferno", vmin=0.0, vmax=1.0)
        ax.set_title(f"{label}\nr = {radii[label][0]:.2f} (eq. 3), {radii[label][1]:.2f} (about mean)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
    return radii
