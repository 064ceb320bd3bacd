"""armafy on timm families and all SMP architectures, plus its modes, options and bad input."""
from __future__ import annotations

import copy
import json
import io
import pickle
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import CondConv2d, Conv2dSame

from arma_plugin import ARMAConfig, ARMAConv2d, AutoRegressive2d, NonLocal2d, ar_parameters, armafy, non_ar_parameters
from arma_plugin.convert import ConversionReport, SkipReason

# Identity target: max |armafied - original| / max |original| in float32. The AR
# solve at alpha = 0 is the identity up to rounding of the solver (an FFT path is not bit-exact),
# and errors of ~1e-7 per layer must not add up past this over ~50 layers.
IDENTITY_TOL = 1e-5

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


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


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


class Tiny(nn.Module):
    """Every case armafy distinguishes: plain, dilated, pointwise, unused, shared, subclass
    (timm's Conv2dSame) and functional convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.unused = nn.Conv2d(8, 8, 3)
        self.same = Conv2dSame(8, 4, 3, stride=2)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        x = self.shared(self.shared(x))
        x = F.conv2d(x, self.weight, padding=1)
        return self.same(x)


class Branchy(Tiny):
    """Data-dependent control flow in the root forward: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.same(x) if x.sum() > 0 else self.same(-x)


def tiny_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Tiny().eval(), torch.randn(2, 3, 16, 16)


def statuses(report) -> dict[str, tuple[str, str]]:
    return {e.name: (e.status, e.reason) for e in report.entries}


def test_report_names_every_conv_and_why() -> None:
    model, x = tiny_and_input()
    arma, report = armafy(model, return_report=True)
    s = statuses(report)
    assert s["stem"] == s["body.0"] == s["shared"] == s["same"] == ("converted", None)
    assert s["body.2"] == ("skipped", SkipReason.POINTWISE)
    assert s["unused"] == ("skipped", SkipReason.NEVER_CALLED)
    assert s["conv2d"] == ("skipped", SkipReason.FUNCTIONAL_IN_MODULE_MODE)
    assert {e.name: e.calls for e in report.entries}["shared"] == 2
    assert isinstance(arma.same, Conv2dSame) and type(arma.same).__name__ == "ARMAConv2dSame"
    assert isinstance(arma.stem, ARMAConv2d)
    assert report.skipped == {SkipReason.POINTWISE: 1, SkipReason.NEVER_CALLED: 1,
                              SkipReason.FUNCTIONAL_IN_MODULE_MODE: 1}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["converted"] == 4 and len(data["entries"]) == 7
    assert data["skipped"] == {"pointwise": 1, "never_called": 1, "functional_in_module_mode": 1}
    text = str(report)
    assert all(name in text for name in s) and "4 converted" in text
    assert "never called in forward" in text  # people read the explanation, not the key
    with torch.no_grad():
        assert relative_error(arma(x), model(x)) <= IDENTITY_TOL


def test_nonzero_alpha_changes_the_output() -> None:
    model, x = tiny_and_input()
    arma = armafy(model)
    with torch.no_grad():
        for p in ar_parameters(arma):
            p.fill_(0.3)
        assert relative_error(arma(x), model(x)) > 1e-3


def test_graph_mode_puts_an_ar_node_after_every_call_site() -> None:
    model, x = tiny_and_input()
    gm, report = armafy(model, mode="graph", return_report=True)
    assert isinstance(gm, torch.fx.GraphModule)
    ar_nodes = [n for n in gm.graph.nodes if n.op == "call_module"
                and isinstance(gm.get_submodule(n.target), AutoRegressive2d)]
    assert len(ar_nodes) == 6  # stem, body.0, shared twice, the functional conv, same
    assert statuses(report)["conv2d"] == ("converted", None)
    assert {n.args[0].target for n in ar_nodes} >= {"stem", "body.0", "shared", "same"}
    with torch.no_grad():
        assert relative_error(gm(x), model(x)) <= IDENTITY_TOL
    gm(x).square().mean().backward()
    assert all(p.grad is not None for p in ar_parameters(gm))
    again, report2 = armafy(gm, mode="graph", return_report=True)
    assert not report2.changed and report2.already_converted == 5


