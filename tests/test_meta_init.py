"""Meta-device construction, ``to_empty()`` and ``reset_parameters()`` (FSDP's path) give
back the layers' identity at init: ``alpha = 0`` and the non-local block's ``W_z = 0``."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from arma_plugin import ARMAConfig, ARMAConv2d, AutoRegressive2d, NonLocal2d, armafy


def materialise(model: nn.Module, children_first: bool = False) -> nn.Module:
    """What FSDP does with a meta-device model: allocate, then ``reset_parameters()`` on
    every module that holds parameters or buffers of its own."""
    model.to_empty(device="cpu")
    with torch.no_grad():  # to_empty leaves whatever was in memory; make stale values certain
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    modules = list(model.modules())
    for module in reversed(modules) if children_first else modules:
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            module.reset_parameters()
    return model


@pytest.mark.parametrize("children_first", [False, True], ids=["parents-first", "children-first"])
@pytest.mark.parametrize("build, reference", [
    (lambda: AutoRegressive2d(4, ar_kernel_size=5), lambda layer, x: x),
    (lambda: NonLocal2d(4), lambda layer, x: x),
    (lambda: ARMAConv2d(4, 4, 3, padding=1, ar_kernel_size=5, boundary="zeros"),
     lambda layer, x: nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)),
], ids=["AutoRegressive2d", "NonLocal2d", "ARMAConv2d"])
def test_layer_is_identity_after_meta_init(build, reference, children_first):
    with torch.device("meta"):
        layer = build()
    assert all(p.is_meta for p in layer.parameters())
    materialise(layer, children_first)
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    x = torch.randn(2, 4, 6, 7)
    assert torch.equal(layer(x), reference(layer, x))


def test_reset_parameters_restores_identity_after_training():
    layer = ARMAConv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        layer.ar.alpha.normal_()
    layer.reset_parameters()
    assert torch.equal(layer.ar.alpha, torch.zeros_like(layer.ar.alpha))


def reinit_base_weights(model: nn.Module) -> nn.Module:
    """Seeded values for every parameter that is not an ARMA layer's own (the AR ``alpha`` and
    the non-local blocks stay as constructed or reset), in module order."""
    own = {id(p) for m in model.modules() if isinstance(m, (AutoRegressive2d, NonLocal2d)) for p in m.parameters()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in own:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def test_armafy_on_meta_timm_model_then_materialise():
    config = ARMAConfig(ar_kernel_size=5, nonlocal_after=["layer2"])
    with torch.device("meta"):
        meta_model = timm.create_model("resnet10t", pretrained=False)
    meta_model = armafy(meta_model, config)
    assert all(p.is_meta for p in meta_model.parameters())
    meta_model = reinit_base_weights(materialise(meta_model)).eval()
    cpu_model = reinit_base_weights(armafy(timm.create_model("resnet10t", pretrained=False), config)).eval()

    assert any(isinstance(m, NonLocal2d) for m in meta_model.modules())
    assert sum(isinstance(m, ARMAConv2d) for m in meta_model.modules()) > 5
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(meta_model(x), cpu_model(x))
