"""Fast CPU AR solve: numba kernels, one parallel task per group of planes sharing taps.

A task is one channel ``c`` and a chunk of ``G`` consecutive batch indices. Its planes are
gathered side by side into one buffer ``[H, G·W]`` (``buf[i, j·W + col] = x[b0 + j, c, i, col]``)
and solved while the group sits in cache: the Q factors along H (vectorised over the G·W
columns), one transpose of each plane into ``[W, G·H]``, the Q factors along W, scattered
back transposed. ``G = 1`` is one task per plane; larger ``G`` gives rows long enough to
amortise the loop overhead (and the Thomas coefficients) on small planes. Each column's
arithmetic does not depend on ``G``, so the values are the same bit for bit. ``G`` is chosen so
that a group holds about ``GROUP_ELEMENTS`` elements (8192: 32 KiB of float32 per buffer, the
fastest group size measured; docs/benchmarks.md, "Group size of the numba kernels").

A factor is a banded ``y[i] + right*y[i-d] + left*y[i+d]`` operator along axis 0 of a 2-D
buffer:

- ``zeros``: tridiagonal Toeplitz with offset ``d`` — the Thomas algorithm with stride
  ``d`` (the ``d`` interleaved chains decouple by themselves);
- ``circular``: circulant on each of the ``gcd(n, d)`` cycles of length ``m = n/gcd(n, d)``.
  The symbol ``left·z + 1 + right·z^{-1}`` factors as ``s(1 + a z)(1 + b z^{-1})`` with
  ``s = (1 + sqrt(1 - 4·left·right))/2``, ``|a|, |b| < 1`` whenever ``|left|+|right| < 1``
  (Thm 6), so the solve is one causal and one anti-causal first-order recursion, each
  closed around the cycle exactly (``1/(1 - (-b)^m)`` correction). Cycles of length 1
  and 2 need nothing special.

Backward (Thm 4) runs per group from ``X`` and ``dY`` only: it re-solves ``Y`` while the
group is in cache, then does the transposed solves (left and right swapped, factors in
reverse order) interleaved with re-applying the forward factors to ``Y`` to recover the
intermediate states, accumulating the tap gradients ``-Σ U[i]·Z[i∓d]`` on the way. The
caller sums the per-group tap gradients over the batch chunks.
Only valid for taps inside the stable region (the dispatcher checks).
"""
from __future__ import annotations

import math
import types

import numba as nb
import numpy as np
import torch

GROUP_ELEMENTS = 8192  # elements per task's group of planes (see module docstring)
TASKS_PER_THREAD = 4  # groups per thread at least, so the threads stay balanced


@nb.njit(cache=True, nogil=True)
def _solve_zeros(buf, left, right, d, work):
    n, width = buf.shape
    cp = work[:n]
    inv = work[n:2 * n]
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
def _solve_circular(buf, left, right, d, work):
    n, width = buf.shape
    s = 0.5 * (1.0 + math.sqrt(1.0 - 4.0 * float(left) * float(right)))
    neg_a = -float(left) / s
    neg_b = -float(right) / s
    n_cycles = math.gcd(n, d)
    m = n // n_cycles
    coef = work[width:width + 4]  # scalars in the buffer's precision (keeps loops vectorised)
    coef[0] = 1.0 / s
    coef[1] = neg_b
    coef[2] = neg_a
    inv_s, nb_, na = coef[0], coef[1], coef[2]
    close_b = 1.0 / (1.0 - neg_b ** m)
    close_a = 1.0 / (1.0 - neg_a ** m)
    keep = work[:width]
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
def _solve(buf, left, right, d, circular, work):
    """One factor's solve along axis 0; ``work``: scratch of at least ``max(2·n, width + 4)``."""
    if circular:
        _solve_circular(buf, left, right, d, work)
    else:
        _solve_zeros(buf, left, right, d, work)


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
def _tap_grads(u, z, d, circular, acc):
    """``(-Σ u[i]·z[i+d], -Σ u[i]·z[i-d])`` over the buffer: gradients of (left, right).

    Summed per column first (float64 scratch ``acc`` of ``2·width``: the column loop has no
    carried dependence and vectorises), then over the columns."""
    n, width = u.shape
    acc_left = acc[:width]
    acc_right = acc[width:2 * width]
    acc_left[:] = 0.0
    acc_right[:] = 0.0
    for i in range(n):
        jb, jf = i - d, i + d
        if circular:
            jb, jf = jb % n, jf % n
        row = u[i]
        if circular or jb >= 0:
            src = z[jb]
            for w in range(width):
                acc_right[w] += row[w] * src[w]
        if circular or jf < n:
            src = z[jf]
            for w in range(width):
                acc_left[w] += row[w] * src[w]
    return -acc_left.sum(), -acc_right.sum()


