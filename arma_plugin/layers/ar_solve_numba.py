"""Fast CPU AR solve: numba kernels, one parallel task per ``B·C`` plane.

Each plane is solved while it sits in cache: the Q factors along H (vectorised over
W), one transpose, the Q factors along W, one transpose back. A factor is a banded
``y[i] + right*y[i-d] + left*y[i+d]`` operator along axis 0 of a 2-D buffer:

- ``zeros``: tridiagonal Toeplitz with offset ``d`` — the Thomas algorithm with stride
  ``d`` (the ``d`` interleaved chains decouple by themselves);
- ``circular``: circulant on each of the ``gcd(n, d)`` cycles of length ``m = n/gcd(n, d)``.
  The symbol ``left·z + 1 + right·z^{-1}`` factors as ``s(1 + a z)(1 + b z^{-1})`` with
  ``s = (1 + sqrt(1 - 4·left·right))/2``, ``|a|, |b| < 1`` whenever ``|left|+|right| < 1``
  (Thm 6), so the solve is one causal and one anti-causal first-order recursion, each
  closed around the cycle exactly (``1/(1 - (-b)^m)`` correction). Cycles of length 1
  and 2 need nothing special.

Backward (Thm 4) runs per plane from ``X`` and ``dY`` only: it re-solves ``Y`` while the
plane is in cache, then does the transposed solves (left and right swapped, factors in
reverse order) interleaved with re-applying the forward factors to ``Y`` to recover the
intermediate states, accumulating the tap gradients ``-Σ U[i]·Z[i∓d]`` on the way. The
caller sums the per-plane tap gradients over batch.
Only valid for taps inside the stable region (the dispatcher checks).
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch


@nb.njit(cache=True, nogil=True)
def _solve_zeros(buf, left, right, d):
    n, width = buf.shape
    cp = np.empty(n, dtype=buf.dtype)
    inv = np.empty(n, dtype=buf.dtype)
    for i in range(n):
        den = 1.0 if i < d else 1.0 - right * cp[i - d]
        inv[i] = 1.0 / den
        cp[i] = left * inv[i]
    for i in range(n):
        r = inv[i]
        row = buf[i]
        if i < d:
            for w in range(width):
                row[w] *= r
        else:
            prev = buf[i - d]
            for w in range(width):
                row[w] = (row[w] - right * prev[w]) * r
    for i in range(n - d - 1, -1, -1):
        c = cp[i]
        row = buf[i]
        nxt = buf[i + d]
        for w in range(width):
            row[w] -= c * nxt[w]


@nb.njit(cache=True, nogil=True)
def _solve_circular(buf, left, right, d):
    n, width = buf.shape
    s = 0.5 * (1.0 + math.sqrt(1.0 - 4.0 * float(left) * float(right)))
    neg_a = -float(left) / s
    neg_b = -float(right) / s
    n_cycles = math.gcd(n, d)
    m = n // n_cycles
    coef = np.empty(4, dtype=buf.dtype)  # scalars in the buffer's precision (keeps loops vectorised)
    coef[0] = 1.0 / s
    coef[1] = neg_b
    coef[2] = neg_a
    inv_s, nb_, na = coef[0], coef[1], coef[2]
    close_b = 1.0 / (1.0 - neg_b ** m)
    close_a = 1.0 / (1.0 - neg_a ** m)
    keep = np.empty(width, dtype=buf.dtype)
    for r in range(n_cycles):
        # causal (1 + b z^{-1}) u = x / s, open recursion first
        first = buf[r]
        for w in range(width):
            first[w] *= inv_s
        prev = r
        for j in range(1, m):
            i = (r + j * d) % n
            row = buf[i]
            prow = buf[prev]
            for w in range(width):
                row[w] = row[w] * inv_s + nb_ * prow[w]
            prev = i
        last = buf[prev]
        for w in range(width):
            keep[w] = last[w] * close_b
            last[w] = keep[w]
        # close the causal cycle (u_j += (-b)^{j+1} u_last) fused with the anti-causal pass
        nxt = prev
        for j in range(m - 2, -1, -1):
            i = (r + j * d) % n
            coef[3] = neg_b ** (j + 1)
            pw = coef[3]
            row = buf[i]
            nrow = buf[nxt]
            for w in range(width):
                row[w] = row[w] + pw * keep[w] + na * nrow[w]
            nxt = i
        for w in range(width):
            keep[w] = first[w] * close_a
            first[w] = keep[w]
        # close the anti-causal cycle: v_j += (-a)^{m-j} v_first (largest terms at the cycle's end)
        for j in range(m - 1, 0, -1):
            pw64 = neg_a ** (m - j)
            if pw64 == 0.0:
                break
            coef[3] = pw64
            pw = coef[3]
            row = buf[(r + j * d) % n]
            for w in range(width):
                row[w] += pw * keep[w]


@nb.njit(cache=True, nogil=True)
def _solve(buf, left, right, d, circular):
    if circular:
        _solve_circular(buf, left, right, d)
    else:
        _solve_zeros(buf, left, right, d)


@nb.njit(cache=True, nogil=True)
def _apply(buf, left, right, d, circular, tmp):
    """``buf <- factor · buf`` along axis 0 (``tmp`` is scratch of the same shape)."""
    n, width = buf.shape
    tmp[:, :] = buf
    for i in range(n):
        row = buf[i]
        jb, jf = i - d, i + d
        if circular:
            jb, jf = jb % n, jf % n
        if circular or jb >= 0:
            src = tmp[jb]
            for w in range(width):
                row[w] += right * src[w]
        if circular or jf < n:
            src = tmp[jf]
            for w in range(width):
                row[w] += left * src[w]


@nb.njit(cache=True, nogil=True)
def _tap_grads(u, z, d, circular):
    """``(-Σ u[i]·z[i+d], -Σ u[i]·z[i-d])`` over the buffer: gradients of (left, right)."""
    n, width = u.shape
    g_left = 0.0
    g_right = 0.0
    for i in range(n):
        jb, jf = i - d, i + d
        if circular:
            jb, jf = jb % n, jf % n
        row = u[i]
        if circular or jb >= 0:
            src = z[jb]
            acc = 0.0
            for w in range(width):
                acc += row[w] * src[w]
            g_right -= acc
        if circular or jf < n:
            src = z[jf]
            acc = 0.0
            for w in range(width):
                acc += row[w] * src[w]
            g_left -= acc
    return g_left, g_right


@nb.njit(cache=True, nogil=True)
def _solve_plane_transposed(x_plane, taps_c, d, circular, buf, out_t):
    """``out_t = (A^{-1} X)^T`` for one plane: H factors in ``buf``, transpose, W factors."""
    buf[:, :] = x_plane
    for q in range(taps_c.shape[0]):
        _solve(buf, taps_c[q, 0], taps_c[q, 1], d, circular)
    out_t[:, :] = buf.T
    for q in range(taps_c.shape[0]):
        _solve(out_t, taps_c[q, 2], taps_c[q, 3], d, circular)


def _forward_planes(x, taps, d, circular, out):
    n_planes, h, w = x.shape
    channels = taps.shape[0]
    for p in nb.prange(n_planes):
        t = np.empty((w, h), dtype=x.dtype)
        _solve_plane_transposed(x[p], taps[p % channels], d, circular, out[p], t)
        out[p][:, :] = t.T


@nb.njit(cache=True, nogil=True)
def _backward_axis(u, z, taps_c, first_tap, d, circular, grad_taps_p, tmp, undo_first_factor):
    """Thm 4 along one axis, last factor first: ``u`` becomes the transposed solve of the
    incoming gradient, tap gradients pair it with the state ``z``, and ``z`` steps back to
    the previous factor's state (``A_k z``; for the first factor only if ``undo_first_factor``)."""
    for k in range(taps_c.shape[0] - 1, -1, -1):
        left, right = taps_c[k, first_tap], taps_c[k, first_tap + 1]
        _solve(u, right, left, d, circular)
        g_left, g_right = _tap_grads(u, z, d, circular)
        grad_taps_p[k, first_tap] = g_left
        grad_taps_p[k, first_tap + 1] = g_right
        if k > 0 or undo_first_factor:
            _apply(z, left, right, d, circular, tmp)


