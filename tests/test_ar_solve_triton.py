"""The triton backend of the AR solve, run by Triton's interpreter on CPU tensors, against
the dense float64 reference (values, dX, dalpha; Def. 1, 5; Thm 4, 6, 7).

``TRITON_INTERPRET=1`` is set by ``conftest.py`` before anything imports triton (Triton
reads it when it decorates kernels). The interpreter is slow (Python per vector
operation): maps and batches stay small here, the full cross product of cases is ``-m slow``.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip("triton", reason="the triton backend needs Triton (it ships with the torch wheel)")

from arma_plugin.layers import AutoRegressive2d, ar_taps, autoregressive2d  # noqa: E402
from arma_plugin.layers import ar_solve_triton  # noqa: E402
from arma_plugin.layers.ar_solve_op import BACKENDS, resolve_backend  # noqa: E402
from arma_plugin.reference import ar_solve_reference  # noqa: E402
from solve_checks import EPS32, EPS64, condition, rel_err  # noqa: E402
from triton_solve_checks import FUSED, check_against_reference, reference_solve, triton_solve  # noqa: E402

if not ar_solve_triton.INTERPRETED:
    pytest.skip("these tests run the Triton kernels on CPU tensors and need TRITON_INTERPRET=1 "
                "(conftest.py sets it unless the environment sets it otherwise)", allow_module_level=True)

BOUNDARIES = ["circular", "zeros"]
# (Q, dilation, H×W, plane elements solved in one program): sizes 1×1, 2×7, 5×3, 17×12, Q = 1,
# 2, 3 and dilation 1, 2, with each boundary; the last row forces the two-pass plan (an H pass
# and a W pass) with several programs per plane and a partial last tile.
CASES = [(1, 1, (1, 1), FUSED), (2, 2, (2, 7), FUSED), (3, 1, (5, 3), FUSED), (1, 2, (17, 12), FUSED),
         (2, 2, (6, 9), 8)]


def _case_id(case):
    q, d, (h, w), fused = case
    return f"Q{q}-d{d}-{h}x{w}-" + ("fused" if fused is None else "two-pass")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_float64_matches_dense_reference(boundary, case):
    """The method is exact: float64 in, float64 accumulation, agrees to float64 rounding.
    alpha·3 puts taps near the stability boundary (ill-conditioned solves)."""
    check_against_reference(boundary, *case, torch.float64, 3.0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_float32_within_float32_rounding(boundary):
    check_against_reference(boundary, 2, 2, (9, 6), FUSED, torch.float32, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(itertools.product([1, 2, 3], [1, 2, 3], [(1, 1), (2, 7), (5, 3), (33, 20),
                                                                           (17, 40), (64, 1), (1, 64)],
                                                        [FUSED, 8])), ids=_case_id)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_float64_sweep(boundary, case):
    """Every Q × dilation (3 makes cycles of several lengths) × size, fused and two-pass."""
    check_against_reference(boundary, *case, torch.float64, 3.0)


@pytest.mark.parametrize("boundary, ar_kernel_size", [("zeros", 5), pytest.param("circular", 5, marks=pytest.mark.slow),
                                                     pytest.param("zeros", 7, marks=pytest.mark.slow),
                                                     pytest.param("circular", 7, marks=pytest.mark.slow)])
def test_float32_tap_gradients_match_float64(boundary, ar_kernel_size):
    """|alpha| <= 3 (taps up to 0.995 of the stable bound): float32 tap gradients, computed per
    factor in the kernels and summed in float32 partials, stay within the 1e-3 of float64
    (max |f32 - f64| / max |f64|) that docs/layer.md promises for every backend."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from ar_grad_precision import worst_error

    assert worst_error("triton", boundary, ar_kernel_size, seeds=2, size=(12, 16), max_alpha=3.0) < 1e-3


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_raw_taps_inside_the_stable_region(boundary):
    """reparam=False: alpha holds the taps themselves; stable ones (|left|+|right| < 1) are solved."""
    gen = torch.Generator().manual_seed(3)
    taps = torch.rand(2, 2, 4, generator=gen, dtype=torch.float64) * 0.98 - 0.49  # |left|+|right| < 0.98
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    y, gx, ga = triton_solve(x, taps, grad_out, boundary, 1, reparam=False)
    y_ref, gx_ref, ga_ref = reference_solve(x, taps, grad_out, boundary, 1, reparam=False)
    # float64, taps at most 0.98 of the way to the boundary: cond(A) ≲ 1e4, errors ~1e-12 at worst.
    assert max(rel_err(y, y_ref), rel_err(gx, gx_ref), rel_err(ga, ga_ref)) < 1e-10