def test_trace_failure_falls_back_to_module_walk() -> None:
    torch.manual_seed(0)
    model, x = Branchy().eval(), torch.randn(2, 3, 16, 16)
    arma, report = armafy(model, return_report=True)
    assert not report.traced and "TraceError" in report.trace_error
    assert report.trace_error in str(report)
    assert all(e.calls is None for e in report.entries)
    assert report.converted == 5  # unknown calls: every spatial conv is converted
    with torch.no_grad():
        assert relative_error(arma(x), model(x)) <= IDENTITY_TOL
    with pytest.raises(ValueError, match="mode='module'"):
        armafy(model, mode="graph")


@pytest.mark.parametrize("overrides,converted", [
    ({"target_modules": ["stem", "same"]}, {"stem", "same"}),
    ({"target_modules": r"s.*"}, {"stem", "shared", "same"}),
    ({"exclude_modules": ["body.0"]}, {"stem", "shared", "same"}),
    ({"include_pointwise": True}, {"stem", "body.0", "body.2", "shared", "same"}),
])
def test_which_convs_are_converted(overrides: dict, converted: set) -> None:
    model, x = tiny_and_input()
    arma, report = armafy(model, return_report=True, **overrides)
    assert {e.name for e in report.entries if e.status == "converted"} == converted
    assert {n.rsplit(".ar.", 1)[0] for n, _ in arma.named_parameters() if ".ar." in n} == converted


@pytest.mark.parametrize("overrides,attr,expected", [
    ({"ar_dilation": "match"}, "dilation", {"stem": 1, "body.0": 2}),
    ({"ar_dilation": 3}, "dilation", {"stem": 3, "body.0": 3}),
    ({"ar_kernel_size": 5}, "ar_kernel_size", {"stem": 5, "body.0": 5}),
    ({"boundary": "zeros"}, "boundary", {"stem": "zeros", "body.0": "zeros"}),
])
def test_ar_settings_reach_the_layers(overrides: dict, attr: str, expected: dict) -> None:
    model, x = tiny_and_input()
    arma = armafy(model, ARMAConfig(**overrides))
    assert {n: getattr(arma.get_submodule(n).ar, attr) for n in expected} == expected
    with torch.no_grad():
        assert relative_error(arma(x), model(x)) <= IDENTITY_TOL


@pytest.mark.parametrize("call,error,match", [
    (lambda m: armafy("resnet18"), TypeError, "nn.Module"),
    (lambda m: armafy(m, {"ar_kernel_size": 5}), TypeError, "ARMAConfig.from_dict"),
    (lambda m: armafy(m, kernel=5), ValueError, "unknown ARMAConfig fields"),
    (lambda m: armafy(m, ar_kernel_size=4), ValueError, "ar_kernel_size"),
    (lambda m: armafy(m, target_modules=["stm"]), ValueError, r"match no 2-D conv.*'stem'"),
    (lambda m: armafy(m, target_modules=r"nothing\..*"), ValueError, "match no 2-D conv"),
    (lambda m: armafy(m, nonlocal_after=["bdy"]), ValueError, r"not a module.*'body'"),
])
def test_bad_input(call, error: type, match: str) -> None:
    model, _ = tiny_and_input()
    with pytest.raises(error, match=match):
        call(model)


def test_inplace_converts_the_given_model() -> None:
    model, x = tiny_and_input()
    assert armafy(model, inplace=True) is model and isinstance(model.stem, ARMAConv2d)
    copy_model, _ = tiny_and_input()
    armafy(copy_model)
    assert type(copy_model.stem) is nn.Conv2d and type(copy_model.same) is Conv2dSame


def test_save_load_pickle_deepcopy_keep_the_subclass_layers() -> None:
    model, x = tiny_and_input()
    arma = armafy(model)
    with torch.no_grad():
        for p in ar_parameters(arma):
            p.uniform_(-0.5, 0.5)
        ref = arma(x)
    buffer = io.BytesIO()
    torch.save(arma, buffer)
    buffer.seek(0)
    copies = [torch.load(buffer, weights_only=False), copy.deepcopy(arma), pickle.loads(pickle.dumps(arma))]
    fresh = armafy(tiny_and_input()[0])
    fresh.load_state_dict(arma.state_dict())
    for other in copies + [fresh]:
        assert type(other.same) is type(arma.same) and isinstance(other.same, Conv2dSame)
        with torch.no_grad():
            assert torch.equal(other(x), ref)


