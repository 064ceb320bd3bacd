"""Portable AR solve (torch ops only; CPU and GPU) with its Thm 4 backward.

``circular``: the factors are circulant and commute, so ``A^{-1}`` is one division by
the product of all factor spectra (``rfft2`` once, ``irfft2`` once). ``zeros``: the
operator is separable, ``A = A_H ⊗ A_W`` with ``A_H = F_1…F_Q`` (tridiagonal factors), so
``Y = A_H^{-1} X A_W^{-T}``: one batched matmul per axis with the dense ``[C, n, n]``
inverse of ``F_1…F_Q``.

Backward (Thm 4) from the saved input ``X`` only (``Y`` is recomputed; saving ``X`` keeps
in-place ops on the output, e.g. ``ReLU(inplace=True)``, legal): ``dX = A^{-T} dY`` and
``dL/dM_k = -U_k Z_k^T`` for every factor ``M_k`` of an axis operator ``M_1…M_Q``, where
``Z_k = M_k^{-1}…M_1^{-1} T`` is the state after factor ``k`` and
``U_k = M_k^{-T}…M_Q^{-T} dY`` the gradient arriving at it; a tap's gradient is the sum
over its diagonal. Each factor's gradient is formed from its own state and never by
splitting the gradient of the composed filter, which cancels catastrophically for
Q ≥ 2 near the stable boundary (float32 relative errors up to 3e0 at Q = 3). For the
circular boundary the same quantity is one sum over the spectrum per factor:
``dL/dright_k = -(1/HW) Re Σ conj(dX̂) X̂ e^{-iθ} / F̂_k`` (``e^{+iθ}`` for ``left``).
"""
from __future__ import annotations

import math

import torch