def test_forced_triton_rejects_unstable_raw_taps():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"backend='triton' needs taps with \|left\|\+\|right\| < 1"):
        autoregressive2d(x, torch.full((1, 1, 4), 0.6), reparam=False, backend="triton")


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(ar_solve_triton, "INTERPRETED", False)  # as if imported without TRITON_INTERPRET=1
    x = torch.randn(1, 2, 4, 4)
    for force in ({"backend": "triton"}, {}):
        if not force:
            monkeypatch.setenv("ARMA_PLUGIN_BACKEND", "triton")
        with pytest.raises(ValueError, match=r"backend='triton' cannot run on device=cpu.*" + re.escape(str(BACKENDS))):
            autoregressive2d(x, torch.zeros(2, 1, 4), **force)


def test_automatic_choice_on_cpu_is_not_triton():
    """Under the interpreter triton is correct but slow: CPU tensors never pick it by themselves."""
    assert resolve_backend(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 4), known_stable=True) != "triton"


@pytest.mark.parametrize("compiled, expected", [(True, "triton"), (False, "torch")])
def test_automatic_choice_for_cuda_tensors(compiled, expected, monkeypatch):
    """CUDA tensors (fake ones: no GPU here) get triton when its kernels are compiled, not
    interpreted; a forced backend still wins."""
    monkeypatch.setattr(ar_solve_triton, "INTERPRETED", not compiled)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(1, 2, 3, 3, device="cuda")
        taps = torch.empty(2, 1, 4, device="cuda")
        assert resolve_backend(x, taps, known_stable=True) == expected
        assert resolve_backend(x, taps, backend="torch", known_stable=True) == "torch"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_in_and_out(dtype):
    """Half input is loaded and stored as is, accumulated in float32: output, dX and the saved
    input keep the input dtype; values within the half format's rounding of the reference."""
    gen = torch.Generator().manual_seed(5)
    alpha = torch.randn(2, 2, 4, generator=gen)
    x = torch.randn(1, 2, 5, 6, generator=gen).to(dtype).requires_grad_()
    grad_out = torch.randn(1, 2, 5, 6, generator=gen).to(dtype)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = autoregressive2d(x, alpha.requires_grad_(), "zeros", backend="triton")
    gx, ga = torch.autograd.grad(y, (x, alpha), grad_out)
    y_ref, gx_ref, ga_ref = reference_solve(x.float(), alpha, grad_out.float(), "zeros", 1)
    assert y.dtype == gx.dtype == dtype and ga.dtype == torch.float32
    assert [t.dtype for t in saved if t.numel() == x.numel()] == [dtype]  # X itself, not a float32 copy
    # One rounding of the output to the half format (2^-8 for bfloat16, 2^-11 for float16,
    # relative to the largest entry), times 4 for the float32 solve of a half-rounded input
    # and gradient; the tap gradients are float32 sums of such products.
    tol = 4 * torch.finfo(dtype).eps
    assert rel_err(y, y_ref) <= tol and rel_err(gx, gx_ref) <= tol and rel_err(ga, ga_ref) <= tol


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_strided_inputs_without_a_layout_copy(boundary):
    """channels_last and a non-dense view give the same numbers as the contiguous input (the
    kernels take strides; the arithmetic does not depend on them), channels_last comes back."""
    gen = torch.Generator().manual_seed(6)
    alpha = torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)
    base = torch.randn(1, 2, 5, 12, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64)
    y, gx, ga = triton_solve(base[..., ::2].contiguous(), alpha, grad_out, boundary, 2)
    for x in (base[..., ::2].contiguous(memory_format=torch.channels_last), base[..., ::2]):
        ys, gxs, gas = triton_solve(x, alpha, grad_out, boundary, 2)
        # tap gradients: the same products, summed in another order across programs
        assert torch.equal(ys, y) and torch.equal(gxs, gx) and torch.allclose(gas, ga, rtol=1e-14, atol=0)
    cl = base[..., ::2].contiguous(memory_format=torch.channels_last)
    assert autoregressive2d(cl, alpha, boundary, backend="triton").is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("boundary, dtype, fused_elements, block", [
    ("zeros", torch.float64, FUSED, 4), ("circular", torch.float32, 32, 8),
    pytest.param("circular", torch.float64, 32, 4, marks=pytest.mark.slow),
    pytest.param("zeros", torch.float32, FUSED, 8, marks=pytest.mark.slow)],
    ids=["fused-fp64-zeros", "two-pass-fp32-circular", "two-pass-fp64-circular", "fused-fp32-zeros"])