def test_nonlocal_blocks_after_named_modules() -> None:
    model, x = tiny_and_input()
    arma, report = armafy(model, nonlocal_after=["body", "stem"], return_report=True)
    assert report.nonlocal_inserted == ["body", "stem"]
    assert isinstance(arma.body[-1], NonLocal2d) and len(arma.body) == 4  # appended to the Sequential
    assert type(arma.stem).__name__ == "NonLocalARMAConv2d" and isinstance(arma.stem.nonlocal_block, NonLocal2d)
    keys = set(arma.state_dict())
    assert {"body.3.out.weight", "stem.nonlocal_block.out.weight", "stem.ar.alpha"} <= keys
    with torch.no_grad():
        assert relative_error(arma(x), model(x)) <= IDENTITY_TOL
    calls = []
    hook = arma.stem.nonlocal_block.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    arma(x)
    hook.remove()
    assert calls == [(2, 8, 16, 16)]  # runs once, on the AR output
    again, report2 = armafy(arma, nonlocal_after=["body", "stem"], return_report=True)
    assert not report2.changed and len(again.body) == 4


def test_torch_compile_autocast_channels_last() -> None:
    model, x = tiny_and_input()
    arma = armafy(model)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(arma, backend="eager")
        assert relative_error(compiled(x), ref) <= IDENTITY_TOL
        cl_model = copy.deepcopy(arma).to(memory_format=torch.channels_last)
        assert relative_error(cl_model(x.to(memory_format=torch.channels_last)), ref) <= IDENTITY_TOL
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, ref_bf16 = arma(x), model(x)
        # bf16 has an 8-bit mantissa (relative step 2^-8 ~ 4e-3); the AR solve runs in float32
        # but the convs around it round to bf16, so both outputs agree to a few bf16 steps
        assert relative_error(out.float(), ref_bf16.float()) <= 3e-2


def test_ddp_and_model_ema() -> None:
    import os

    import torch.distributed as dist
    from timm.utils import ModelEmaV3

    model, x = tiny_and_input()
    arma = armafy(model).train()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(arma)
        ddp(x).square().mean().backward()
        assert all(p.grad is not None for p in ar_parameters(arma))
    finally:
        dist.destroy_process_group()
    ema = ModelEmaV3(arma, decay=0.5)
    with torch.no_grad():
        for p in ar_parameters(arma):
            p.fill_(0.2)
    ema.update(arma)
    ema_alphas = list(ar_parameters(ema.module))
    assert len(ema_alphas) == 4 and all(torch.allclose(a, torch.full_like(a, 0.1)) for a in ema_alphas)


def test_inplace_activation_right_after_a_converted_conv_trains() -> None:
    """timm's VGG and ConvMlp put ``ReLU(inplace=True)`` directly after a conv; the AR layer's
    backward must not depend on a tensor that activation overwrites."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3))
    arma = armafy(model)
    arma(torch.randn(2, 3, 8, 8)).square().mean().backward()
    assert all(p.grad is not None for p in ar_parameters(arma))


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


def test_weights_tied_between_converted_convs_stay_tied() -> None:
    shared = nn.Conv2d(3, 3, 3, padding=1)
    other = nn.Conv2d(3, 3, 3, padding=1)
    other.weight = shared.weight
    arma = armafy(nn.Sequential(shared, other))
    assert arma[0].weight is arma[1].weight


class ScaledWeightConv(nn.Module):
    """A functional conv whose weight is computed, so the graph cannot read its channel count."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * 2.0, padding=1)


def test_graph_mode_takes_channels_from_example_inputs() -> None:
    torch.manual_seed(0)
    model, x = ScaledWeightConv().eval(), torch.randn(1, 3, 8, 8)
    _, report = armafy(model, mode="graph", return_report=True)
    assert statuses(report)["conv2d"] == ("skipped", SkipReason.UNKNOWN_CHANNELS)
    gm, report = armafy(model, mode="graph", example_inputs=x, return_report=True)
    assert statuses(report)["conv2d"] == ("converted", None)
    assert [p.shape for p in ar_parameters(gm)] == [(6, 1, 4)]
    with torch.no_grad():
        assert relative_error(gm(x), model(x)) <= IDENTITY_TOL


