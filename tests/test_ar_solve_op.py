"""``torch.library.opcheck`` on the AR solve's custom ops: schema, fake (meta) kernels,
autograd registration and AOT dispatch, for every backend that runs on CPU."""
from __future__ import annotations

import pytest
import torch

import arma_plugin.layers.ar_solve_op  # noqa: F401  (registers torch.ops.arma_plugin.*)
from arma_plugin.layers import ar_taps
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
