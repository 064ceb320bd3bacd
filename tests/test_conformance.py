"""What timm's and SMP's own model suites run, on armafied models with trained AR coefficients.

Models: a plain-conv ResNet, an EfficientNet with ``Conv2dSame`` (TF padding), an NFNet with
``ScaledStdConv2d``, a ConvNeXt, and an SMP Unet. Inputs are tiny; inductor compilation and
``torch.export`` of every model are ``slow`` (``tests/test_export.py`` exports a timm classifier
and an SMP Unet in CI).
"""
from __future__ import annotations

import copy
import pickle

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
from timm.layers import convert_sync_batchnorm
from timm.utils import ModelEmaV3
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from arma_plugin import AutoRegressive2d, armafy
from test_export import _train_ar

TIMM_MODELS = ["resnet18", "tf_efficientnet_b0", "test_nfnet", "test_convnext"]
ALL_MODELS = [*TIMM_MODELS, "smp_unet"]
# CI runs the cheap models; the rest of each matrix is ``slow``
CHEAP = ("resnet18", "test_nfnet", "smp_unet")


def _matrix(names: list[str]) -> list:
    return [name if name in CHEAP else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _create(name: str, **kwargs) -> nn.Module:
    if name == "smp_unet":
        return smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8), **kwargs)
    return timm.create_model(name, num_classes=7, **kwargs)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _train_ar(armafy(_create(name))).eval()


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _ar_count(model: nn.Module) -> int:
    return sum(isinstance(m, AutoRegressive2d) for m in model.modules())


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", _matrix(ALL_MODELS))
def test_forward_backward_reaches_every_ar_layer(name):
    model = _model(name).train()
    model(_input()).mean().backward()
    grads = [m.alpha.grad for m in model.modules() if isinstance(m, AutoRegressive2d)]
    # not every one is non-zero: on a 1x1 map the solve scales each channel, which a following
    # train-mode BatchNorm normalises away (zero gradient, exactly)
    assert grads and all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_jit_script_and_trace_equal_eager(name):
    model, x = _model(name), _input()
    with torch.no_grad():
        expected = model(x)
        for compiled in (torch.jit.script(model), torch.jit.trace(model, x)):
            # the same kernels as eager; TorchScript may fuse elementwise tails (float32 rounding)
            torch.testing.assert_close(compiled(x), expected)


@pytest.mark.parametrize("name", _matrix(ALL_MODELS))
def test_deepcopy_pickle_and_channels_last(name):
    model, x = _model(name), _input()
    with torch.no_grad():
        expected = model(x)
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(twin(x), expected)
        model.to(memory_format=torch.channels_last)
        # channels_last convs sum in another order: float32 rounding, grown by ~20 layers
        assert _rel_err(model(x.contiguous(memory_format=torch.channels_last)), expected) < 1e-4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_meta_device_build_and_forward(name):
    with torch.device("meta"):
        model = armafy(_create(name))
    assert all(p.device.type == "meta" for p in model.parameters()) and _ar_count(model) > 0
    y = model(torch.empty(2, 3, 32, 32, device="meta"))
    assert y.device.type == "meta" and y.shape == ((2, 1, 32, 32) if name == "smp_unet" else (2, 7))


@pytest.mark.parametrize("name", _matrix(ALL_MODELS))
def test_compile_fullgraph_captures_one_graph(name):
    model, x = _model(name), _input()
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # graph capture: what breaks
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_compile_inductor_and_export(name):
    model, x = _model(name), _input()
    torch.compiler.reset()
    with torch.no_grad():
        expected = model(x)
        # inductor fuses and reorders float32 arithmetic around the custom op
        assert _rel_err(torch.compile(model, fullgraph=True)(x), expected) < 1e-4
        for strict in (True, False):
            torch.testing.assert_close(torch.export.export(model, (x,), strict=strict).module()(x), expected)


@pytest.mark.parametrize("name", _matrix(TIMM_MODELS))
def test_features_only_and_forward_intermediates(name):
    x = _input()
    torch.manual_seed(0)
    original = timm.create_model(name, features_only=True).eval()
    features = armafy(original)
    with torch.no_grad():
        for got, want in zip(features(x), original(x)):  # identity at init
            assert torch.equal(got, want)
        model = _model(name)
        final, intermediates = model.forward_intermediates(x)
        assert len(intermediates) > 0
        torch.testing.assert_close(final, model.forward_features(x))  # the same kernels


# tf_efficientnet's Conv2dSame computes its padding from input sizes in Python, which
# torchvision's fx tracer cannot follow (the original model fails the same way)
@pytest.mark.parametrize("name", _matrix(["resnet18", "test_nfnet", "test_convnext", "smp_unet"]))
def test_torchvision_feature_extractor(name):
    model, x = _model(name), _input()
    last = get_graph_node_names(model)[1][-1]
    extractor = create_feature_extractor(model, return_nodes={last: "out"})
    with torch.no_grad():
        assert torch.equal(extractor(x)["out"], model(x))


@pytest.mark.parametrize("name", _matrix(TIMM_MODELS))
def test_timm_training_utilities(name):
    model, x = _model(name), _input()
    ema = ModelEmaV3(model, decay=0.5)
    ema.update(model)
    synced = convert_sync_batchnorm(copy.deepcopy(model))  # timm's: keeps its BatchNormAct2d activations
    with torch.no_grad():
        assert _ar_count(ema.module) == _ar_count(model) and torch.equal(ema.module(x), model(x))
        assert _ar_count(synced) == _ar_count(model) and set(synced.state_dict()) == set(model.state_dict())
        torch.testing.assert_close(synced.eval()(x), model(x))  # eval SyncBN is BatchNorm

    model.train()
    grads = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(2)  # the same dropout / drop-path draws in both runs
        model(x).square().mean().backward()
        grads.append([m.alpha.grad.clone() for m in model.modules() if isinstance(m, AutoRegressive2d)])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)  # recomputation runs the same kernels

    model.reset_classifier(3)
    assert model.eval()(x).shape == (2, 3) and _ar_count(model) == len(grads[0])


class _GatedConv(nn.Conv2d):
    """A conv subclass whose forward takes a second argument with a default (like CondConv2d)."""

    def forward(self, x: torch.Tensor, gate: float = 1.0) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias) * gate


def test_converted_conv_subclass_keeps_its_signature_and_scripts():
    import inspect

    model = nn.Sequential(_GatedConv(3, 4, 3, padding=1))
    converted = _train_ar(armafy(model))
    conv = converted[0]
    assert isinstance(conv, _GatedConv) and isinstance(conv.ar, AutoRegressive2d)
    assert list(inspect.signature(conv.forward).parameters) == ["x", "gate"]
    x = _input()
    with torch.no_grad():
        assert torch.equal(conv(x, 0.5), conv.ar(_GatedConv.forward(conv, x, 0.5)))
        scripted = torch.jit.script(conv)
        torch.testing.assert_close(scripted(x, 0.5), conv(x, 0.5))  # the same kernels
        torch.testing.assert_close(scripted(x), conv(x))  # the base's default
