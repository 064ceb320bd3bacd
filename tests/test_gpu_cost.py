"""The Triton AR solve's data flow meets its GPU cost targets, counted under Triton's
interpreter by scripts/gpu_cost.py (launches, traffic, sector efficiency, loads/stores per
program) for one layer's forward + backward, taps from ``alpha`` included.

Targets, per layer fwd+bwd: at most 8 launches, at most 8 T of traffic (T = one float32 copy
of x), sector efficiency at least 0.75, at most 32 load/store instructions per program; with
Q = 2 and 3 the same launches and at most 1 T more per extra factor. 16×16 maps keep the
interpreter fast and run the one-program plan of NCHW maps up to 64²: one plane per program
for NCHW (1×2×16×16), a sector's worth of channels per program for channels_last
(1×16×16×16: 8 float32 or 16 bfloat16 channels, lanes across C). float32 NCHW planes up to
128² are walked by one program each (asserted at 128²: 7 T); larger maps, bfloat16 ones and
channels_last blocks take two passes, whose traffic floors (10 T in float32, 7.5 T in
bfloat16) are asserted at 33×33.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the cost model runs Triton's interpreter")

from arma_plugin.layers import ar_solve_triton  # noqa: E402

if not ar_solve_triton.INTERPRETED:
    pytest.skip("the cost model needs the kernels interpreted (TRITON_INTERPRET=1, set by conftest.py)",
                allow_module_level=True)

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "gpu_cost.py"
_SPEC = importlib.util.spec_from_file_location("gpu_cost", _PATH)
gpu_cost = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_cost)

SHAPES = {"nchw": (1, 2, 16, 16), "channels_last": (1, 16, 16, 16)}


@functools.lru_cache(maxsize=None)
def _cost(dtype, layout, boundary, q=1, dilation=1):
    return gpu_cost.layer_cost("new", SHAPES[layout], dtype, layout, boundary, q, dilation)


# Each dtype, layout and boundary appears twice (~8 s per row under the interpreter).
@pytest.mark.parametrize("boundary, dtype, layout", [
    ("zeros", torch.float32, "nchw"), ("circular", torch.bfloat16, "nchw"),
    ("circular", torch.float32, "channels_last"), ("zeros", torch.bfloat16, "channels_last")],
    ids=["zeros-fp32-nchw", "circular-bf16-nchw", "circular-fp32-channels_last", "zeros-bf16-channels_last"])
def test_cost_targets(boundary, dtype, layout):
    row = _cost(dtype, layout, boundary)
    assert row["launches"] <= 8 and row["torch_ops"] == []
    assert row["traffic_T"] <= 8
    assert row["ldst_per_program"] <= 32
    assert row["sector_efficiency"] >= 0.75


@pytest.mark.parametrize("q, boundary", [pytest.param(2, "circular", marks=pytest.mark.slow), (3, "zeros")])
def test_more_factors_same_launches_little_traffic(q, boundary):
    """Q = 2, 3 (with dilation 2) solve every factor in the same programs."""
    base = _cost(torch.float32, "nchw", boundary)
    row = _cost(torch.float32, "nchw", boundary, q=q, dilation=2)
    assert row["launches"] == base["launches"]
    assert row["traffic_T"] <= base["traffic_T"] + (q - 1)
    assert row["sector_efficiency"] >= 0.75 and row["ldst_per_program"] <= 32


def test_the_counter_sees_strided_sweeps():
    """The model can fail: a load of one element per row (W-axis lines, one lane per row, as a
    sequential sweep along W does) uses 4 of every 32 bytes, and each torch op is a launch."""
    import triton
    import triton.language as tl

    @triton.jit
    def column_load(src, dst, stride, BLOCK: tl.constexpr):
        rows = tl.arange(0, BLOCK)
        tl.store(dst + rows, tl.load(src + rows * stride))

    x = torch.randn(64, 64)
    out = torch.empty(64)
    with gpu_cost.CostCounter() as counter:
        column_load[(1,)](x, out, x.stride(0), BLOCK=64)
        torch.tanh(x)
    row = counter.summary(x.numel() * 4)
    assert row["launches"] == 2 and row["triton_launches"] == 1 and row["torch_ops"] == ["tanh"]
    # load: 64 lanes, 64 sectors (4 of 32 bytes used); store: 64 contiguous floats, 8 sectors
    assert row["sector_efficiency"] == pytest.approx((64 * 4 + 64 * 4) / ((64 + 8) * 32))
    assert row["ldst_per_program"] == 2


# (dtype, channels: a sector's worth, traffic in T without the tap-gradient partial sums)
# float32: forward X → state → Y (4 T), backward W pass dY + state → gradient buffer (3 T), H pass
# gradient buffer + state → dX (3 T). bfloat16: X, Y, dY and dX are 0.5 T each and the H pass
# reads X (0.5 T) instead of the float32 state (1 T): 3 T + 2.5 T + 2 T.
@pytest.mark.parametrize("dtype, channels, floor", [(torch.float32, 8, 10.0), (torch.bfloat16, 16, 7.5)],
                         ids=["float32", "bfloat16"])
def test_two_pass_maps_start_the_backward_from_the_forward_state(dtype, channels, floor):
    """A sector's worth of channels_last channels of 33² (as a 128² NCHW plane) is more than
    one program holds: two passes, one per axis. The backward starts from the forward's
    first-pass output (and, for bfloat16, X): 5 launches, where recomputing that state would
    take 6 launches and 2 T more."""
    row = gpu_cost.layer_cost("new", (1, channels, 33, 33), dtype, "channels_last", "zeros", 1, 1)
    assert row["launches"] == 5 and row["torch_ops"] == []
    assert floor <= row["traffic_T"] <= floor + 0.2  # + the partial sums: 2·B·C·(programs per channel)·4 floats
    assert row["sector_efficiency"] >= 0.75 and row["ldst_per_program"] <= 32


# float32 forward: X in, Y out, Y's buffer holding the H factors' output between the walk's
# phases (3 T); backward: X and dY in, dX's buffer holding the H factors' output and then
# the W factors' input gradient, dX out (4 T). Re-reads of what a launch already touched are
# not counted again (they hit L2: a 128² plane is 64 KB a tensor).
def test_walked_128_plane_meets_the_targets_in_float32():
    """A float32 128² NCHW plane is walked by one program in each direction: 3 launches
    (forward, backward, tap sums), 7 T, and the backward's tiles keep it within 32 loads and
    stores per program (its first solve in 2 tiles of 8192 elements, its gradients in 4 of
    4096 along each axis, the taps and the partial sums: 4 + 12 + 12 + 2)."""
    row = gpu_cost.layer_cost("new", (1, 1, 128, 128), torch.float32, "nchw", "zeros", 1, 1)
    assert row["launches"] == 3 and row["torch_ops"] == []
    assert 7.0 <= row["traffic_T"] <= 7.05  # + the partial sums and the taps
    assert row["sector_efficiency"] >= 0.95 and row["ldst_per_program"] == 30


@pytest.mark.parametrize("q, dilation", [(3, 2), pytest.param(2, 1, marks=pytest.mark.slow)])
def test_walked_planes_more_factors_same_launches_little_traffic(q, dilation):
    """A walked float32 64×80 plane: Q = 2, 3 solve every factor in the same programs, in
    smaller tiles (more loads and stores, the same bytes)."""
    base = gpu_cost.layer_cost("new", (1, 1, 64, 80), torch.float32, "nchw", "circular", 1, 1)
    row = gpu_cost.layer_cost("new", (1, 1, 64, 80), torch.float32, "nchw", "circular", q, dilation)
    assert base["launches"] == row["launches"] == 3
    assert base["traffic_T"] <= 7.05 and row["traffic_T"] <= base["traffic_T"] + (q - 1)
    assert row["sector_efficiency"] >= 0.75
