"""The triton backend's plans, run by Triton's interpreter on CPU tensors: which maps take one
program, a walk, two passes or lines in chunks, what each keeps for the backward, and each
against the dense float64 reference (``TRITON_INTERPRET=1``: ``conftest.py``)."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip("triton", reason="the triton backend needs Triton (it ships with the torch wheel)")

from arma_plugin.layers import ar_taps, autoregressive2d  # noqa: E402
from arma_plugin.layers import ar_solve_triton  # noqa: E402
from arma_plugin.reference import ar_solve_reference  # noqa: E402
from solve_checks import EPS32, condition, rel_err  # noqa: E402
from triton_solve_checks import check_against_reference, reference_solve  # noqa: E402

if not ar_solve_triton.INTERPRETED:
    pytest.skip("these tests run the Triton kernels on CPU tensors and need TRITON_INTERPRET=1 "
                "(conftest.py sets it unless the environment sets it otherwise)", allow_module_level=True)

BOUNDARIES = ["circular", "zeros"]


# (Q, dilation, H×W): maps walked by one program per plane (its H tiles, then its W tiles,
# through a buffer) with 16-element tiles: several tiles per phase, partial last tiles,
# chains of different lengths (d = 3).
WALK_CASES = [(1, 1, (6, 9)), (2, 2, (17, 12)), (3, 3, (7, 10))]


@pytest.mark.parametrize("boundary, case", [
    ("circular", WALK_CASES[1]), ("zeros", WALK_CASES[0]),
    *[pytest.param(boundary, case, marks=pytest.mark.slow) for boundary, case in itertools.product(
        BOUNDARIES, WALK_CASES) if (boundary, case) not in {("circular", WALK_CASES[1]), ("zeros", WALK_CASES[0])}]],
    ids=lambda v: v if isinstance(v, str) else "Q{}-d{}-{}x{}".format(v[0], v[1], *v[2]))
def test_walked_planes_match_dense_reference(boundary, case):
    """One program per plane, three phases behind barriers in the backward (the H factors'
    output into the buffer, the W factors' backward over it in place, the H factors' backward
    into dX): float32 (walks are float32 only) against the dense float64 reference."""
    check_against_reference(boundary, *case, 8, torch.float32, 1.0, walk_elements=1 << 20)


def test_default_plan_walks_float32_planes_too_large_for_registers():
    """The default plan walks a float32 64×80 map (5120 elements: more than one program's
    registers hold, within the walk's limit; output and dX serve as the walk's buffer): X is
    all autograd keeps, values and gradients as the reference's. The bfloat16 map, whose two
    passes already move less (X, Y, dY and dX at half the bytes), takes two passes."""
    gen = torch.Generator().manual_seed(11)
    alpha = torch.randn(2, 1, 4, generator=gen)
    x = torch.randn(1, 2, 64, 80, generator=gen)
    grad_out = torch.randn(1, 2, 64, 80, generator=gen)
    (step,) = ar_solve_triton._plan_for(x, "zeros", 1, 1, ar_solve_triton.Tiling())
    assert isinstance(step, ar_solve_triton._Walk) and not ar_solve_triton.keeps_state(x, "zeros", 1, 1)
    assert ar_solve_triton.keeps_state(x.bfloat16(), "zeros", 1, 1)
    x_leaf = x.clone().requires_grad_()
    alpha_leaf = alpha.clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = autoregressive2d(x_leaf, alpha_leaf, "zeros", backend="triton")
    assert [t is x_leaf for t in saved if t.shape == x.shape] == [True]
    gx, ga = torch.autograd.grad(y, (x_leaf, alpha_leaf), grad_out)
    y_ref, gx_ref, ga_ref = reference_solve(x.double(), alpha.double(), grad_out.double(), "zeros", 1)
    tol = 1e3 * EPS32 * condition(ar_taps(alpha.double()), 64, 80, "zeros", 1)  # as check_against_reference
    assert rel_err(y, y_ref) <= tol and rel_err(gx, gx_ref) <= tol and rel_err(ga, ga_ref) <= tol


@pytest.mark.slow
@pytest.mark.parametrize("size, line_elements", [((3, 2048), 4096), ((2048, 3), 4096), ((3, 2048), 256)],
                         ids=["3x2048", "2048x3", "3x2048-chunks"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_lines_longer_than_a_fused_plane(boundary, size, line_elements):
    """2048-long lines: the two-pass plan, whole lines per program, or in chunks of 128 positions
    of each of the two chains (float64, Q = 2, d = 2; the default 4096 elements per pass, as
    16 would take thousands of programs in the interpreter)."""
    check_against_reference(boundary, 2, 2, size, 4096, torch.float64, 1.0, line_elements, pass_elements=4096)


# (Q, dilation, H×W, memory format): lines walked in chunks of 8 elements (line_elements=8):
# several chunks per chain, a partial last chunk, chains of different lengths (d = 3 and 29),
# lines along H and along W, and both axes in chunks (channels_last: 2 channels per program).
CHUNKED_CASES = [(1, 1, (2, 37), torch.contiguous_format), (2, 2, (37, 5), torch.contiguous_format),
                 (3, 3, (4, 29), torch.contiguous_format), (2, 1, (5, 11), torch.channels_last)]


@pytest.mark.parametrize("boundary, case", [
    ("circular", CHUNKED_CASES[0]), ("zeros", CHUNKED_CASES[3]),
    *[pytest.param(boundary, case, marks=pytest.mark.slow) for boundary, case in itertools.product(
        BOUNDARIES, CHUNKED_CASES) if (boundary, case) not in {("circular", CHUNKED_CASES[0]),
                                                               ("zeros", CHUNKED_CASES[3])}]],
    ids=lambda v: v if isinstance(v, str) else "Q{}-d{}-{}x{}-{}".format(v[0], v[1], *v[2], str(v[3])[6:]))
def test_lines_in_chunks_with_a_carried_state(boundary, case):
    """Lines longer than ``line_elements``: two sweeps per factor over the chunks, the carries
    and the boundary terms exact (float64 against the dense reference; the backward from the
    forward's state and from X agree)."""
    q, dilation, size, memory_format = case
    check_against_reference(boundary, q, dilation, size, 8, torch.float64, 3.0, 8, memory_format)


@pytest.mark.parametrize("shape, channels, dtype, q, plan, warps", [
    ((64, 64), 1, torch.float32, 1, "one program", 8), ((64, 128), 1, torch.float32, 1, "walk", 8),
    ((128, 128), 1, torch.float32, 2, "walk", 8), ((128, 128), 1, torch.bfloat16, 1, "two passes", 8),
    ((128, 256), 1, torch.float32, 1, "two passes", 8), ((64, 64), 1, torch.float32, 3, "walk", 8),
    ((32, 64), 1, torch.float32, 3, "one program", 8), ((128, 128), 1, torch.float64, 1, "two passes", 8),
    ((64, 128), 1, torch.float64, 1, "two passes", 8), ((32, 64), 1, torch.float64, 1, "one program", 8),
    ((32, 64), 8, torch.float32, 1, "two passes", 8)])
def test_default_plan_keeps_tiles_within_registers(shape, channels, dtype, q, plan, warps):
    """One program per map up to 4096 float32 elements (2048 when an element weighs twice:
    float64, or Q > 2), about 64 bytes of weight per thread: the sizes whose sm_90 binaries
    do not spill (docs/benchmarks.md). float32 NCHW planes up to 64 KB (16384 elements): one
    program walking its plane, whose re-reads stay in L2, in tiles of the passes' size (halved
    at Q = 2, quartered from Q = 3), its first solve in tiles twice as wide. Larger maps,
    channels_last blocks, bfloat16 and float64: one pass per axis. A walk and a float64 tile
    may take the SM's whole register file."""
    x = torch.empty(1, channels, *shape, dtype=dtype)
    if channels > 1:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = ar_solve_triton._plan_for(x, "zeros", 1, q, ar_solve_triton.Tiling())
    kinds = {"one program": [ar_solve_triton._Pass], "walk": [ar_solve_triton._Walk],
             "two passes": [ar_solve_triton._Pass] * 2}
    assert [type(step) for step in steps] == kinds[plan]
    accumulation_bytes = dtype.itemsize if dtype == torch.float64 else 4
    weight = (ar_solve_triton.walk_weight(q) if plan == "walk"
              else ar_solve_triton.register_weight(accumulation_bytes, q))
    options = [ar_solve_triton.launch_options(step, q, accumulation_bytes) for step in steps]
    assert [o["num_warps"] for o in options] == [warps] * len(steps)
    # a walk and float64 may take the register file of one program per SM, others what ptxas chooses
    registers = min(65536 // (32 * warps), 255) if plan == "walk" or dtype == torch.float64 else None
    assert [o.get("maxnreg") for o in options] == [registers] * len(steps)
    assert all(step.elements() * weight <= warps * 32 * 64 for step in steps)
    if plan == "walk":
        (walk,) = steps
        assert walk.solve_h.elements() == 2 * walk.pass_h.elements()


def test_chunked_lines_may_take_a_programs_registers():
    """Lines in chunks get ``maxnreg`` (on sm_80 ptxas held them at 168 registers and spilled
    16-24 B), tiles of whole float32-accumulated lines leave the choice to ptxas."""
    steps = ar_solve_triton._plan_for(torch.empty(1, 1, 3, 2048), "zeros", 1, 1, ar_solve_triton.Tiling())
    assert [type(step) for step in steps] == [ar_solve_triton._Pass, ar_solve_triton._ChunkedPass]
    whole, chunked = (ar_solve_triton.launch_options(step, 1, 4) for step in steps)
    assert "maxnreg" not in whole and chunked["maxnreg"] == min(65536 // (32 * chunked["num_warps"]), 255)

@pytest.mark.parametrize("capability", [(8, 0), (10, 0), (12, 0)])
@pytest.mark.parametrize("q", [1, 2, 3])
def test_walk_tiles_halve_off_sm_90(capability, q):
    """Walk tiles are sized on sm_90; elsewhere a 128² walk's backward spilled at those sizes
    (docs/benchmarks.md), so other devices walk the same plane in tiles of half the elements
    with the same warps: each thread holds half as many."""
    sm_90 = ar_solve_triton.walk_weight(q, (9, 0))
    other = ar_solve_triton.walk_weight(q, capability)
    assert sm_90 == ar_solve_triton.walk_weight(q) and other == 2 * sm_90
    tiling = ar_solve_triton.Tiling()
    (walk_90,), (walk_other,) = (ar_solve_triton._plan(128, 128, 1, False, 1, 8, tiling, 4, weight)
                                 for weight in (sm_90, other))
    for step in ("pass_h", "pass_w", "solve_h"):
        assert getattr(walk_other, step).elements() * 2 == getattr(walk_90, step).elements()
    assert (ar_solve_triton.launch_options(walk_other, q, 4) == ar_solve_triton.launch_options(walk_90, q, 4)
            == dict(num_warps=8, maxnreg=255))


@pytest.mark.parametrize("dtype, boundary", [(torch.bfloat16, "zeros"), (torch.float32, "circular")])
def test_two_pass_solves_save_their_state(dtype, boundary):
    """A map too large for one program or a walk (8 channels_last channels of 48×48 at the
    default limits): autograd saves the first pass's output (float32, x's layout), and X only when X is
    narrower (its H pass then reads X at half the bytes); the fake kernel predicts the state,
    and the backward gives the reference's gradients even after an in-place ReLU on Y."""
    gen = torch.Generator().manual_seed(10)
    alpha = torch.randn(8, 1, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 8, 48, 48, generator=gen).to(dtype, memory_format=torch.channels_last)
    assert ar_solve_triton.keeps_state(x, boundary, 1, alpha.shape[1])
    saved = []
    x_leaf = x.clone().requires_grad_()
    alpha_leaf = alpha.float().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = autoregressive2d(x_leaf, alpha_leaf, boundary, backend="triton")
    (state,) = [t for t in saved if t.shape == x.shape and t.dtype == torch.float32 and t is not x_leaf]
    assert state.stride() == x.stride() and state.data_ptr() != x_leaf.data_ptr()
    assert [t is x_leaf for t in saved if t.shape == x.shape] == ([True, False] if dtype == torch.bfloat16 else [False])
    fake_mode = FakeTensorMode()
    fake_x, fake_alpha = fake_mode.from_tensor(x), fake_mode.from_tensor(alpha.float())
    with fake_mode:
        fake = torch.ops.arma_plugin.ar_solve(fake_x, fake_alpha, boundary, True, 1, "triton")[1]
    assert (fake.shape, fake.dtype, fake.stride()) == (state.shape, state.dtype, state.stride())
    mask = torch.randn(x.shape, generator=gen)
    (y.relu_().float() * mask).sum().backward()
    x_ref = x.double().requires_grad_()
    alpha_ref = alpha.clone().requires_grad_()
    (ar_solve_reference(x_ref, ar_taps(alpha_ref), boundary).relu() * mask).sum().backward()
    # float32 solves of a half-rounded input; dX is rounded once to the input's format
    tol = 4 * (torch.finfo(dtype).eps if dtype != torch.float32 else EPS32 * 1e2)
    assert rel_err(x_leaf.grad, x_ref.grad) <= tol and rel_err(alpha_leaf.grad, alpha_ref.grad) <= tol


def test_backward_names_what_it_was_given_wrongly():
    x = torch.randn(1, 2, 3, 4)
    alpha = torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="needs x .*, state, or both; got neither"):
        ar_solve_triton.triton_ar_solve_backward(torch.ones_like(x), None, alpha, "zeros", True, 1)
    with pytest.raises(ValueError, match="state was given, but this map is solved in one pass"):
        ar_solve_triton.triton_ar_solve_backward(torch.ones_like(x), x, alpha, "zeros", True, 1, state=x.clone())
