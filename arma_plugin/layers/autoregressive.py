"""Autoregressive (AR) part of an ARMA layer.

Su et al., "Convolutional Neural Networks with Autoregressive Moving-Average Layers",
NeurIPS 2020: Def. 1 (the layer solves ``A * Y = T`` per channel), Def. 5 (separable AR
filter: a product of Q length-3 factors per axis), Thm 4 (backward), Thm 6 (stability),
Thm 7 (re-parameterisation, :func:`ar_taps`).

Semantics. ``A = (F_1⊗G_1)(F_2⊗G_2)…(F_Q⊗G_Q)``, each factor ``y[i] + right*y[i-d] +
left*y[i+d]`` along its axis (``F`` along H, ``G`` along W, ``d = dilation``).
``boundary="circular"``: periodic factors (circulant, they commute; identical to dividing
by the filter's 2-D FFT as the authors' code does, also for maps smaller than the
filter, where taps wrap onto the same pixel). ``boundary="zeros"``: every factor is a
zero-padded convolution (``y = 0`` outside the image), i.e. a tridiagonal Toeplitz
matrix per axis; strict diagonal dominance (Thm 6) makes each factor invertible at every
size, which is why ``zeros`` is the product of zero-padded factors and not one
zero-padded ``(2Q+1)²`` filter. ``Y = A^{-1} X`` is exact in both cases.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

from .ar_solve_op import ar_solve, resolve_backend
from .ar_taps import BOUNDARIES, ar_taps

__all__ = ["AutoRegressive2d", "autoregressive2d", "ar_taps", "BOUNDARIES"]


def _check_args(boundary: str, dilation: int) -> None:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")


def autoregressive2d(x: torch.Tensor, alpha: torch.Tensor, boundary: str = "circular",
                     reparam: bool = True, dilation: int = 1, backend: str | None = None) -> torch.Tensor:
    """Solve ``A * Y = X`` per channel for ``x`` ``[B, C, H, W]``; ``alpha`` is ``[C, Q, 4]``.

    float16/bfloat16 input (e.g. from autocast) is solved in float32 and returned in
    the input dtype; float32 and float64 are solved in their own precision. The output
    keeps a channels_last layout. ``backend``: ``"numba"``/``"torch"``/``None`` (automatic,
    or ``$ARMA_PLUGIN_BACKEND``). With ``reparam=False`` the raw taps may leave the stable
    region (paper Fig. 5); nothing is clamped and a singular system gives inf/nan.
    """
    _check_args(boundary, dilation)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [batch, channels, height, width], got shape {tuple(x.shape)}")
    if alpha.dim() != 3 or alpha.shape[-1] != 4 or alpha.shape[1] < 1:
        raise ValueError(f"alpha must have shape [channels, Q >= 1, 4], got {tuple(alpha.shape)}")
    if x.shape[1] != alpha.shape[0]:
        raise ValueError(f"x has {x.shape[1]} channels but alpha is for {alpha.shape[0]} channels")
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        taps = ar_taps(alpha.to(compute_dtype), reparam)
        xc = x.to(compute_dtype)
        y = ar_solve(xc, taps, boundary, dilation, resolve_backend(xc, taps, backend, known_stable=reparam))
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    return y.to(x.dtype)


torch.fx.wrap("autoregressive2d")


class AutoRegressive2d(nn.Module):
    """Per-channel separable AR solve, the AR half of an ARMA layer (Def. 1, Def. 5).

    Parameter ``alpha`` ``[channels, Q, 4]`` with ``Q = ar_kernel_size // 2``, zero at
    init (``A = I``: the layer is the identity). See :func:`autoregressive2d`.
    """

    def __init__(self, channels: int, ar_kernel_size: int = 3, boundary: str = "circular",
                 reparam: bool = True, dilation: int = 1) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if not isinstance(ar_kernel_size, int) or ar_kernel_size < 3 or ar_kernel_size % 2 == 0:
            raise ValueError(f"ar_kernel_size must be an odd integer >= 3 (3, 5, 7, ...), got {ar_kernel_size!r}")
        _check_args(boundary, dilation)
        self.channels = channels
        self.ar_kernel_size = ar_kernel_size
        self.boundary = boundary
        self.reparam = reparam
        self.dilation = dilation
        self.alpha = nn.Parameter(torch.zeros(channels, ar_kernel_size // 2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return autoregressive2d(x, self.alpha, self.boundary, self.reparam, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.channels}, ar_kernel_size={self.ar_kernel_size}, boundary={self.boundary!r}, "
                f"reparam={self.reparam}, dilation={self.dilation}")
