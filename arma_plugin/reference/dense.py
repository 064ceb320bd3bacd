"""Slow, obviously-correct dense reference of the AR solve (float64, for tests).

Builds each 1-D factor as a dense ``n × n`` matrix, multiplies them per axis
(``(F_1⊗G_1)…(F_Q⊗G_Q) = (F_1…F_Q) ⊗ (G_1…G_Q)``) and solves with
``torch.linalg.solve``. Shares no code with the fast or portable solvers.
"""
from __future__ import annotations

import torch

from ..layers.ar_taps import BOUNDARIES


def factor_matrix(left: torch.Tensor, right: torch.Tensor, n: int, boundary: str,
                  dilation: int = 1) -> torch.Tensor:
    """Dense ``[C, n, n]`` matrix of ``y[i] + right*y[i-d] + left*y[i+d]``.

    ``circular`` wraps indices modulo ``n`` (taps landing on the same entry add up);
    ``zeros`` drops the taps that fall outside ``[0, n)``.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    idx = torch.arange(n, device=left.device)
    shifts = []
    for offset in (-dilation, dilation):
        rows, cols = idx, idx + offset
        if boundary == "circular":
            cols = cols % n
        else:
            keep = (cols >= 0) & (cols < n)
            rows, cols = rows[keep], cols[keep]
        shift = torch.zeros(n, n, dtype=left.dtype, device=left.device)
        shifts.append(shift.index_put_((rows, cols), torch.ones_like(rows, dtype=left.dtype), accumulate=True))
    eye = torch.eye(n, dtype=left.dtype, device=left.device)
    return eye + right[:, None, None] * shifts[0] + left[:, None, None] * shifts[1]


def axis_operator(left: torch.Tensor, right: torch.Tensor, n: int, boundary: str,
                  dilation: int = 1) -> torch.Tensor:
    """Product ``M_1 M_2 … M_Q`` of the Q factor matrices along one axis, ``[C, n, n]``."""
    op = torch.eye(n, dtype=left.dtype, device=left.device).repeat(left.shape[0], 1, 1)
    for q in range(left.shape[1]):
        op = op @ factor_matrix(left[:, q], right[:, q], n, boundary, dilation)
    return op


def ar_apply_reference(y: torch.Tensor, taps: torch.Tensor, boundary: str,
                       dilation: int = 1) -> torch.Tensor:
    """``A * Y``: the AR filter applied to ``y`` ``[B, C, H, W]`` (``A_H Y A_W^T``)."""
    a_h = axis_operator(taps[..., 0], taps[..., 1], y.shape[-2], boundary, dilation)
    a_w = axis_operator(taps[..., 2], taps[..., 3], y.shape[-1], boundary, dilation)
    return a_h @ y @ a_w.transpose(-1, -2)


def ar_solve_reference(x: torch.Tensor, taps: torch.Tensor, boundary: str,
                       dilation: int = 1) -> torch.Tensor:
    """``Y = A^{-1} X`` for ``x`` ``[B, C, H, W]``, differentiable by plain autograd."""
    a_h = axis_operator(taps[..., 0], taps[..., 1], x.shape[-2], boundary, dilation)
    a_w = axis_operator(taps[..., 2], taps[..., 3], x.shape[-1], boundary, dilation)
    y = torch.linalg.solve(a_h, x)
    return torch.linalg.solve(a_w, y.transpose(-1, -2)).transpose(-1, -2)