def _backward_planes(grad_y, x, taps, d, circular, grad_x, grad_taps):
    n_planes, h, w = x.shape
    channels = taps.shape[0]
    for p in nb.prange(n_planes):
        c = p % channels
        z = np.empty((h, w), dtype=x.dtype)
        tmp = np.empty((h, w), dtype=x.dtype)
        zt = np.empty((w, h), dtype=x.dtype)
        ut = np.empty((w, h), dtype=x.dtype)
        tmp_t = np.empty((w, h), dtype=x.dtype)
        _solve_plane_transposed(x[p], taps[c], d, circular, z, zt)  # Y^T, recomputed in cache
        # W axis on transposed copies: U = dY A_W^{-1}, Z = Y A_W^T at the end.
        ut[:, :] = grad_y[p].T
        _backward_axis(ut, zt, taps[c], 2, d, circular, grad_taps[p], tmp_t, True)
        # H axis: transposed solves of U give dX; the states Z carry A_W^T so the
        # H-tap gradients pair the right quantities (<P B, Q> = <P, Q B^T>).
        u = grad_x[p]
        u[:, :] = ut.T
        z[:, :] = zt.T
        _backward_axis(u, z, taps[c], 0, d, circular, grad_taps[p], tmp, False)


def _compile_plane_loop(loop):
    """``{parallel: kernel}``: the ``prange`` loop compiled threaded, and serial (``prange`` is
    ``range`` there). The serial kernel never starts numba's thread pool, whose OpenMP start-up
    also raises torch's intra-op thread count."""
    return {parallel: nb.njit(parallel=parallel, cache=True)(loop) for parallel in (True, False)}


