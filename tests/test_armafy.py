"""armafy's modes, options, training tools and bad input on small models (families: test_armafy_families)."""
from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from armafy_cases import IDENTITY_TOL, Branchy, relative_error, tiny_and_input
from timm.layers import Conv2dSame

from arma_plugin import ARMAConfig, ARMAConv2d, AutoRegressive2d, NonLocal2d, ar_parameters, armafy
from arma_plugin.convert import SkipReason


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
    with torch.no_grad():  # away from alpha = 0, where a missing AR gradient term would vanish
        for p in ar_parameters(arma):
            p.copy_(0.3 * torch.randn_like(p))
    plain = copy.deepcopy(arma)
    plain(x).square().mean().backward()
    try:
        ddp = nn.parallel.DistributedDataParallel(arma)
        ddp(x).square().mean().backward()
    finally:
        dist.destroy_process_group()
    # One process: DDP's all-reduce averages a single gradient, so it must give the plain
    # model's gradients; 1e-6 leaves room for float32 rounding if a reduction runs in another order.
    for p, ref in zip(ar_parameters(arma), ar_parameters(plain), strict=True):
        assert ref.grad.abs().max() > 0
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-6, atol=1e-9)
    ema = ModelEmaV3(arma, decay=0.5)
    starts = [p.detach().clone() for p in ar_parameters(arma)]
    with torch.no_grad():
        for p in ar_parameters(arma):
            p.fill_(0.2)
    ema.update(arma)
    ema_alphas = list(ar_parameters(ema.module))
    assert len(ema_alphas) == 4
    assert all(torch.allclose(a, 0.5 * start + 0.1) for a, start in zip(ema_alphas, starts, strict=True))


def test_inplace_activation_right_after_a_converted_conv_trains() -> None:
    """timm's VGG and ConvMlp put ``ReLU(inplace=True)`` directly after a conv; the AR layer's
    backward must not depend on a tensor that activation overwrites."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3)).double()
    arma = armafy(model)
    names = [n for n, _ in arma.named_parameters() if n.endswith("ar.alpha")]
    alphas = [0.3 * torch.randn(p.shape, dtype=torch.float64, requires_grad=True) for p in ar_parameters(arma)]
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)

    def loss(x: torch.Tensor, *alpha: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(arma, dict(zip(names, alpha, strict=True)), (x,)).square().mean()

    # fast mode: the derivative along one random direction of all inputs at once, by float64
    # central differences (step 1e-6, accurate to ~1e-9 here, far inside gradcheck's default
    # atol 1e-5 / rtol 1e-3); a backward that read the overwritten tensor is off by O(1)
    assert len(names) == 2 and torch.autograd.gradcheck(loss, (x, *alphas), fast_mode=True)


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


def test_dispatch_first_match_wins_and_unknown_types_are_refused() -> None:
    from arma_plugin.convert.dispatch import convert_conv

    config = ARMAConfig()
    plain = nn.Conv2d(2, 2, 3)
    assert type(convert_conv(plain, config)) is ARMAConv2d  # a new module holding the same weight
    same = Conv2dSame(2, 2, 3)
    assert convert_conv(same, config) is same and isinstance(same.ar, AutoRegressive2d)
    with pytest.raises(TypeError, match="cannot convert a Linear"):
        convert_conv(nn.Linear(2, 2), config)


def test_converting_a_plain_conv_copies_and_initialises_nothing() -> None:
    """The ARMAConv2d takes the conv's own Parameters: the only work on real storage is the new
    AR parameter (created, then zeroed); no conv weight is copied or randomly initialised."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from arma_plugin.convert.dispatch import convert_conv

    class RealStorageOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[tuple[str, tuple[int, ...]]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if torch.is_tensor(out) and out.device.type != "meta":
                self.ops.append((str(func.overloadpacket), tuple(out.shape)))
            return out

    conv = nn.Conv2d(3, 5, 3, bias=True)
    with RealStorageOps() as mode:
        new = convert_conv(conv, ARMAConfig())
    assert new.weight is conv.weight and new.bias is conv.bias
    assert {shape for _, shape in mode.ops} == {tuple(new.ar.alpha.shape)}, mode.ops
