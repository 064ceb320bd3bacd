"""Taps of the separable AR filter (Su et al., NeurIPS 2020, Def. 5, Thm 6, Thm 7).

The AR filter is ``A = (F_1 ⊗ G_1)(F_2 ⊗ G_2)…(F_Q ⊗ G_Q)``; every factor is a
length-3 filter acting along one axis as ``(a*y)[i] = y[i] + right*y[i-d] + left*y[i+d]``
(``F`` along H = dim -2, ``G`` along W = dim -1, ``d`` the AR dilation).
"""
from __future__ import annotations

import math

import torch

BOUNDARIES = ("circular", "zeros")

# tanh saturates to exactly ±1 in floating point (|alpha| > 9 in float32), which would put
# the taps ON the boundary |left|+|right| = 1 (a singular circulant). Capping |tanh| here
# keeps every factor strictly stable with gain at most 2**16 (at most 2**(32 Q) for the
# whole filter); it changes nothing for |alpha| < 5.9, where tanh is below the cap. Beyond
# the cap the clamp is flat: those entries of alpha get zero gradient.
TANH_LIMIT = 1.0 - 2.0 ** -16


def ar_taps(alpha: torch.Tensor, reparam: bool = True, tanh_limit: float = TANH_LIMIT) -> torch.Tensor:
    """Map ``alpha`` ``[C, Q, 4]`` to factor taps ``(f_left, f_right, g_left, g_right)``.

    With ``reparam`` (Thm 7, in the authors' released layout) ``c = tanh(alpha)/sqrt(2)``
    and ``f_left = (c0+c1)/√2, f_right = (c1-c0)/√2, g_left = (c2+c3)/√2, g_right = (c3-c2)/√2``:
    a 45° rotation, so ``|left| + |right| = √2·max(|c0|, |c1|) < 1`` for every finite
    ``alpha`` and each factor is strictly diagonally dominant (Thm 6: stable). ``|tanh|``
    is capped at :data:`TANH_LIMIT` so this also holds after floating-point rounding
    (entries of ``alpha`` beyond the cap, ``|alpha| > 5.9``, get zero gradient).
    Without ``reparam`` ``alpha`` already holds the raw taps (may leave the stable region).
    ``tanh_limit`` is the cap as an argument because TorchScript, which compiles this for
    scripted models, cannot read a module-level float.
    """
    if not reparam:
        return alpha
    c = torch.tanh(alpha).clamp(-tanh_limit, tanh_limit) / math.sqrt(2.0)
    c0, c1, c2, c3 = c.unbind(-1)
    s = 1.0 / math.sqrt(2.0)
    return torch.stack(((c0 + c1) * s, (c1 - c0) * s, (c2 + c3) * s, (c3 - c2) * s), dim=-1)


def ar_taps_backward(alpha: torch.Tensor, grad_taps: torch.Tensor, reparam: bool = True) -> torch.Tensor:
    """``dL/dalpha`` from ``dL/dtaps``: the chain rule of :func:`ar_taps` in closed form (the same
    formula the Triton kernels evaluate per channel)."""
    if not reparam:
        return grad_taps
    t = torch.tanh(alpha)
    slope = torch.where(t.abs() <= TANH_LIMIT, 1.0 - t * t, torch.zeros_like(t)) / math.sqrt(2.0)
    s = 1.0 / math.sqrt(2.0)
    left_h, right_h, left_w, right_w = grad_taps.unbind(-1)
    grad_c = torch.stack(((left_h - right_h) * s, (left_h + right_h) * s,
                          (left_w - right_w) * s, (left_w + right_w) * s), dim=-1)
    return grad_c * slope


def taps_are_stable(taps: torch.Tensor) -> bool:
    """Thm 6 for every factor: ``|left| + |right| < 1`` along both axes (all finite)."""
    rows = taps[..., 0].abs() + taps[..., 1].abs()
    cols = taps[..., 2].abs() + taps[..., 3].abs()
    return bool(((rows < 1) & (cols < 1)).all())