_FORWARD_PLANES = _compile_plane_loop(_forward_planes)
_BACKWARD_PLANES = _compile_plane_loop(_backward_planes)


def _run_plane_loop(kernels, *args) -> None:
    """Run over planes with torch's intra-op thread count, and leave that count as it was."""
    threads = torch.get_num_threads()
    parallel = threads > 1 and nb.config.NUMBA_NUM_THREADS > 1
    if parallel:
        nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
    kernels[parallel](*args)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _planes(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().view(-1, t.shape[-2], t.shape[-1]).numpy()


def numba_ar_solve(x: torch.Tensor, taps: torch.Tensor, boundary: str, dilation: int) -> torch.Tensor:
    """``Y = A^{-1} X`` for CPU ``x`` ``[B, C, H, W]`` (float32/float64), taps ``[C, Q, 4]``."""
    out = torch.empty(x.shape, dtype=x.dtype)
    taps_np = taps.detach().to(x.dtype).contiguous().numpy()
    _run_plane_loop(_FORWARD_PLANES, _planes(x), taps_np, dilation, boundary == "circular", _planes(out))
    return out


def numba_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, boundary: str,
                            dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dtaps)`` from ``dL/dY`` and the saved input ``X`` (see module docstring)."""
    b, c, h, w = x.shape
    grad_x = torch.empty(x.shape, dtype=x.dtype)
    grad_taps = torch.empty(b * c, taps.shape[1], 4, dtype=torch.float64)
    taps_np = taps.detach().to(x.dtype).contiguous().numpy()
    _run_plane_loop(_BACKWARD_PLANES, _planes(grad_y.to(x.dtype)), _planes(x), taps_np, dilation,
                    boundary == "circular", _planes(grad_x), grad_taps.numpy())
    return grad_x, grad_taps.view(b, c, -1, 4).sum(0).to(taps.dtype)
