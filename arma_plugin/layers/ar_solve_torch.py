"""Portable AR solve (torch ops only; CPU and GPU) with its Thm 4 backward.

``circular``: the factors are circulant and commute, so ``A^{-1}`` is one division by
the product of all factor spectra (``rfft2`` once, ``irfft2`` once). ``zeros``: the
operator is separable, ``A = A_H ⊗ A_W`` with ``A_H = F_1…F_Q`` (dense ``[C, n, n]``,
tridiagonal factors), so ``Y = A_H^{-1} X A_W^{-T}``: one batched matmul per axis.

Backward (Thm 4) from the saved input ``X`` only (``Y`` is recomputed; saving ``X`` keeps
in-place ops on the output, e.g. ``ReLU(inplace=True)``, legal): ``dX = A^{-T} dY`` and
the tap gradients ``dL/dA = -(Y ⋆ dX)`` restricted to the filter's taps, chained to the
factors.
"""
from __future__ import annotations

import math

import torch


def _axis_spectrum(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int,
                   onesided: bool) -> torch.Tensor:
    """Product over q of the factor spectra ``1 + right·e^{-iθk} + left·e^{iθk}``, ``[C, k]``."""
    k = torch.arange(n // 2 + 1 if onesided else n, device=left.device, dtype=left.dtype)
    theta = (2.0 * math.pi * dilation / n) * k
    cos, sin = torch.cos(theta), torch.sin(theta)
    re = 1.0 + (left + right)[..., None] * cos
    im = (left - right)[..., None] * sin
    return torch.complex(re, im).prod(dim=1)


def _spectrum(taps: torch.Tensor, h: int, w: int, dilation: int) -> torch.Tensor:
    """``D[C, H, W//2+1]``: spectrum of the whole composed AR filter."""
    f = _axis_spectrum(taps[..., 0], taps[..., 1], h, dilation, onesided=False)
    g = _axis_spectrum(taps[..., 2], taps[..., 3], w, dilation, onesided=True)
    return f[:, :, None] * g[:, None, :]


def _dense_factor(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int) -> torch.Tensor:
    """Zero-boundary factor ``I + right·S_{-d} + left·S_{+d}``, ``[C, n, n]``."""
    eye = torch.eye(n, dtype=left.dtype, device=left.device)
    back = torch.zeros_like(eye)
    rows = torch.arange(min(dilation, n), n, device=left.device)
    back[rows, rows - dilation] = 1.0
    fwd = back.transpose(0, 1)
    return eye + right[:, None, None] * back + left[:, None, None] * fwd


def _dense_factors(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int) -> list[torch.Tensor]:
    return [_dense_factor(left[:, q], right[:, q], n, dilation) for q in range(left.shape[1])]


def _product(mats: list[torch.Tensor], like: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.eye(n, dtype=like.dtype, device=like.device).expand(like.shape[0], n, n)
    for m in mats:
        out = out @ m
    return out


def torch_ar_solve(x: torch.Tensor, taps: torch.Tensor, boundary: str, dilation: int) -> torch.Tensor:
    """``Y = A^{-1} X`` for ``x`` ``[B, C, H, W]`` and ``taps`` ``[C, Q, 4]``."""
    h, w = x.shape[-2:]
    if boundary == "circular":
        return torch.fft.irfft2(torch.fft.rfft2(x) / _spectrum(taps, h, w, dilation), s=(h, w))
    m_h = torch.linalg.inv(_product(_dense_factors(taps[..., 0], taps[..., 1], h, dilation), taps, h))
    m_w = torch.linalg.inv(_product(_dense_factors(taps[..., 2], taps[..., 3], w, dilation), taps, w))
    return m_h @ x @ m_w.transpose(-1, -2)


def _poly(taps_lr: list[tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """Coefficients ``[C, 2K+1]`` (offsets ``-K..K`` in units of d) of a product of factors.

    Factor ``(left, right)`` is the filter ``left·z^{-1} + 1 + right·z`` where ``z`` shifts
    by ``+d`` (``right`` multiplies ``y[i-d]``).
    """
    out = torch.ones(like.shape[0], 1, dtype=like.dtype, device=like.device)
    for left, right in taps_lr:
        nxt = torch.zeros(out.shape[0], out.shape[1] + 2, dtype=out.dtype, device=out.device)
        nxt[:, :-2] += out * left[:, None]
        nxt[:, 1:-1] += out
        nxt[:, 2:] += out * right[:, None]
        out = nxt
    return out


def _factor_grads(left: torch.Tensor, right: torch.Tensor, grad_composed: torch.Tensor) -> torch.Tensor:
    """Chain ``dL/d(composed 1-D filter)`` ``[C, 2Q+1]`` to ``(dleft, dright)`` ``[C, Q, 2]``."""
    q_count = left.shape[1]
    grads = []
    for k in range(q_count):
        others = _poly([(left[:, j], right[:, j]) for j in range(q_count) if j != k], left)
        width = others.shape[1]
        grads.append(torch.stack(((grad_composed[:, :width] * others).sum(1),
                                  (grad_composed[:, 2:2 + width] * others).sum(1)), dim=-1))
    return torch.stack(grads, dim=1)


def _circular_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor,
                       dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    q_count = taps.shape[1]
    spectrum = _spectrum(taps, h, w, dilation)
    spec_dx = torch.fft.rfft2(grad_y) / spectrum.conj()
    grad_x = torch.fft.irfft2(spec_dx, s=(h, w))
    # corr[p, q] = Σ_b Σ_ij dX[i, j] Y[i-p, j-q]  (circular); dL/dA[p, q] = -corr[p, q].
    spec_y = torch.fft.rfft2(x) / spectrum
    corr = torch.fft.irfft2((spec_dx * spec_y.conj()).sum(0), s=(h, w))
    offsets = torch.arange(-q_count, q_count + 1, device=x.device) * dilation
    corr = corr[:, offsets % h][:, :, offsets % w]
    a_h = _poly([(taps[:, q, 0], taps[:, q, 1]) for q in range(q_count)], taps)
    a_w = _poly([(taps[:, q, 2], taps[:, q, 3]) for q in range(q_count)], taps)
    grad_a_h = -(corr * a_w[:, None, :]).sum(-1)
    grad_a_w = -(corr * a_h[:, :, None]).sum(-2)
    grad_taps = torch.cat((_factor_grads(taps[..., 0], taps[..., 1], grad_a_h),
                           _factor_grads(taps[..., 2], taps[..., 3], grad_a_w)), dim=-1)
    return grad_x, grad_taps


def _diag_grads(grad_factors: list[torch.Tensor], dilation: int) -> torch.Tensor:
    """``(dleft, dright)`` ``[C, Q, 2]`` from dense factor gradients (taps at offsets ±d)."""
    return torch.stack([torch.stack((torch.diagonal(g, dilation, -2, -1).sum(-1),
                                     torch.diagonal(g, -dilation, -2, -1).sum(-1)), dim=-1)
                        for g in grad_factors], dim=1)


def _chain_product(factors: list[torch.Tensor], grad_product: torch.Tensor) -> list[torch.Tensor]:
    """``dL/dM_k = (M_1…M_{k-1})^T dL/dP (M_{k+1}…M_Q)^T`` for ``P = M_1…M_Q``."""
    n = grad_product.shape[-1]
    grads = []
    for k in range(len(factors)):
        before = _product(factors[:k], grad_product, n)
        after = _product(factors[k + 1:], grad_product, n)
        grads.append(before.transpose(-1, -2) @ grad_product @ after.transpose(-1, -2))
    return grads


def _zeros_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor,
                    dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    f = _dense_factors(taps[..., 0], taps[..., 1], h, dilation)
    g = _dense_factors(taps[..., 2], taps[..., 3], w, dilation)
    m_h = torch.linalg.inv(_product(f, taps, h))
    m_w = torch.linalg.inv(_product(g, taps, w))
    y = m_h @ x @ m_w.transpose(-1, -2)
    # Y = A_H^{-1} X A_W^{-T}:  dL/dA_H = -(A_H^{-T} dY) Y^T,  dL/dA_W = -(dY A_W^{-1})^T Y.
    grad_y_h = m_h.transpose(-1, -2) @ grad_y
    grad_y_w = grad_y @ m_w
    grad_a_h = -torch.einsum("bchw,bckw->chk", grad_y_h, y)
    grad_a_w = -torch.einsum("bchw,bchk->cwk", grad_y_w, y)
    grad_x = m_h.transpose(-1, -2) @ grad_y_w
    grad_taps = torch.cat((_diag_grads(_chain_product(f, grad_a_h), dilation),
                           _diag_grads(_chain_product(g, grad_a_w), dilation)), dim=-1)
    return grad_x, grad_taps


def torch_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, boundary: str,
                            dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dtaps)`` of ``Y = A^{-1} X`` given ``dL/dY`` and the saved input ``X``."""
    x = x.contiguous()
    if boundary == "circular":
        return _circular_backward(grad_y, x, taps, dilation)
    return _zeros_backward(grad_y, x, taps, dilation)