@nb.njit(cache=True, nogil=True)
def _copy_plane(plane, buf, j, to_buf, transpose):
    """Plane ``j`` of a group and its block of the group buffer: ``buf[i, j·w + col]`` (``buf``
    ``[h, g·w]``) or, transposed, ``buf[col, j·h + i]`` (``buf`` ``[w, g·h]``) is ``plane[i, col]``;
    copied into the buffer if ``to_buf``, else out of it."""
    h, w = plane.shape
    if transpose and to_buf:  # loops ordered so that the writes are contiguous
        for col in range(w):
            row = buf[col]
            for i in range(h):
                row[j * h + i] = plane[i, col]
    elif transpose:
        for i in range(h):
            prow = plane[i]
            for col in range(w):
                prow[col] = buf[col, j * h + i]
    else:
        for i in range(h):
            row = buf[i]
            prow = plane[i]
            for col in range(w):
                if to_buf:
                    row[j * w + col] = prow[col]
                else:
                    prow[col] = row[j * w + col]


@nb.njit(cache=True, nogil=True)
def _transpose_group(buf, g, buf_t):
    """``buf_t[col, j·n + i] = buf[i, j·m + col]``: each of the ``g`` planes ``[n, m]`` transposed."""
    n = buf.shape[0]
    m = buf.shape[1] // g
    for j in range(g):
        for col in range(m):
            row = buf_t[col]
            for i in range(n):
                row[j * n + i] = buf[i, j * m + col]


@nb.njit(cache=True, nogil=True)
def _solve_group_transposed(buf, taps_c, d, circular, g, buf_t, work):
    """``buf_t = (A^{-1} X)^T`` per plane for the group gathered in ``buf`` (``[h, g·w]``): H factors
    in ``buf``, transpose into ``buf_t`` (``[w, g·h]``), W factors there."""
    for q in range(taps_c.shape[0]):
        _solve(buf, taps_c[q, 0], taps_c[q, 1], d, circular, work)
    _transpose_group(buf, g, buf_t)
    for q in range(taps_c.shape[0]):
        _solve(buf_t, taps_c[q, 2], taps_c[q, 3], d, circular, work)


