"""ERF map (Def. 2), radius (eq. 3) and Theorem 3 of Su et al., NeurIPS 2020."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from arma_plugin.erf import (ar_layer_radius, erf_map, erf_radius, linear_arma_erf, linear_arma_network,
                             theoretical_radius)
from arma_plugin.layers import AutoRegressive2d

# The networks are float64 and the measured line holds all but L·1e-10 of the ERF's mass,
# so a relative error above 1e-4 means a wrong layer or ERF, not noise.
THM3_RTOL = 1e-4


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("num_layers", [1, 3, 5])
@pytest.mark.parametrize("ar_coeff", [0.0, 0.6, 0.8, 0.9])
def test_theorem3_matches_measured_radius(num_layers, ar_coeff, dilation):
    erf, origin = linear_arma_erf(num_layers, 3, dilation, ar_coeff)
    assert erf.sum().item() == pytest.approx(1.0, abs=1e-12)  # Def. 2: a distribution (float64 rounding)
    measured = erf_radius(erf, origin=origin)
    assert measured == pytest.approx(theoretical_radius(num_layers, 3, dilation, ar_coeff), rel=THM3_RTOL)


def test_theorem3_network_is_causal_and_uses_the_package_layer():
    net = linear_arma_network(2, 3, 1, 0.5)
    erf, (row, _) = linear_arma_erf(2, 3, 1, 0.5)
    assert erf[row + 1:].sum() == 0  # nothing below the output row: y_i depends on x_j, j <= i only
    assert sum(type(m).__name__ == "ARMAConv2d" for m in net) == 2


def test_theorem3_2d_network_is_the_outer_product_of_the_1d_one():
    erf_1d, _ = linear_arma_erf(2, 3, 1, 0.6, tail=1e-6)
    erf_2d, _ = linear_arma_erf(2, 3, 1, 0.6, ndim=2, tail=1e-6)
    line = erf_1d[:, 0]
    # separable AR and MA in float64: equal up to a few ulps of accumulated rounding
    torch.testing.assert_close(erf_2d, torch.outer(line, line), rtol=1e-9, atol=1e-15)


def test_theoretical_radius_per_layer_lists_and_closed_form():
    ks, ds, As = [3, 5, 7], [1, 2, 1], [0.0, 0.5, 0.8]
    expected = math.sqrt(sum(d * d * (k * k - 1) / 12 + a / (1 - a) ** 2 for k, d, a in zip(ks, ds, As)))
    assert theoretical_radius(3, ks, ds, As) == pytest.approx(expected, rel=1e-15)  # same sum, float64
    # identical layers: r = sqrt(L) times the one-layer radius; a = 0, d = 1 is Luo et al.'s CNN sqrt(L(K²-1)/12)
    assert theoretical_radius(4, 5, 2, 0.3) == pytest.approx(2 * theoretical_radius(1, 5, 2, 0.3), rel=1e-15)
    assert theoretical_radius(6, 3) == pytest.approx(math.sqrt(6 * 8 / 12), rel=1e-15)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_layers=0), "num_layers"),
    (dict(num_layers=2, ar_coeff=1.0), "ar_coeff"),
    (dict(num_layers=2, ar_coeff=-0.1), "ar_coeff"),
    (dict(num_layers=2, kernel_size=[3]), "kernel_size"),
    (dict(num_layers=1, dilation=0), "dilation"),
])
def test_theoretical_radius_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        theoretical_radius(**kwargs)


@pytest.mark.parametrize("shape, origin", [((9,), (4,)), ((9,), (7,)), ((7, 11), (3, 5)), ((7, 11), (0, 10))])
@pytest.mark.parametrize("about", ["origin", "mean"])
def test_radius_of_a_point_is_zero(shape, origin, about):
    point = torch.zeros(shape)
    point[(2,) * len(shape)] = 5.0  # unnormalised on purpose: erf_radius normalises
    assert erf_radius(point, origin=origin, about=about) == pytest.approx(0.0, abs=1e-7)  # sqrt of rounding


@pytest.mark.parametrize("width", [1, 2, 3, 8, 15])
def test_radius_of_a_uniform_box(width):
    # eq. 3 on a box [0, width) with the output at 0: the discrete uniform variance (width²-1)/12
    box = np.zeros(40)
    box[:width] = 1.0
    expected = math.sqrt((width**2 - 1) / 12)
    assert erf_radius(box, origin=(0,)) == pytest.approx(expected, rel=1e-12)  # float64 sums of 40 terms
    shifted = np.roll(box, 17)
    assert erf_radius(shifted, about="mean") == pytest.approx(expected, rel=1e-12)
    # 2-D box: the variances of the two axes add
    square = np.outer(box, box)
    assert erf_radius(square, about="mean") == pytest.approx(math.sqrt(2) * expected, rel=1e-12)


def test_radius_eq3_is_the_spread_of_the_distance_to_the_output():
    ring = torch.zeros(21, 21)
    for i, j in [(10, 16), (10, 4), (4, 10), (16, 10)]:
        ring[i, j] = 1.0  # all mass 6 pixels from (10, 10)
    assert erf_radius(ring) == pytest.approx(0.0, abs=1e-7)  # sqrt of rounding
    assert erf_radius(ring, about="mean") == pytest.approx(6.0, rel=1e-12)  # E[p1²] + E[p2²] = 18 + 18
    two = torch.zeros(21, 21)
    two[10, 10] = two[10, 18] = 1.0  # distances 0 and 8: std 4
    assert erf_radius(two) == pytest.approx(4.0, rel=1e-12)


@pytest.mark.parametrize("erf, kwargs, match", [
    (torch.ones(2, 2, 2), {}, "1-D or 2-D"),
    (torch.tensor([1.0, -1.0, 1.0]), {}, "non-negative"),
    (torch.zeros(5), {}, "positive sum"),
    (torch.ones(5), dict(about="centre"), "about"),
    (torch.ones(5, 5), dict(origin=(1,)), "origin"),
])
def test_radius_rejects_bad_input(erf, kwargs, match):
    with pytest.raises(ValueError, match=match):
        erf_radius(erf, **kwargs)


@pytest.mark.parametrize("kernel_size, dilation, ar_coeff", [(1, 1, 0.0), (3, 1, 0.6), (5, 2, 0.9), (3, 1, 0.99)])
def test_ar_layer_radius_of_causal_taps_is_theorem3(kernel_size, dilation, ar_coeff):
    radius = ar_layer_radius([0.0], [-ar_coeff], kernel_size=kernel_size, dilation=dilation)
    # the response is cut where |h| < 1e-12 of its mass: relative error far below 1e-8
    assert radius == pytest.approx(theoretical_radius(1, kernel_size, dilation, ar_coeff), rel=1e-8)


@pytest.mark.parametrize("b", [0.1, 0.3, 0.45])
def test_ar_layer_radius_of_symmetric_taps(b):
    # 1/(1 - b z - b/z) has spectrum H(w) = 1/(1 - 2b cos w) >= 0 and h >= 0, so
    # Var = -H''(0)/H(0) = 2b/(1 - 2b)
    assert ar_layer_radius([-b], [-b]) == pytest.approx(math.sqrt(2 * b / (1 - 2 * b)), rel=1e-8)  # as above


def test_ar_layer_radius_matches_the_layer():
    # two factors with mixed signs: compare the FFT formula with the layer's own zero-boundary solve
    taps = torch.tensor([[[0.3, -0.5, 0.0, 0.0], [-0.2, 0.6, 0.0, 0.0]]], dtype=torch.float64)
    layer = AutoRegressive2d(1, ar_kernel_size=5, boundary="zeros", reparam=False).double()
    with torch.no_grad():
        layer.alpha.copy_(taps)
    erf = erf_map(layer, (1, 301, 1), n_samples=1)
    expected = ar_layer_radius(taps[0, :, 0].tolist(), taps[0, :, 1].tolist())
    # 150 pixels each side hold all but ~0.8^150 of |h|: agreement to float64 solve accuracy
    assert erf_radius(erf, about="mean") == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="stability"):
        ar_layer_radius([0.5], [-0.5])


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, padding=1)).double()


def test_erf_of_converted_model_equals_original_at_init_and_grows_with_taps():
    from arma_plugin import armafy

    original = _small_cnn()
    original.train()
    converted = armafy(original, boundary="zeros")
    shape = (2, 33, 33)
    before = erf_map(original, shape, n_samples=6)
    assert original.training  # erf_map restores the training flag
    at_init = erf_map(converted, shape, n_samples=6)
    # alpha = 0 makes every AR solve the identity: same gradients up to float64 rounding
    torch.testing.assert_close(at_init, before, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        for name, param in converted.named_parameters():
            if name.endswith("ar.alpha"):
                param.fill_(0.0)
                param[..., 1] = param[..., 3] = math.atanh(-0.7)  # reparam: f/g left = right = -0.35
    after = erf_map(converted, shape, n_samples=6)
    r_before, r_after = erf_radius(before, about="mean"), erf_radius(after, about="mean")
    # three layers of an AR factor with Var 2b/(1-2b) = 2.3 per axis add far more than 10%
    assert r_after > 1.1 * r_before
    assert erf_radius(after) > erf_radius(before)  # eq. 3 as printed grows too


def test_erf_map_needs_a_feature_map():
    classifier = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match="feature map"):
        erf_map(classifier, (1, 8, 8))
    with pytest.raises(ValueError, match="output_index"):
        erf_map(nn.Conv2d(1, 1, 3, padding=1), (1, 8, 8), output_index=(8, 0))
    with pytest.raises(ValueError, match="input_shape"):
        erf_map(nn.Conv2d(1, 1, 3, padding=1), (8, 8))


def test_erf_map_averages_over_output_channels():
    # output channel 0 sees input pixel offset (0, -1), channel 1 offset (0, +1): with one sample per
    # output channel the ERF puts half its mass on each
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 0] = 1.0
        conv.weight[1, 0, 1, 2] = -3.0
    erf = erf_map(conv, (1, 5, 5), n_samples=2)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[2, 1] = expected[2, 3] = 0.5
    torch.testing.assert_close(erf, expected)


def test_ar_layer_radius_batched_over_channels_equals_one_by_one():
    rng = np.random.default_rng(0)
    left, right = rng.uniform(-0.45, 0.45, size=(2, 6, 2))  # |left| + |right| < 0.9: stable
    left[0] = [0.0, 0.0]
    right[0] = [-0.999999, 0.0]  # response longer than max_length: inf, not a truncated number
    batched = ar_layer_radius(left, right, kernel_size=3, max_length=1 << 16)
    single = [ar_layer_radius(lc, rc, kernel_size=3, max_length=1 << 16) for lc, rc in zip(left, right)]
    assert math.isinf(batched[0]) and math.isinf(single[0])
    np.testing.assert_allclose(batched[1:], single[1:], rtol=1e-12)  # same FFT per row; only the length may differ


def test_ar_layer_summaries_of_an_armafied_model():
    from arma_plugin import armafy
    from arma_plugin.erf import ar_coefficients, ar_layer_summaries

    model = armafy(nn.Sequential(nn.Conv2d(1, 2, 5, dilation=2), nn.Conv2d(2, 3, 3)), reparam=False)
    with torch.no_grad():
        model[0].ar.alpha.copy_(torch.tensor([0.0, -0.8, 0.0, 0.0]))  # causal a = 0.8 along H only
    taps = ar_coefficients(model)
    assert list(taps) == ["0.ar", "1.ar"] and taps["0.ar"].shape == (2, 1, 4)
    first, second = ar_layer_summaries(model)
    # the taps are float32 (0.8 is off by 1.5e-8 relative) and d log r / d log a is about 9 at a = 0.8
    assert first.radius_h == pytest.approx(theoretical_radius(1, 5, 2, 0.8), rel=1e-6)
    assert first.radius_w == pytest.approx(theoretical_radius(1, 5, 2, 0.0), rel=1e-8)
    assert (first.mean_abs_tap, first.max_abs_tap) == pytest.approx((0.2, 0.8))  # one tap of four is 0.8
    assert second.radius_h == second.radius_w == pytest.approx(theoretical_radius(1, 3), rel=1e-8)


@pytest.mark.slow
def test_finetuning_an_armafied_cnn_widens_its_erf():
    """scripts/erf_finetune.py: on a wide-blur task the AR taps learn a wider ERF than the CNN's 7x7."""
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "erf_finetune.py"
    spec = importlib.util.spec_from_file_location("erf_finetune", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base, control, arma = script.training_function(argparse.Namespace(steps=300, lr=3e-3, seed=0, out=None))
    # measured (seed 0): radius about the mean 2.6 -> 5.0 and test MSE 0.56 -> 0.21; the margins
    # below leave room for other seeds and solver rounding, not for "no effect"
    assert arma["radius_mean"] > 1.5 * control["radius_mean"]
    assert arma["test_mse"] < 0.6 * control["test_mse"]
