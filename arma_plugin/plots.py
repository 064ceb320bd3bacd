"""Figures of Su et al., NeurIPS 2020, as PNG files: Fig. 3 (ERF of linear ARMA networks over
depth and AR coefficient), Fig. 6 (histogram of learned AR coefficients, pooled or per layer)
and ERF maps of models side by side (e.g. before and after armafy + fine-tuning).

Every function saves the figure and returns it (a ``matplotlib.figure.Figure``). ERF maps are
drawn in pixels relative to the output pixel, which is marked, with a colour bar; each map is
scaled to its own maximum. matplotlib is imported only when a figure is drawn (it is in the
``recipes`` extra); the object-oriented ``Figure`` API is used, so no pyplot state or GUI
backend is involved.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .erf import erf_radius, linear_arma_erf

__all__ = ["ERF_GRID_TAIL", "plot_erf_grid", "plot_erf_comparison", "plot_ar_histogram", "plot_ar_layer_histograms"]

# Fig. 3's maps hold all but this fraction (per layer) of each ERF's mass: invisible at any colour depth
ERF_GRID_TAIL = 1e-6
ERF_CMAP = "inferno"
OUTPUT_MARKER = {"marker": "+", "color": "cyan", "markersize": 11, "markeredgewidth": 2, "linestyle": "none",
                 "clip_on": False, "label": "output pixel"}


def _new_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("figures need matplotlib: pip install 'arma-plugin[recipes]' (or pip install matplotlib)") from err
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: str | Path):
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig


def _draw_erf(ax, erf: np.ndarray, origin: tuple[int, int]):
    """``erf / max`` with axes in pixels relative to ``origin`` (x right, y down) and the output pixel marked."""
    rows, cols = erf.shape
    extent = (-origin[1] - 0.5, cols - origin[1] - 0.5, rows - origin[0] - 0.5, -origin[0] - 0.5)
    image = ax.imshow(erf / erf.max(), cmap=ERF_CMAP, vmin=0.0, vmax=1.0, extent=extent)
    ax.plot([0], [0], **OUTPUT_MARKER)
    ax.tick_params(labelsize=7)
    return image


def _window(erf: torch.Tensor, origin: tuple[int, int], radius: float) -> int:
    """Side of a square that ends at ``origin`` and holds ~all of ``erf``: its mean offset plus four radii."""
    rows = erf.sum(dim=1)
    mean_offset = float(((origin[0] - torch.arange(rows.numel(), dtype=torch.float64)) * rows).sum())
    return math.ceil(mean_offset + 4 * radius) + 2


def _finish_erf_figure(fig, axes, image, title: str) -> None:
    """The shared colour bar, the output-pixel legend, the axis labels and the title."""
    fig.colorbar(image, ax=axes, shrink=0.6, label="ERF / its maximum (each map)")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower right", fontsize=9)
    fig.supxlabel("input column − output column (px)", fontsize=10)
    fig.supylabel("input row − output row (px)", fontsize=10)
    fig.suptitle(title)


def plot_erf_grid(layers: Sequence[int], coeffs: Sequence[float], path: str | Path, *, kernel_size: int = 3,
                  dilation: int = 1):
    """Fig. 3: ERF of the 2-D linear ARMA network (:func:`~arma_plugin.erf.linear_arma_network`,
    ``ndim=2``) for every depth L (columns) and AR coefficient a (rows); returns the figure.

    The panels of a row share one window that ends at the output pixel (bottom right), so the
    growth with L is visible; each panel prints its measured eq.-3 radius ``r``.
    """
    if not layers or not coeffs:
        raise ValueError("layers and coeffs must each name at least one value")
    maps = {(n, a): linear_arma_erf(n, kernel_size, dilation, a, ndim=2, tail=ERF_GRID_TAIL)
            for a in coeffs for n in layers}
    radii = {key: erf_radius(erf, origin=origin) for key, (erf, origin) in maps.items()}
    fig = _new_figure(2.3 * len(layers) + 1.6, 2.3 * len(coeffs) + 1.2)
    axes = fig.subplots(len(coeffs), len(layers), squeeze=False)
    for row, a in enumerate(coeffs):
        window = max(_window(*maps[(n, a)], radii[(n, a)]) for n in layers)
        for col, n in enumerate(layers):
            erf, (oi, oj) = maps[(n, a)]
            canvas = np.zeros((window, window))
            crop = erf[max(0, oi + 1 - window):oi + 1, max(0, oj + 1 - window):oj + 1].numpy()
            canvas[window - crop.shape[0]:, window - crop.shape[1]:] = crop
            ax = axes[row][col]
            image = _draw_erf(ax, canvas, (window - 1, window - 1))
            ax.text(0.04, 0.06, f"r = {radii[(n, a)]:.2f}", transform=ax.transAxes, color="white", fontsize=9)
            if row == 0:
                ax.set_title(f"L = {n}")
            if col == 0:
                ax.set_ylabel(f"a = {a:g}" + (" (CNN)" if a == 0 else ""), fontsize=11)
    _finish_erf_figure(fig, axes, image, f"ERF of linear ARMA networks (K = {kernel_size}, d = {dilation}; "
                                         "r: eq. 3, measured)")
    return _save(fig, path)


def plot_erf_comparison(erfs: Mapping[str, torch.Tensor], path: str | Path, *,
                        origin: Sequence[int] | None = None):
    """ERF maps side by side (e.g. the original model and the armafied, fine-tuned one); returns the figure.

    ``origin`` is the output pixel the maps were measured at (:func:`~arma_plugin.erf.erf_map`'s
    ``output_index``; the centre ``(H // 2, W // 2)`` if None). Each panel gives the eq.-3 radius
    about it and the radius about the ERF's centre of mass (:func:`~arma_plugin.erf.erf_radius`).
    """
    if not erfs:
        raise ValueError("erfs is empty: give at least one ERF map")
    fig = _new_figure(3.3 * len(erfs) + 1.2, 4.4)
    axes = fig.subplots(1, len(erfs), squeeze=False)
    for ax, (label, erf) in zip(axes[0], erfs.items()):
        erf = torch.as_tensor(erf, dtype=torch.float64).cpu()
        centre = tuple(n // 2 for n in erf.shape) if origin is None else tuple(int(i) for i in origin)
        image = _draw_erf(ax, erf.numpy(), centre)
        ax.set_title(f"{label}\nr = {erf_radius(erf, origin=centre):.2f} (eq. 3), "
                     f"{erf_radius(erf, about='mean'):.2f} (about mean)", fontsize=9)
    _finish_erf_figure(fig, axes, image, "Effective receptive field (Def. 2)")
    return _save(fig, path)


def _flat_values(coefficients: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    if not coefficients:
        raise ValueError("coefficients is empty: the model has no AR layers")
    values = {label: np.asarray(torch.as_tensor(v).detach().cpu().double().flatten()) for label, v in coefficients.items()}
    if any(v.size == 0 for v in values.values()):
        raise ValueError(f"no coefficients for {[k for k, v in values.items() if v.size == 0]}")
    return values


def _symmetric_bins(values: Mapping[str, np.ndarray], bins: int) -> np.ndarray:
    """``bins`` equal bins over ``[-max|v|, max|v|]``; an odd count keeps 0 (the plain conv) mid-bin."""
    limit = max(float(np.abs(v).max()) for v in values.values())
    return np.linspace(-limit, limit, bins + 1) if limit > 0 else np.linspace(-1.0, 1.0, bins + 1)


def plot_ar_histogram(coefficients: Mapping[str, np.ndarray | torch.Tensor], path: str | Path, *,
                      bins: int = 41):
    """Fig. 6: histogram (percent of coefficients) of AR taps, one outline per entry (e.g. one per
    checkpoint), the legend beside the axes; returns the figure. For many entries (one per
    layer) :func:`plot_ar_layer_histograms` stays readable."""
    values = _flat_values(coefficients)
    edges = _symmetric_bins(values, bins)
    fig = _new_figure(7.5, 4.0)
    ax = fig.subplots()
    for label, v in values.items():
        ax.hist(v, bins=edges, weights=np.full(v.size, 100.0 / v.size), histtype="step", linewidth=1.5, label=label)
    ax.set_xlabel("coefficient")
    ax.set_ylabel("percentage (%)")
    ax.set_title("Histogram of the autoregressive coefficients")
    fig.legend(loc="outside right upper", fontsize=8)
    return _save(fig, path)


def plot_ar_layer_histograms(coefficients: Mapping[str, np.ndarray | torch.Tensor], path: str | Path, *,
                             bins: int = 41, title: str = "AR coefficients per layer"):
    """Fig. 6 per layer as a heat map: one row per entry (in the given order, e.g. the model's),
    one column per coefficient bin, colour = percent of that row's coefficients (log scale, so
    the tails show beside the peak at 0); returns the figure."""
    from matplotlib.colors import LogNorm

    values = _flat_values(coefficients)
    edges = _symmetric_bins(values, bins)
    percent = np.stack([np.histogram(v, bins=edges)[0] * 100.0 / v.size for v in values.values()])
    shown = np.ma.masked_equal(percent, 0.0)  # an empty bin is left blank: log(0) has no colour
    fig = _new_figure(8.0, 1.6 + 0.2 * len(values))
    ax = fig.subplots()
    mesh = ax.pcolormesh(edges, np.arange(len(values) + 1), shown, cmap="viridis",
                         norm=LogNorm(vmin=float(shown.min()), vmax=float(shown.max())))
    ax.set_yticks(np.arange(len(values)) + 0.5, list(values), fontsize=7 if len(values) > 12 else 9)
    ax.invert_yaxis()
    ax.set_xlabel("coefficient")
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label="percentage of the layer's coefficients (%)")
    return _save(fig, path)