def _phase(n: int, dilation: int, onesided: bool, like: torch.Tensor) -> torch.Tensor:
    """``e^{iθk}``, ``θ = 2π·dilation/n``, for the (one-sided) DFT bins ``k`` of length ``n``."""
    k = torch.arange(n // 2 + 1 if onesided else n, device=like.device, dtype=like.dtype)
    theta = (2.0 * math.pi * dilation / n) * k
    return torch.complex(torch.cos(theta), torch.sin(theta))


def _factor_spectra(left: torch.Tensor, right: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``[C, Q, k]`` symbols ``1 + right·e^{-iθk} + left·e^{iθk}`` of every factor."""
    re = 1.0 + (left + right)[..., None] * phase.real
    im = (left - right)[..., None] * phase.imag
    return torch.complex(re, im)


def _circular_spectra(taps: torch.Tensor, h: int, w: int, dilation: int) -> tuple[torch.Tensor, ...]:
    """Phases and factor symbols along H (full) and W (one-sided), and the composed ``D``."""
    phase_h = _phase(h, dilation, False, taps)
    phase_w = _phase(w, dilation, True, taps)
    f = _factor_spectra(taps[..., 0], taps[..., 1], phase_h)
    g = _factor_spectra(taps[..., 2], taps[..., 3], phase_w)
    spectrum = f.prod(dim=1)[:, :, None] * g.prod(dim=1)[:, None, :]
    return phase_h, f, phase_w, g, spectrum


def _dense_factor(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int) -> torch.Tensor:
    """Zero-boundary factor ``I + right·S_{-d} + left·S_{+d}``, ``[C, n, n]``."""
    eye = torch.eye(n, dtype=left.dtype, device=left.device)
    back = torch.zeros_like(eye)
    rows = torch.arange(min(dilation, n), n, device=left.device)
    back[rows, rows - dilation] = 1.0
    fwd = back.transpose(0, 1)
    return eye + right[:, None, None] * back + left[:, None, None] * fwd


def _inverse(m: torch.Tensor) -> torch.Tensor:
    """``m^{-1}`` with subnormal entries set to zero. The inverse of a banded factor decays
    geometrically away from its diagonal into the subnormal range, where CPU matmuls slow
    down severalfold; such entries are far below the resolution of the O(1) diagonal.

    On CPU the ``[C, n, n]`` batch is inverted one matrix at a time: the batched LU of the
    MKL that torch 2.14's wheels ship never returns (after "oneMKL ERROR: Parameter 6 was
    incorrect on entry to SLASWP") for two or more matrices of size >= 160 with more than one
    thread; one matrix at a time is unaffected at every size."""
    inv = torch.stack([torch.linalg.inv(one) for one in m]) if m.device.type == "cpu" else torch.linalg.inv(m)
    return inv.masked_fill(inv.abs() < torch.finfo(inv.dtype).tiny, 0.0)


def _factor_inverses(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int) -> list[torch.Tensor]:
    """``[M_1^{-1}, …, M_Q^{-1}]`` of the zero-boundary factors along one axis."""
    return [_inverse(_dense_factor(left[:, q], right[:, q], n, dilation)) for q in range(left.shape[1])]


def _axis_inverse(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int) -> torch.Tensor:
    """``(M_1…M_Q)^{-1}``, ``[C, n, n]``: one inversion of the product (forward only)."""
    product = _dense_factor(left[:, 0], right[:, 0], n, dilation)
    for q in range(1, left.shape[1]):
        product = product @ _dense_factor(left[:, q], right[:, q], n, dilation)
    return _inverse(product)


def torch_ar_solve(x: torch.Tensor, taps: torch.Tensor, boundary: str, dilation: int) -> torch.Tensor:
    """``Y = A^{-1} X`` for ``x`` ``[B, C, H, W]`` and ``taps`` ``[C, Q, 4]``."""
    h, w = x.shape[-2:]
    if boundary == "circular":
        spectrum = _circular_spectra(taps, h, w, dilation)[-1]
        return torch.fft.irfft2(torch.fft.rfft2(x) / spectrum, s=(h, w))
    m_h = _axis_inverse(taps[..., 0], taps[..., 1], h, dilation)
    m_w = _axis_inverse(taps[..., 2], taps[..., 3], w, dilation)
    return m_h @ x @ m_w.transpose(-1, -2)


def _spectral_tap_grads(cross: torch.Tensor, factors: torch.Tensor, phase: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """``(dleft, dright)`` ``[C, Q, 2]`` from the per-bin ``Σ conj(dX̂) X̂`` of one axis ``[C, k]``."""
    ratio = cross[:, None, :] / factors
    return -scale * torch.stack(((ratio * phase).sum(-1).real, (ratio * phase.conj_physical()).sum(-1).real), dim=-1)


def _circular_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor,
                       dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    phase_h, f, phase_w, g, spectrum = _circular_spectra(taps, h, w, dilation)
    # conj_physical, not the lazy conj view: AOT-compiled inference graphs drop the view's
    # conjugate bit (opcheck's test_aot_dispatch_dynamic checks the gradients).
    spec_dx = torch.fft.rfft2(grad_y) / spectrum.conj_physical()
    grad_x = torch.fft.irfft2(spec_dx, s=(h, w))
    cross = (spec_dx.conj_physical() * torch.fft.rfft2(x)).sum(0)  # [C, H, W//2+1]
    # The one-sided W bins stand for themselves and their mirror images, except 0 and W/2.
    mirrored = torch.full((w // 2 + 1,), 2.0, dtype=taps.dtype, device=taps.device)
    mirrored[0] = 1.0
    if w % 2 == 0:
        mirrored[-1] = 1.0
    cross = cross * mirrored
    scale = 1.0 / (h * w)
    grad_taps = torch.cat((_spectral_tap_grads(cross.sum(-1), f, phase_h, scale),
                           _spectral_tap_grads(cross.sum(-2), g, phase_w, scale)), dim=-1)
    return grad_x, grad_taps


def _apply(mat: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    """``mat`` ``[C, n, n]`` applied to ``t`` ``[B, C, H, W]`` along ``dim`` (-2: H, -1: W)."""
    return mat @ t if dim == -2 else t @ mat.transpose(-1, -2)


def _states(inverses: list[torch.Tensor], t: torch.Tensor, dim: int) -> list[torch.Tensor]:
    """``[Z_1, …, Z_Q]`` with ``Z_k = M_k^{-1} Z_{k-1}``, ``Z_0 = t``, along ``dim``."""
    states = []
    for inv in inverses:
        t = _apply(inv, t, dim)
        states.append(t)
    return states


def _diagonal_sums(u: torch.Tensor, z: torch.Tensor, dilation: int, dim: int) -> torch.Tensor:
    """``(-Σ_i u[i]·z[i+d], -Σ_i u[i]·z[i-d])`` along ``dim``, summed over all but C: ``[C, 2]``."""
    inner = max(u.shape[dim] - dilation, 0)
    dims = (0, 2, 3)
    left = (u.narrow(dim, 0, inner) * z.narrow(dim, dilation if inner else 0, inner)).sum(dims)
    right = (u.narrow(dim, dilation if inner else 0, inner) * z.narrow(dim, 0, inner)).sum(dims)
    return -torch.stack((left, right), dim=-1)


def _axis_backward(inverses: list[torch.Tensor], states: list[torch.Tensor], grad_out: torch.Tensor,
                   dilation: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dZ_0, (dleft, dright) [C, Q, 2])`` of ``Z_Q = M_Q^{-1}…M_1^{-1} Z_0`` along ``dim``."""
    grads = []
    u = grad_out
    for inv, z in zip(reversed(inverses), reversed(states)):
        u = _apply(inv.transpose(-1, -2), u, dim)
        grads.append(_diagonal_sums(u, z, dilation, dim))
    return u, torch.stack(grads[::-1], dim=1)


def _zeros_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor,
                    dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    f_inv = _factor_inverses(taps[..., 0], taps[..., 1], h, dilation)
    g_inv = _factor_inverses(taps[..., 2], taps[..., 3], w, dilation)
    # Y = A_H^{-1} X A_W^{-T}: the H solves run first, the W solves on their result.
    h_states = _states(f_inv, x, -2)
    w_states = _states(g_inv, h_states[-1], -1)
    grad_s, grad_g = _axis_backward(g_inv, w_states, grad_y, dilation, -1)
    grad_x, grad_f = _axis_backward(f_inv, h_states, grad_s, dilation, -2)
    return grad_x, torch.cat((grad_f, grad_g), dim=-1)


def torch_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, boundary: str,
                            dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dtaps)`` of ``Y = A^{-1} X`` given ``dL/dY`` and the saved input ``X``."""
    x = x.contiguous()
    if boundary == "circular":
        return _circular_backward(grad_y, x, taps, dilation)
    return _zeros_backward(grad_y, x, taps, dilation)
