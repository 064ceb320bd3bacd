"""armafy on timm families and every SMP architecture: identity at init, state dict, report, idempotence."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
from armafy_cases import IDENTITY_TOL, relative_error
from timm.layers import CondConv2d

from arma_plugin import ARMAConfig, ar_parameters, armafy, non_ar_parameters

# (model name, create_model kwargs): one or two per family, smallest variants, chosen to cover
# plain convs, Conv2d subclasses (ScaledStdConv2d, Conv2dSame), CondConv2d, convs shared between
# blocks (CoaT), timm's non-traceable leaf blocks (MobileViT, NF blocks) and families without
# spatial convs (ViT: only the patch embedding).
TIMM_CASES = [
    ("vgg11", {"num_classes": 10}),
    ("test_resnet", {}),
    ("test_nfnet", {}),
    ("test_efficientnet", {}),
    ("tf_mobilenetv3_small_minimal_100", {}),
    ("efficientnet_cc_b0_4e", {}),
    ("test_convnext", {}),
    ("regnetx_002", {}),
    ("mobilevit_xxs", {}),
    ("coat_lite_tiny", {"img_size": 64}),
    ("test_vit", {"img_size": 64}),
    ("test_maxvit", {"img_size": 64}),
    ("levit_128s", {"img_size": 64}),
]
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SMP_ARCHS = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
SMP_SIZE = {"pan": 128}  # PAN's pyramid pooling needs a 4x4 map at output stride 32


def conv_like(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, CondConv2d))


def forward_and_called_convs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """The output, and (independent count) the names of convs with a kernel > 1x1 that this
    real forward calls, recorded with hooks."""
    names = {m: n for n, m in model.named_modules() if conv_like(m) and tuple(m.kernel_size) != (1, 1)}
    called = set()
    hooks = [m.register_forward_hook(lambda mod, a, o: called.add(names[mod])) for m in names]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return out, called


def check_conversion(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, object]:
    """The properties every conversion must have; returns the armafied model and report."""
    model.eval()
    original_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref, expected = forward_and_called_convs(model, x)
    arma, report = armafy(model, return_report=True)

    assert arma is not model and type(arma) is type(model)
    assert arma.arma_report is report and arma.arma_config == ARMAConfig()
    for key, value in model.state_dict().items():  # inplace=False: original untouched
        assert torch.equal(value, original_state[key]), key

    with torch.no_grad():
        out = arma(x)
    assert relative_error(out, ref) <= IDENTITY_TOL

    converted = {e.name for e in report.entries if e.status == "converted"}
    assert converted == expected
    state = arma.state_dict()
    for key, value in original_state.items():
        assert torch.equal(state[key], value), key
    converted_modules = {id(arma.get_submodule(n)) for n in converted}
    aliases = {n for n, m in arma.named_modules(remove_duplicate=False) if id(m) in converted_modules}
    assert set(state) - set(original_state) == {f"{n}.ar.alpha" for n in aliases}  # shared convs: every alias
    assert report.ar_params_added == sum(p.numel() for p in ar_parameters(arma))
    n_params = sum(1 for _ in arma.parameters())
    assert sum(1 for _ in ar_parameters(arma)) + sum(1 for _ in non_ar_parameters(arma)) == n_params

    arma.zero_grad()
    arma(x).float().pow(2).mean().backward()
    grads = [p.grad for p in ar_parameters(arma)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    keys = arma.state_dict().keys()
    again, report2 = armafy(arma, inplace=True, return_report=True)
    assert not report2.changed and report2.converted == 0
    assert report2.already_converted == len(converted)
    assert again is arma and arma.state_dict().keys() == keys
    return arma, report


@pytest.mark.parametrize("name,kwargs", TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def test_timm_family(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    x = torch.randn(1, 3, 64, 64)
    arma, _ = check_conversion(model, x)
    with torch.no_grad():
        assert relative_error(arma.forward_features(x), model.forward_features(x)) <= IDENTITY_TOL
    assert type(arma.get_classifier()) is type(model.get_classifier())
    arma.reset_classifier(5)
    assert arma(x).shape == (1, 5)


@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_smp_arch(arch: str) -> None:
    torch.manual_seed(0)
    if arch == "dpt":  # SMP's DPT takes only ViT-style encoders
        model = smp.create_model(arch, encoder_name="tu-test_vit", encoder_weights=None, dynamic_img_size=True)
    else:
        model = smp.create_model(arch, encoder_name="resnet18", encoder_weights=None)
    size = SMP_SIZE.get(arch, 64)
    x = torch.randn(1, 3, size, size)
    arma, _ = check_conversion(model, x)
    assert type(arma.encoder) is type(model.encoder) and type(arma.decoder) is type(model.decoder)
    assert arma.predict(x).shape == arma(x).shape  # SMP's predict (eval + no_grad forward) still works


@pytest.mark.slow
def test_full_timm_sweep() -> None:
    """Every timm family (scripts/sweep_timm.py): converts, identity error within the target."""
    sys.path.insert(0, str(SCRIPTS))
    import sweep_timm

    rows = [sweep_timm.sweep_family(f, 64, 600, 8) for f in sorted(timm.list_modules())]
    assert [r["family"] for r in rows if r["status"] != "ok" or r["identity_error"] > IDENTITY_TOL] == []


@pytest.mark.slow
def test_full_smp_sweep() -> None:
    """Every SMP architecture x the sweep's encoders (scripts/sweep_smp.py)."""
    sys.path.insert(0, str(SCRIPTS))
    import sweep_smp

    rows = [sweep_smp.sweep_one(a, e, kw, 64) for a, e, kw in sweep_smp.combinations(list(sweep_smp.DEFAULT_ENCODERS))]
    bad = [(r["arch"], r["encoder"]) for r in rows if r["status"] == "error"
           or (r["status"] == "ok" and r["identity_error"] > IDENTITY_TOL)]
    assert bad == [] and {r["arch"] for r in rows if r["status"] == "ok"} == set(smp.MODEL_ARCHITECTURES_MAPPING)
