"""The figures: ERF maps with axes in pixels from the output pixel, its marker and a colour bar;
Fig. 6 with its legend beside the axes, or one heat-map row per layer."""
import numpy as np
import pytest
import torch

from arma_plugin.plots import plot_ar_histogram, plot_ar_layer_histograms, plot_erf_comparison, plot_erf_grid

pytest.importorskip("matplotlib")


def bbox(fig, artist):
    """``artist``'s extent in pixels once ``fig`` is laid out and drawn (at ``fig.dpi``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return artist.get_window_extent(canvas.get_renderer())


def check_erf_panels(fig, n_panels):
    """Every ERF panel has numbered axes and the output pixel marked at offset (0, 0); one colour bar."""
    panels = [ax for ax in fig.axes if ax.images]
    colorbars = [ax for ax in fig.axes if not ax.images]
    assert len(panels) == n_panels
    assert [ax.get_ylabel() for ax in colorbars] == ["ERF / its maximum (each map)"]
    for ax in panels:
        assert any(label.get_text() for label in ax.get_xticklabels())
        assert any(label.get_text() for label in ax.get_yticklabels())
        markers = [line for line in ax.lines if line.get_label() == "output pixel"]
        assert len(markers) == 1 and list(markers[0].get_xydata()[0]) == [0.0, 0.0]
    return panels


def test_erf_grid_panels_are_measured_from_the_output_pixel(tmp_path):
    fig = plot_erf_grid([1, 2], [0.0, 0.5], tmp_path / "fig3.png")
    assert (tmp_path / "fig3.png").read_bytes()[:4] == b"\x89PNG"
    for ax in check_erf_panels(fig, 4):
        left, right, bottom, top = ax.images[0].get_extent()
        assert right == 0.5 and bottom == 0.5  # the causal ERF ends at the output pixel, bottom right
        image = ax.images[0].get_array()
        # the output pixel's own input weighs in every one of these networks: bottom-right cell is lit
        assert image[-1, -1] > 0 and image.max() == 1.0


def test_erf_comparison_axes_centre_on_the_output_pixel(tmp_path):
    erf = torch.zeros(9, 11, dtype=torch.float64)
    erf[2, 7] = 1.0
    fig = plot_erf_comparison({"a": erf, "b": erf}, tmp_path / "erf.png", origin=(2, 7))
    for ax in check_erf_panels(fig, 2):
        left, right, bottom, top = ax.images[0].get_extent()
        assert (left, right, bottom, top) == (-7.5, 3.5, 6.5, -2.5)
        assert "r = 0.00 (eq. 3)" in ax.get_title()  # a point mass at the origin has radius 0


def test_histogram_legend_is_beside_the_axes(tmp_path):
    rng = np.random.default_rng(0)
    fig = plot_ar_histogram({f"checkpoint {i}": rng.normal(0, 0.2, 500) for i in range(6)}, tmp_path / "fig6.png")
    ax, legend = fig.axes[0], fig.legends[0]
    assert not bbox(fig, legend).overlaps(bbox(fig, ax))
    assert not bbox(fig, ax.title).overlaps(bbox(fig, legend))


def test_per_layer_heat_map_keeps_28_layers_readable(tmp_path):
    rng = np.random.default_rng(0)
    taps = {f"decoder.blocks.{i}.conv.ar": torch.as_tensor(rng.normal(0, 0.1 + 0.01 * i, (16, 1, 4)))
            for i in range(28)}
    fig = plot_ar_layer_histograms(taps, tmp_path / "layers.png", bins=21)
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == list(taps)
    assert bbox(fig, ax).height / fig.dpi / 28 >= 0.12  # inches per layer row: a 7-pt tick label is 0.1 in
    assert not bbox(fig, ax.title).overlaps(bbox(fig, ax))
    percent = ax.collections[0].get_array().filled(0.0).reshape(28, 21)
    np.testing.assert_allclose(percent.sum(axis=1), 100.0)  # each row: all of its layer's coefficients
    assert fig.axes[1].get_ylabel() == "percentage of the layer's coefficients (%)"
