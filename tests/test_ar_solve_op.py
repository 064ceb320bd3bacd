"""``torch.library.opcheck`` on the AR solve's custom ops: schema, fake (meta) kernels,
autograd registration and AOT dispatch, for every backend that runs on CPU."""
from __future__ import annotations

import pytest
import torch

import arma_plugin.layers.ar_solve_op  # noqa: F401  (registers torch.ops.arma_plugin.*)
from arma_plugin.layers import ar_taps
from arma_plugin.layers.ar_taps import ar_taps_backward
from arma_plugin.layers.ar_solve_op import numba_available, triton_runs_on

# One entry per backend; a backend that cannot run here is skipped with its reason. On CPU,
# triton runs in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py): ~10 s per
# opcheck, so its cases are `-m slow`.
BACKENDS = [
    "torch",
    pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba missing")),
    pytest.param("triton", marks=[pytest.mark.slow, pytest.mark.skipif(
        not triton_runs_on(torch.device("cpu")), reason="triton kernels need CUDA or TRITON_INTERPRET=1")]),
]
BOUNDARIES = ["circular", "zeros"]


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(3, 2, 4, generator=gen, dtype=dtype)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=dtype)
    grad_y = torch.randn(2, 3, 5, 6, generator=gen, dtype=dtype)
    return x, alpha, grad_y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reparam", [True, False])
def test_opcheck_ar_solve(backend, boundary, dtype, reparam):
    x, alpha, _ = _inputs(dtype)
    if not reparam:
        alpha = ar_taps(alpha)  # raw taps inside the stable region
    torch.library.opcheck(torch.ops.arma_plugin.ar_solve.default,
                          (x.requires_grad_(), alpha.requires_grad_(), boundary, reparam, 2, backend))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_ar_solve_backward(backend, boundary, dtype):
    x, alpha, grad_y = _inputs(dtype)
    torch.library.opcheck(torch.ops.arma_plugin.ar_solve_backward.default,
                          (grad_y, x, alpha, boundary, True, 1, backend))


@pytest.mark.slow
@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="triton kernels need CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_ar_solve_backward_from_a_state(dtype):
    """A map solved in two passes (8 channels_last channels of 48×48): the backward from the
    state alone, and from the state and X (what autograd keeps for half input)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 48, 48, generator=gen).to(dtype, memory_format=torch.channels_last)
    alpha = torch.randn(8, 1, 4, generator=gen)
    state = torch.ops.arma_plugin.ar_solve(x, alpha, "zeros", True, 1, "triton")[1]
    assert state.numel() == x.numel()
    for saved_x in (None, x):
        torch.library.opcheck(torch.ops.arma_plugin.ar_solve_backward.default,
                              (torch.randn_like(x), saved_x, alpha, "zeros", True, 1, "triton", state))


@pytest.mark.parametrize("backend", BACKENDS[:2])
def test_dtype_layout_and_empty_rules_hold_for_every_backend(backend):
    """One set of rules in the op: the output and dX keep x's dtype and layout (half input is
    solved in float32), d alpha keeps alpha's dtype, an empty batch solves nothing."""
    gen = torch.Generator().manual_seed(1)
    alpha = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 5, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last)
    op = torch.ops.arma_plugin.ar_solve
    y, state = op(x, alpha, "zeros", True, 1, backend)
    assert y.dtype == torch.bfloat16 and y.stride() == x.stride() and state.numel() == 0
    y32 = op(x.float().contiguous(), alpha, "zeros", True, 1, backend)[0]
    # one bfloat16 rounding of the float32 result (2^-8 relative to the largest entry)
    assert (y.float() - y32).abs().max() <= 2 ** -8 * y32.abs().max()
    grad_x, grad_alpha = torch.ops.arma_plugin.ar_solve_backward(torch.ones_like(x), x, alpha, "zeros", True, 1,
                                                                 backend)
    assert grad_x.dtype == torch.bfloat16 and grad_x.stride() == x.stride() and grad_alpha.dtype == torch.float64
    empty = x[:0]
    assert op(empty, alpha, "circular", True, 1, backend)[0].shape == empty.shape
    grad_x, grad_alpha = torch.ops.arma_plugin.ar_solve_backward(empty, empty, alpha, "circular", True, 1, backend)
    assert grad_x.shape == empty.shape and torch.equal(grad_alpha, torch.zeros_like(alpha))


def test_tap_chain_rule_matches_autograd():
    """ar_taps_backward (the formula the Triton kernels evaluate) is autograd's chain rule of
    ar_taps, the tanh cap's flat part included (|alpha| > 5.9: zero gradient)."""
    gen = torch.Generator().manual_seed(2)
    alpha = torch.randn(4, 3, 4, generator=gen, dtype=torch.float64) * 3
    alpha[0, 0, 0] = 12.0  # beyond the cap
    grad_taps = torch.randn(4, 3, 4, generator=gen, dtype=torch.float64)
    for reparam in (True, False):
        a = alpha.clone().requires_grad_()
        (expected,) = torch.autograd.grad(ar_taps(a, reparam), a, grad_taps)
        # float64, a few operations: agreement to rounding
        assert torch.allclose(ar_taps_backward(alpha, grad_taps, reparam), expected, rtol=1e-12, atol=1e-15)
    assert ar_taps_backward(alpha, grad_taps)[0, 0, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS[:2])
def test_only_triton_has_a_state(backend):
    x, alpha, grad_y = _inputs(torch.float32)
    with pytest.raises(ValueError, match="state needs backend='triton'"):
        torch.ops.arma_plugin.ar_solve_backward(grad_y, x, alpha, "zeros", True, 1, backend, x.float())


def test_backward_needs_x_or_state():
    x, alpha, grad_y = _inputs(torch.float32)
    with pytest.raises(ValueError, match="needs x .* state, or both; got neither"):
        torch.ops.arma_plugin.ar_solve_backward(grad_y, None, alpha, "zeros", True, 1, "torch")