# ``report.to_dict()`` as written by armafy before skip reasons had stable values (prose keys)
# for a model with a called 3x3 conv ``a``, a called 1x1 conv ``p`` and an unused 3x3 ``unused``.
PROSE_KEYED_REPORT = {
    "mode": "module", "traced": True, "trace_error": None, "untraceable": {},
    "entries": [
        {"name": "a", "kind": "module", "type": "Conv2d", "kernel": [3, 3], "groups": 1, "dilation": [1, 1],
         "calls": 1, "status": "converted", "reason": ""},
        {"name": "p", "kind": "module", "type": "Conv2d", "kernel": [1, 1], "groups": 1, "dilation": [1, 1],
         "calls": 1, "status": "skipped", "reason": "pointwise 1x1 (include_pointwise=False)"},
        {"name": "unused", "kind": "module", "type": "Conv2d", "kernel": [3, 3], "groups": 1, "dilation": [1, 1],
         "calls": 0, "status": "skipped", "reason": "never called in forward"}],
    "nonlocal_inserted": [], "ar_params_added": 16, "converted": 1, "already_converted": 0,
    "skipped": {"pointwise 1x1 (include_pointwise=False)": 1, "never called in forward": 1},
}


def test_report_round_trips_through_json() -> None:
    model, _ = tiny_and_input()
    _, report = armafy(model, return_report=True)
    data = json.loads(json.dumps(report.to_dict()))
    assert ConversionReport.from_dict(data) == report
    assert ConversionReport.from_dict(data).to_dict() == data


def test_report_reads_prose_keyed_reports() -> None:
    report = ConversionReport.from_dict(PROSE_KEYED_REPORT)
    assert [(e.name, e.status, e.reason) for e in report.entries] == [
        ("a", "converted", None), ("p", "skipped", SkipReason.POINTWISE),
        ("unused", "skipped", SkipReason.NEVER_CALLED)]
    assert report.to_dict()["skipped"] == {"pointwise": 1, "never_called": 1}


@pytest.mark.parametrize("change,match", [
    (lambda d: d["entries"][1].update(reason="too pointy"), "unknown skip reason 'too pointy'"),
    (lambda d: d["entries"][0].update(status="half done"), "unknown status 'half done'"),
    (lambda d: d.update(converted=3), "'converted' is 3 but the entries give 1"),
    (lambda d: d["skipped"].update({"never called in forward": 2}), "'skipped'"),
    (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda d: d.pop("mode"), r"missing keys \['mode'\]"),
])
def test_report_from_dict_refuses_what_it_cannot_read(change, match: str) -> None:
    data = copy.deepcopy(PROSE_KEYED_REPORT)
    change(data)
    with pytest.raises(ValueError, match=match):
        ConversionReport.from_dict(data)


def test_skip_reasons_have_stable_values_and_explanations() -> None:
    # the values are written to config.json: changing one breaks reading saved checkpoints' reports
    assert [r.value for r in SkipReason] == [
        "never_called", "weight_used_functionally", "pointwise", "not_targeted", "excluded",
        "anisotropic_dilation", "inside_nonlocal", "functional_in_module_mode", "unknown_channels"]
    assert len({r.explanation for r in SkipReason}) == len(SkipReason)
    assert all(SkipReason.parse(r.explanation) is r and SkipReason.parse(r.value) is r for r in SkipReason)
    assert {SkipReason.POINTWISE: 1}.get("pointwise") == 1  # usable as its plain-string key


def test_dispatch_first_match_wins_and_unknown_types_are_refused() -> None:
    from arma_plugin.convert.dispatch import convert_conv

    config = ARMAConfig()
    plain = nn.Conv2d(2, 2, 3)
    assert type(convert_conv(plain, config)) is ARMAConv2d  # a new module holding the same weight
    same = Conv2dSame(2, 2, 3)
    assert convert_conv(same, config) is same and isinstance(same.ar, AutoRegressive2d)
    with pytest.raises(TypeError, match="cannot convert a Linear"):
        convert_conv(nn.Linear(2, 2), config)
