"""The triton backend's functions against the dense float64 reference, for the tests that run
its kernels under Triton's interpreter (import after ``pytest.importorskip("triton")``)."""
from __future__ import annotations

import torch

from arma_plugin.layers import ar_taps, autoregressive2d
from arma_plugin.layers import ar_solve_triton
from arma_plugin.reference import ar_solve_reference
from solve_checks import EPS32, EPS64, condition, rel_err

FUSED = None  # the default plan: one program per plane for small maps


def reference_solve(x, alpha, grad_out, boundary, dilation, reparam=True):
    """``(y, dx, dalpha)`` by plain autograd through the dense float64 solve."""
    x_ref = x.detach().double().requires_grad_()
    alpha_ref = alpha.detach().double().requires_grad_()
    y = ar_solve_reference(x_ref, ar_taps(alpha_ref, reparam), boundary, dilation)
    gx, ga = torch.autograd.grad(y, (x_ref, alpha_ref), grad_out.double(), allow_unused=True)
    return y.detach(), gx, torch.zeros_like(alpha_ref) if ga is None else ga  # 1×1 zeros: A = I


def triton_solve(x, alpha, grad_out, boundary, dilation, reparam=True, fused_elements=FUSED, line_elements=4096,
                 pass_elements=16, walk_elements=0):
    """``(y, dx, dalpha)`` through the layer's function, or with ``fused_elements`` through the
    backend's functions with that plan (``pass_elements``, 16 by default: several programs per
    plane, or several tiles per phase of a walk; no walk unless ``walk_elements``); a two-pass
    plan's backward from the forward's state equals its backward from X."""
    if fused_elements is not None:
        tiling = ar_solve_triton.Tiling(fused_elements=fused_elements, walk_elements=walk_elements,
                                        walk_solve_elements=pass_elements, pass_elements=pass_elements,
                                        line_positions=line_elements,
                                        line_elements=line_elements, chunk_elements=line_elements)
        y, state = ar_solve_triton.triton_ar_solve(x, alpha, boundary, reparam, dilation, tiling)
        grads = ar_solve_triton.triton_ar_solve_backward(grad_out, x, alpha, boundary, reparam, dilation,
                                                         tiling=tiling)
        if state is not None:
            for saved in ((None, state), (x, state)):
                from_state = ar_solve_triton.triton_ar_solve_backward(grad_out, *saved[:1], alpha, boundary, reparam,
                                                                      dilation, saved[1], tiling)
                assert all(torch.equal(a, b) for a, b in zip(from_state, grads))
        return (y, *grads)
    x = x.detach().requires_grad_()
    alpha = alpha.detach().requires_grad_()
    y = autoregressive2d(x, alpha, boundary, reparam=reparam, dilation=dilation, backend="triton")
    gx, ga = torch.autograd.grad(y, (x, alpha), grad_out)
    return y, gx, ga


def check_against_reference(boundary, q, dilation, size, fused_elements, dtype, scale, line_elements=4096,
                            memory_format=torch.contiguous_format, pass_elements=16, walk_elements=0):
    h, w = size
    gen = torch.Generator().manual_seed(1000 * q + 10 * dilation + h)
    alpha = scale * torch.randn(2, q, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 2, h, w, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(2, 2, h, w, generator=gen, dtype=torch.float64)
    y, gx, ga = triton_solve(x.to(dtype, memory_format=memory_format), alpha.to(dtype), grad_out.to(dtype), boundary,
                             dilation, fused_elements=fused_elements, line_elements=line_elements,
                             pass_elements=pass_elements, walk_elements=walk_elements)
    y_ref, gx_ref, ga_ref = reference_solve(x, alpha, grad_out, boundary, dilation)
    # Backward-stable solves: relative error ≲ c·eps·cond(A); c = 1e3 covers the O(n) growth
    # of the reference's own LU error at n ≤ 40, the gradient's second solve and the tap
    # sums over B·H·W products.
    eps = EPS64 if dtype == torch.float64 else EPS32
    tol = 1e3 * eps * condition(ar_taps(alpha), h, w, boundary, dilation)
    assert y.dtype == gx.dtype == ga.dtype == dtype
    assert rel_err(y, y_ref) <= tol
    assert rel_err(gx, gx_ref) <= tol
    assert (ga.double() - ga_ref).abs().max() <= tol * max(ga_ref.abs().max().item(), 1.0)
