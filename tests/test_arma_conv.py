"""ARMAConv2d: the conv (MA part, Def. 1) followed by the AR solve; identity at init."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from arma_plugin.layers import ARMAConv2d, AutoRegressive2d
from arma_plugin.layers.ar_solve_op import numba_available

BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba missing"))]


@pytest.mark.parametrize("conv_kwargs", [
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=2, padding=(1, 2), bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=4, padding_mode="reflect"),
    dict(in_channels=2, out_channels=5, kernel_size=1),
], ids=["3x3", "strided-nobias", "depthwise-reflect", "1x1"])
@pytest.mark.parametrize("boundary", ["circular", "zeros"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_from_conv_is_identity_at_init(monkeypatch, backend, boundary, conv_kwargs):
    monkeypatch.setenv("ARMA_PLUGIN_BACKEND", backend)
    conv = nn.Conv2d(**conv_kwargs)
    arma = ARMAConv2d.from_conv(conv, ar_kernel_size=5, boundary=boundary)
    assert isinstance(arma, nn.Conv2d) and isinstance(arma.ar, AutoRegressive2d)
    assert set(arma.state_dict()) == set(conv.state_dict()) | {"ar.alpha"}
    x = torch.randn(2, conv.in_channels, 11, 10)
    expected, got = conv(x), arma(x)
    if backend == "numba":
        assert torch.equal(got, expected)  # alpha = 0: taps are exactly 0, every step divides by 1
    else:
        # circular: one float32 rfft2/irfft2 round trip (~few ulp of the largest value);
        # zeros: multiplication by exact identity matrices.
        assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_from_conv_copies_and_does_not_share():
    conv = nn.Conv2d(3, 4, 3, padding=1).double().eval()
    arma = ARMAConv2d.from_conv(conv, ar_kernel_size=3, boundary="zeros", ar_dilation=2)
    assert arma.weight.dtype == torch.float64 and not arma.training
    assert arma.weight.data_ptr() != conv.weight.data_ptr()
    assert torch.equal(arma.weight, conv.weight) and torch.equal(arma.bias, conv.bias)
    assert (arma.ar.boundary, arma.ar.dilation, arma.ar.alpha.dtype) == ("zeros", 2, torch.float64)


def test_forward_is_conv_then_solve_and_trains():
    layer = ARMAConv2d(3, 4, 3, padding=1, ar_kernel_size=5, boundary="zeros")
    with torch.no_grad():
        layer.ar.alpha.normal_()
    x = torch.randn(2, 3, 9, 7)
    expected = layer.ar(nn.functional.conv2d(x, layer.weight, layer.bias, padding=1))
    y = layer(x)
    assert torch.equal(y, expected)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("argument, value", [
    *((argument, value) for argument in ("ar_kernel_size", "boundary", "ar_dilation") for value in (True, 0, 2.0, "3")),
    ("ar_kernel_size", 2), ("boundary", "reflect"),
], ids=repr)
def test_bad_ar_arguments(argument, value):
    with pytest.raises(ValueError, match=rf"^{argument} must be .*, got {re.escape(repr(value))}$"):
        ARMAConv2d(3, 4, 3, **{argument: value})


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_like_conv2d(monkeypatch, backend):
    monkeypatch.setenv("ARMA_PLUGIN_BACKEND", backend)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    arma = ARMAConv2d.from_conv(conv, ar_kernel_size=5)
    with torch.no_grad():
        arma.ar.alpha.normal_()
    x = torch.randn(0, 3, 8, 9)
    y = arma(x)
    assert y.shape == conv(x).shape == (0, 4, 8, 9)
    y.sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in arma.parameters())


def test_jit_script_equals_eager():
    conv = ARMAConv2d(3, 4, 3, padding=1, boundary="zeros")
    with torch.no_grad():
        conv.ar.alpha.normal_(0, 0.5)
    x = torch.randn(2, 3, 9, 8)
    # the same conv and the same backend: bit-identical
    assert torch.equal(torch.jit.script(conv)(x), conv(x))