def test_channels_last_programs_hold_channel_blocks(boundary, dtype, fused_elements, block):
    """channels_last: a program holds a sector's worth of channels (4 float64, 8 float32); 11
    channels leave a partial last block; Q = 2, d = 2. Values, dX and every channel's tap
    gradients equal the NCHW run's (the same arithmetic per channel) and match the reference."""
    gen = torch.Generator().manual_seed(9)
    alpha = torch.randn(11, 2, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 11, 5, 7, generator=gen, dtype=torch.float64).to(dtype)
    grad_out = torch.randn(1, 11, 5, 7, generator=gen, dtype=torch.float64).to(dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert ar_solve_triton.channel_block(x_cl) == block and ar_solve_triton.channel_block(x) == 1
    fused_elements = fused_elements or ar_solve_triton.Tiling().fused_elements
    y, gx, ga = triton_solve(x, alpha.to(dtype), grad_out, boundary, 2, fused_elements=fused_elements)
    y_cl, gx_cl, ga_cl = triton_solve(x_cl, alpha.to(dtype), grad_out.contiguous(memory_format=torch.channels_last),
                                      boundary, 2, fused_elements=fused_elements)
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(y_cl, y) and torch.equal(gx_cl, gx)
    # tap gradients: the same products, summed in another order across programs
    eps = EPS64 if dtype == torch.float64 else EPS32
    assert torch.allclose(ga_cl, ga, rtol=64 * eps, atol=64 * eps * ga.abs().max().item())
    y_ref, gx_ref, ga_ref = reference_solve(x.double(), alpha, grad_out.double(), boundary, 2)
    tol = 1e3 * eps * condition(ar_taps(alpha), 5, 7, boundary, 2)  # as check_against_reference
    assert rel_err(y_cl, y_ref) <= tol and rel_err(gx_cl, gx_ref) <= tol and rel_err(ga_cl, ga_ref) <= tol


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_inplace_op_on_output_keeps_gradients_right(boundary):
    """timm/SMP apply ReLU(inplace=True) right after a conv: backward must not need Y intact."""
    gen = torch.Generator().manual_seed(8)
    alpha = torch.randn(2, 1, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    autoregressive2d(x * 1.0, alpha, boundary, backend="triton").relu_().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    alpha_ref = alpha.detach().clone().requires_grad_()
    ar_solve_reference(x_ref, ar_taps(alpha_ref), boundary).relu().sum().backward()
    # float64, well-conditioned (alpha ~ N(0,1)): exact up to ~1e-15 relative.
    assert rel_err(x.grad, x_ref.grad) < 1e-11 and rel_err(alpha.grad, alpha_ref.grad) < 1e-11


@pytest.mark.parametrize("shape", [(1, 3, 3, 4), pytest.param((1, 8, 48, 48), marks=pytest.mark.slow)],
                         ids=["one-program", "two-pass-state"])
def test_compile_fullgraph_with_fake_tensors(monkeypatch, shape):
    """The custom op is opaque to torch.compile; its fake (meta) functions must give the real
    outputs' dtype and layout, also for channels_last bfloat16 (aot_eager traces both passes),
    and the state that a map in two passes returns and its backward takes."""
    monkeypatch.setenv("ARMA_PLUGIN_BACKEND", "triton")
    layer = AutoRegressive2d(shape[1], boundary="zeros")
    with torch.no_grad():
        layer.alpha.normal_()
    x = torch.randn(*shape).to(torch.bfloat16, memory_format=torch.channels_last).requires_grad_()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y_eager = layer(x)
    assert torch.equal(y, y_eager) and y.stride() == y_eager.stride() and y.dtype == torch.bfloat16
    y.float().sum().backward()
    grads = x.grad.clone(), layer.alpha.grad.clone()
    x.grad = layer.alpha.grad = None
    y_eager.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, grads[0]) and torch.equal(layer.alpha.grad, grads[1])


def test_gpu_check_smoke_run(tmp_path):
    """scripts/gpu_check.py --smoke: every section of the one-shot GPU run, on CPU at tiny sizes."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--smoke", "--json", str(tmp_path / "out.json")]) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["all_checks_ok"] and results["skipped"] == [] and results["errors"] == []
    assert {r["backend"] for r in results["correctness"]} >= {"triton", "torch"}
    assert [r["status"] for r in results["variants"]] == ["ok", "ok", "ok"]
    assert results["profile"] and all(r["calls"] >= 1 for r in results["profile"])
    assert {(r["boundary"], r["Q"]) for r in results["layer"]} == {("circular", 1), ("zeros", 1)}
    assert all(r["numba_ms"] > 0 and r["torch_ms"] > 0 and "triton_ms" not in r for r in results["layer"])
    assert [r["model"] for r in results["models"]] == ["resnet18"]