@nb.njit(cache=True, nogil=True)
def _gather_group(x, t, group):
    """Task ``t`` of ``x`` ``[B, C, h, w]``: channel ``c = t % C`` and batch indices ``b0 .. b0 + g``
    (chunk ``t // C`` of ``group``). Returns ``(c, b0, g, buf, buf_t, work)``: the planes gathered
    into ``buf`` ``[h, g·w]``, an empty ``buf_t`` ``[w, g·h]`` and the solves' scratch."""
    batch, channels, h, w = x.shape
    c = t % channels
    b0 = (t // channels) * group
    g = min(group, batch - b0)
    buf = np.empty((h, g * w), dtype=x.dtype)
    for j in range(g):
        _copy_plane(x[b0 + j, c], buf, j, True, False)
    return c, b0, g, buf, np.empty((w, g * h), dtype=x.dtype), np.empty((g + 2) * max(h, w) + 4, dtype=x.dtype)


def _forward_groups(x, taps, d, circular, group, out):
    for t in nb.prange(x.shape[1] * ((x.shape[0] + group - 1) // group)):
        c, b0, g, buf, buf_t, work = _gather_group(x, t, group)
        _solve_group_transposed(buf, taps[c], d, circular, g, buf_t, work)
        for j in range(g):
            _copy_plane(out[b0 + j, c], buf_t, j, False, True)


@nb.njit(cache=True, nogil=True)
def _backward_axis(u, z, taps_c, first_tap, d, circular, grad_taps_p, tmp, undo_first_factor, work, acc):
    """Thm 4 along one axis, last factor first: ``u`` becomes the transposed solve of the
    incoming gradient, tap gradients pair it with the state ``z``, and ``z`` steps back to
    the previous factor's state (``A_k z``; for the first factor only if ``undo_first_factor``)."""
    for k in range(taps_c.shape[0] - 1, -1, -1):
        left, right = taps_c[k, first_tap], taps_c[k, first_tap + 1]
        _solve(u, right, left, d, circular, work)
        g_left, g_right = _tap_grads(u, z, d, circular, acc)
        grad_taps_p[k, first_tap] = g_left
        grad_taps_p[k, first_tap + 1] = g_right
        if k > 0 or undo_first_factor:
            _apply(z, left, right, d, circular, tmp)


def _backward_groups(grad_y, x, taps, d, circular, group, grad_x, grad_taps):
    for t in nb.prange(x.shape[1] * ((x.shape[0] + group - 1) // group)):
        c, b0, g, z, zt, work = _gather_group(x, t, group)
        u, tmp = np.empty_like(z), np.empty_like(z)
        ut, tmp_t = np.empty_like(zt), np.empty_like(zt)
        acc = np.empty(2 * max(z.shape[1], zt.shape[1]), dtype=np.float64)
        for j in range(g):
            _copy_plane(grad_y[b0 + j, c], ut, j, True, True)
        _solve_group_transposed(z, taps[c], d, circular, g, zt, work)  # Y^T, recomputed in cache
        # W axis on transposed copies: U = dY A_W^{-1}, Z = Y A_W^T at the end.
        _backward_axis(ut, zt, taps[c], 2, d, circular, grad_taps[t], tmp_t, True, work, acc)
        # H axis: transposed solves of U give dX; the states Z carry A_W^T so the
        # H-tap gradients pair the right quantities (<P B, Q> = <P, Q B^T>).
        _transpose_group(ut, g, u)
        _transpose_group(zt, g, z)
        _backward_axis(u, z, taps[c], 0, d, circular, grad_taps[t], tmp, False, work, acc)
        for j in range(g):
            _copy_plane(grad_x[b0 + j, c], u, j, False, False)


def _compile_plane_loop(loop):
    """``{parallel: kernel}``: the ``prange`` loop compiled threaded, and serial (``prange`` is
    ``range`` there). The serial kernel never starts numba's thread pool, whose OpenMP start-up
    also raises torch's intra-op thread count. Each is compiled from a copy of ``loop`` with its
    own qualified name: numba's on-disk cache is keyed by name and line, not by ``parallel``, so
    one function compiled both ways would load whichever was cached first for both."""
    kernels = {}
    for parallel in (True, False):
        copy = types.FunctionType(loop.__code__, loop.__globals__, loop.__name__)
        copy.__qualname__ = f"{loop.__qualname__}_{'parallel' if parallel else 'serial'}"
        kernels[parallel] = nb.njit(parallel=parallel, cache=True)(copy)
    return kernels


_FORWARD_GROUPS = _compile_plane_loop(_forward_groups)
_BACKWARD_GROUPS = _compile_plane_loop(_backward_groups)


def _run_plane_loop(kernels, *args) -> None:
    """Run over groups of planes with torch's intra-op thread count, and leave that count as it was."""
    threads = torch.get_num_threads()
    parallel = threads > 1 and nb.config.NUMBA_NUM_THREADS > 1
    if parallel:
        nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
    kernels[parallel](*args)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _group_size(batch: int, channels: int, h: int, w: int, group_elements: int = GROUP_ELEMENTS,
                tasks_per_thread: int = TASKS_PER_THREAD) -> int:
    """Planes per task: about ``group_elements`` elements, at least ``tasks_per_thread`` tasks per
    thread, and the batch split into equal chunks."""
    group = min(max(-(-group_elements // max(h * w, 1)), 1), max(batch, 1))
    threads = torch.get_num_threads()
    if threads > 1:
        chunks_needed = -(-tasks_per_thread * threads // max(channels, 1))
        group = min(group, max(batch // chunks_needed, 1))
    n_chunks = -(-max(batch, 1) // group)
    return -(-max(batch, 1) // n_chunks)


def numba_ar_solve(x: torch.Tensor, taps: torch.Tensor, boundary: str, dilation: int, *,
                   group_elements: int = GROUP_ELEMENTS, tasks_per_thread: int = TASKS_PER_THREAD) -> torch.Tensor:
    """``Y = A^{-1} X`` for contiguous CPU ``x`` ``[B, C, H, W]`` and taps ``[C, Q, 4]`` of its dtype
    (float32/float64; the op casts). ``group_elements`` and ``tasks_per_thread`` size the groups of
    planes one task solves (module docstring)."""
    out = torch.empty(x.shape, dtype=x.dtype)
    taps_np = taps.detach().contiguous().numpy()
    group = _group_size(*x.shape, group_elements, tasks_per_thread)
    _run_plane_loop(_FORWARD_GROUPS, x.detach().numpy(), taps_np, dilation, boundary == "circular",
                    group, out.numpy())
    return out


def numba_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, boundary: str,
                            dilation: int, *, group_elements: int = GROUP_ELEMENTS,
                            tasks_per_thread: int = TASKS_PER_THREAD) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dtaps)`` from ``dL/dY`` and the saved input ``X`` (see module docstring); the
    group knobs as in :func:`numba_ar_solve`."""
    b, c, h, w = x.shape
    group = _group_size(b, c, h, w, group_elements, tasks_per_thread)
    n_chunks = -(-b // group)
    grad_x = torch.empty(x.shape, dtype=x.dtype)
    grad_taps = torch.empty(n_chunks * c, taps.shape[1], 4, dtype=torch.float64)
    taps_np = taps.detach().contiguous().numpy()
    _run_plane_loop(_BACKWARD_GROUPS, grad_y.detach().numpy(), x.detach().numpy(), taps_np, dilation,
                    boundary == "circular", group, grad_x.numpy(), grad_taps.numpy())
    return grad_x, grad_taps.view(n_chunks, c, taps.shape[1], 4).sum(0).to(taps.dtype)
