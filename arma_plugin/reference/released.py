"""Port of the authors' released AR algorithm (circular boundary), for comparison.

Su et al. released ``autoregressive_circular``: per factor ``q`` it builds the
``H × W`` filter ``outer([1, f_right, 0, …, 0, f_left], [1, g_right, 0, …, 0, g_left])``
and divides the input's 2-D FFT by the filter's, Q times in sequence, with autograd
through the FFTs. Differences from the original, on purpose: ``torch.fft.rfft2``
replaces the removed ``torch.rfft`` (same result, half the spectrum), dilation is
honoured, and the silent skip for maps smaller than ``2Q+1`` is removed (taps that
wrap onto the same pixel add up, as the circulant operator requires).
"""
from __future__ import annotations

import torch

from ..layers.ar_taps import ar_taps


def _circular_filter(left: torch.Tensor, right: torch.Tensor, n: int, dilation: int) -> torch.Tensor:
    """``[C, n]`` filter ``[1, right, 0, …, 0, left]`` (taps at ``±dilation`` modulo ``n``)."""
    basis = torch.zeros(3, n, dtype=left.dtype, device=left.device)
    basis[0, 0] = 1.0
    basis[1, dilation % n] += 1.0
    basis[2, (-dilation) % n] += 1.0
    return basis[0] + right[:, None] * basis[1] + left[:, None] * basis[2]


def released_autoregressive2d(x: torch.Tensor, alpha: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Released algorithm: ``Q`` sequential 2-D FFT divisions, plain autograd."""
    taps = ar_taps(alpha.to(x.dtype))
    h, w = x.shape[-2:]
    for q in range(taps.shape[1]):
        f = _circular_filter(taps[:, q, 0], taps[:, q, 1], h, dilation)
        g = _circular_filter(taps[:, q, 2], taps[:, q, 3], w, dilation)
        a = f[:, :, None] * g[:, None, :]
        x = torch.fft.irfft2(torch.fft.rfft2(x) / torch.fft.rfft2(a), s=(h, w))
    return x
