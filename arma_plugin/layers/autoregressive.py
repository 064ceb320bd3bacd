"""Autoregressive (AR) part of an ARMA layer.

Su et al., "Convolutional Neural Networks with Autoregressive Moving-Average
Layers", NeurIPS 2020: Def. 1 (the layer solves ``A * Y = T`` per channel),
Def. 5 (separable AR filter ``A = F ⊗ G``, each a product of Q length-3
factors), Thm 6 (stability), Thm 7 (re-parameterisation).

NOTE: first, simple version (dense per-axis operators, plain autograd); the
fast solver replaces the internals, the public names stay.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

BOUNDARIES = ("circular", "zeros")


def ar_taps(alpha: torch.Tensor, reparam: bool = True) -> torch.Tensor:
    """Map ``alpha`` ``[C, Q, 4]`` to factor taps ``(f_left, f_right, g_left, g_right)``.

    With ``reparam`` (Thm 7, the released code's layout) ``c = tanh(alpha)/sqrt(2)``
    and the taps are a 45° rotation of ``c``, so ``|left| + |right| < 1`` for any
    finite ``alpha`` (Thm 6). Without it ``alpha`` holds the raw taps.
    """
    if not reparam:
        return alpha
    c = torch.tanh(alpha) / math.sqrt(2.0)
    c0, c1, c2, c3 = c.unbind(-1)
    s = 1.0 / math.sqrt(2.0)
    return torch.stack(((c0 + c1) * s, (c1 - c0) * s, (c2 + c3) * s, (c3 - c2) * s), dim=-1)


def factor_matrix(left: torch.Tensor, right: torch.Tensor, n: int, boundary: str, dilation: int = 1) -> torch.Tensor:
    """Dense ``[C, n, n]`` matrix of the 1-D factor ``y[i] + right*y[i-d] + left*y[i+d]``."""
    eye = torch.eye(n, dtype=left.dtype, device=left.device)
    idx = torch.arange(n, device=left.device)
    shift_back = torch.zeros(n, n, dtype=left.dtype, device=left.device)  # picks y[i-d]
    shift_fwd = torch.zeros_like(shift_back)  # picks y[i+d]
    if boundary == "circular":
        shift_back[idx, (idx - dilation) % n] = 1.0
        shift_fwd[idx, (idx + dilation) % n] = 1.0
    else:
        keep = idx - dilation >= 0
        shift_back[idx[keep], idx[keep] - dilation] = 1.0
        keep = idx + dilation < n
        shift_fwd[idx[keep], idx[keep] + dilation] = 1.0
    return eye + right[:, None, None] * shift_back + left[:, None, None] * shift_fwd


def axis_operator(left: torch.Tensor, right: torch.Tensor, n: int, boundary: str, dilation: int = 1) -> torch.Tensor:
    """Product ``A_1 A_2 ... A_Q`` of the Q factor matrices along one axis, ``[C, n, n]``."""
    op = None
    for q in range(left.shape[1]):
        m = factor_matrix(left[:, q], right[:, q], n, boundary, dilation)
        op = m if op is None else op @ m
    return op


def autoregressive2d(x: torch.Tensor, alpha: torch.Tensor, boundary: str = "circular",
                     reparam: bool = True, dilation: int = 1) -> torch.Tensor:
    """Solve ``A * Y = X`` per channel; ``A = (F_1 ⊗ G_1) ... (F_Q ⊗ G_Q)``."""
    taps = ar_taps(alpha.to(torch.promote_types(x.dtype, torch.float32)), reparam)
    h, w = x.shape[-2:]
    a_h = axis_operator(taps[..., 0], taps[..., 1], h, boundary, dilation)
    a_w = axis_operator(taps[..., 2], taps[..., 3], w, boundary, dilation)
    xf = x.to(a_h.dtype)
    y = torch.linalg.solve(a_h, xf)  # along H
    y = torch.linalg.solve(a_w, y.transpose(-1, -2)).transpose(-1, -2)  # along W
    return y.to(x.dtype)


class AutoRegressive2d(nn.Module):
    """Per-channel separable AR solve (the AR half of an ARMA layer)."""

    def __init__(self, channels: int, ar_kernel_size: int = 3, boundary: str = "circular",
                 reparam: bool = True, dilation: int = 1) -> None:
        super().__init__()
        if ar_kernel_size < 3 or ar_kernel_size % 2 == 0:
            raise ValueError(f"ar_kernel_size must be an odd integer >= 3 (3, 5, 7, ...), got {ar_kernel_size!r}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
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
