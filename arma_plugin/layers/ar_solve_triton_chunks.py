"""Triton kernels of the AR solve along lines longer than a tile: chunks with a carried state.

A program holds ``R`` lines of one image and ``CB`` channels, and walks each line in chunks
of ``L`` positions of each of its ``CH`` chains: a tile ``[R, L, CH, CB]``, lines along axis 0,
chain positions along axis 1 (the dilated chains of ``ar_solve_triton_kernels``). A pass
solves one axis; the host hands it that axis as the line and the other as the rows, so one
kernel serves H and W.

A factor ``s(1 + b·L)(1 + a·U)`` (``ar_solve_triton_kernels``) takes two sweeps over the
chunks. Left to right: the causal recursion ``w[j] = x[j]/s - b·w[j-1]``, each chunk a scan
started from zero plus ``(-b)^(i+1)·carry`` (``carry``: the previous chunk's last ``w``),
written to a float32 (float64) work buffer; the same sweep sums ``Σ (-a)^j w[j]``, which is
the anti-causal solution's first element, and keeps ``w[m-1]``, so both boundary terms are
known before the second sweep. Right to left: the anti-causal recursion
``v[j] = u[j] - a·v[j+1]`` with the carry ``(-a)^(L-i)·v[next chunk's first]``, and the
exact boundary term (cyclic wrap, or the Sherman–Morrison term for ``zeros``) applied as
each chunk is written. A program re-reads only what it wrote itself, behind a barrier.

Backward (Thm 4): the factors' output ``y`` (re-solved, or given), then last factor first:
the transposed solve of the gradient (the same sweeps, ``left``/``right`` swapped), and a
sweep that forms ``-Σ g[i]·y[i±d]`` (neighbours loaded from memory, across chunk edges) and
the factor's input ``y + right·y[i-d] + left·y[i+d]`` into the other of two work buffers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .ar_solve_triton_kernels import (causal_cycle_end, chain_positions, channel_taps, exact_first, exact_from_open,
                                      linear_combine, power, tap, with_tap)


@triton.jit
def _program(C, n_rows, R: tl.constexpr, CB: tl.constexpr):
    """Program → (batch, channels ``[CB]``, channel mask, rows ``[R, 1, 1, 1]``, row mask)."""
    channel_blocks = tl.cdiv(C, CB)
    plane = tl.program_id(0)
    b = (plane // channel_blocks).to(tl.int64)
    c = (plane % channel_blocks) * CB + tl.arange(0, CB)
    rows = tl.program_id(1) * R + tl.arange(0, R)
    return b, c, c < C, rows[:, None, None, None].to(tl.int64), (rows < n_rows)[:, None, None, None]


@triton.jit
def _chunk(n, dilation, n_chains, k, CIRCULAR: tl.constexpr, L: tl.constexpr, CH: tl.constexpr):
    """Chunk ``k``: ``(position, inside, j, chain length)`` as ``[1, L, CH, 1]``."""
    j = k * L + tl.arange(0, L)[:, None]
    r = tl.arange(0, CH)[None, :]
    pos, m = chain_positions(n, dilation, n_chains, j, r, CIRCULAR)
    inside = (r < n_chains) & (j < m)
    return pos[None, :, :, None].to(tl.int64), inside[None, :, :, None], j[None, :, :, None], m[None, :, :, None]


@triton.jit
def _neighbour_position(n, dilation, n_chains, j, m, STEP: tl.constexpr, CIRCULAR: tl.constexpr,
                        CH: tl.constexpr):
    """Position of chain element ``j + STEP`` (around the cycle) and whether it exists."""
    r = tl.arange(0, CH)[None, None, :, None]
    k = j + STEP
    if CIRCULAR:
        k = (k + m) % m
    pos, _ = chain_positions(n, dilation, n_chains, tl.where((k >= 0) & (k < m), k, 0), r, CIRCULAR)
    return pos.to(tl.int64), (k >= 0) & (k < m)


@triton.jit
def _line_tap(taps, k):
    """Tap ``k`` shaped ``[1, 1, 1, CB]`` for a line tile."""
    return tap(taps, k)[None, None, None, :]


@triton.jit
def _line_channel_sum(t):
    """``[R, L, CH, CB]`` summed to ``[CB]``."""
    return tl.sum(tl.sum(tl.sum(t, 0), 0), 0)


@triton.jit
def _offsets(b, c, rows, pos, sb, sc, sr, sl):
    return b * sb + c[None, None, None, :].to(tl.int64) * sc + rows * sr + pos * sl


@triton.jit
def _chunked_factor(src, src_sb, src_sc, src_sr, src_sl, dst, dst_sb, dst_sc, dst_sr, dst_sl,
                    work, work_sb, work_sc, work_sr, work_sl, left, right, b, c, valid, rows,
                    n, dilation, n_chains, chunks, CIRCULAR: tl.constexpr, ACC: tl.constexpr,
                    R: tl.constexpr, L: tl.constexpr, CH: tl.constexpr, CB: tl.constexpr):
    """``dst = `` one factor solved along the lines of ``src`` (module docstring); ``work``:
    float32 (float64) scratch, which may be ``src`` or ``dst``. ``valid``: the rows and
    channels mask ``[R, 1, 1, CB]``."""
    s = 0.5 * (1.0 + tl.sqrt(1.0 - 4.0 * left * right))
    a = left / s
    bb = right / s
    ab = a * bb
    carry = tl.zeros([R, 1, CH, CB], ACC)
    w_last = tl.zeros([R, 1, CH, CB], ACC)
    first_v = tl.zeros([R, 1, CH, CB], ACC)
    for k in range(0, chunks):
        pos, inside, j, m = _chunk(n, dilation, n_chains, k, CIRCULAR, L, CH)
        mask = valid & inside
        tl.debug_barrier()
        x = tl.load(src + _offsets(b, c, rows, pos, src_sb, src_sc, src_sr, src_sl), mask=mask, other=0.0)
        tl.debug_barrier()
        x = tl.where(mask, x.to(ACC) / s, 0.0)
        w = tl.associative_scan((tl.zeros_like(x) - bb, x), 1, linear_combine)[1]
        w = tl.where(mask, w + power(-bb, j - k * L + 1) * carry, 0.0)
        carry = tl.sum(tl.where(j == k * L + L - 1, w, 0.0), 1, keep_dims=True)
        w_last += tl.sum(tl.where(j == m - 1, w, 0.0), 1, keep_dims=True)
        first_v += tl.sum(power(-a, j) * w, 1, keep_dims=True)
        tl.store(work + _offsets(b, c, rows, pos, work_sb, work_sc, work_sr, work_sl), w, mask=mask)
    m = _chunk(n, dilation, n_chains, 0, CIRCULAR, L, CH)[3]
    if CIRCULAR:
        # u = w + (-b)^(j+1)·u[m-1], so v[0] = Σ (-a)^j u[j] gains u[m-1]·Σ_{j<m} (-a)^j (-b)^(j+1)
        u_last = causal_cycle_end(w_last, m, bb)
        first_v += u_last * (-bb) * (1.0 - power(ab, m)) / (1.0 - ab)
    y_first = exact_first(first_v, m, a, bb, CIRCULAR)
    carry = tl.zeros_like(carry)
    for step in range(0, chunks):
        k = chunks - 1 - step
        pos, inside, j, m = _chunk(n, dilation, n_chains, k, CIRCULAR, L, CH)
        mask = valid & inside
        tl.debug_barrier()
        u = tl.load(work + _offsets(b, c, rows, pos, work_sb, work_sc, work_sr, work_sl), mask=mask, other=0.0)
        tl.debug_barrier()
        if CIRCULAR:
            u = u + power(-bb, j + 1) * u_last
        u = tl.where(mask, u, 0.0)
        v = tl.associative_scan((tl.zeros_like(u) - a, u), 1, linear_combine, reverse=True)[1]
        v = tl.where(mask, v + power(-a, k * L + L - j) * carry, 0.0)
        carry = tl.sum(tl.where(j == k * L, v, 0.0), 1, keep_dims=True)
        y = exact_from_open(v, j, m, a, bb, y_first, CIRCULAR)
        tl.store(dst + _offsets(b, c, rows, pos, dst_sb, dst_sc, dst_sr, dst_sl), y.to(dst.dtype.element_ty),
                 mask=mask)


@triton.jit
def _chunked_factors(src, src_sb, src_sc, src_sr, src_sl, dst, dst_sb, dst_sc, dst_sr, dst_sl,
                     work, work_sb, work_sc, work_sr, work_sl, taps, b, c, valid, rows, n, dilation, n_chains,
                     chunks, Q: tl.constexpr, TAP0: tl.constexpr, CIRCULAR: tl.constexpr, ACC: tl.constexpr,
                     R: tl.constexpr, L: tl.constexpr, CH: tl.constexpr, CB: tl.constexpr):
    """``dst = `` the Q factors of one axis (taps ``4q + TAP0``, ``4q + TAP0 + 1``) applied along
    the lines of ``src``, factor 1 first, through ``work`` (which may be ``dst``)."""
    for q in tl.static_range(Q):
        if q == 0:
            source, s_sb, s_sc, s_sr, s_sl = src, src_sb, src_sc, src_sr, src_sl
        else:
            source, s_sb, s_sc, s_sr, s_sl = work, work_sb, work_sc, work_sr, work_sl
        if q == Q - 1:
            target, t_sb, t_sc, t_sr, t_sl = dst, dst_sb, dst_sc, dst_sr, dst_sl
        else:
            target, t_sb, t_sc, t_sr, t_sl = work, work_sb, work_sc, work_sr, work_sl
        _chunked_factor(source, s_sb, s_sc, s_sr, s_sl, target, t_sb, t_sc, t_sr, t_sl,
                        work, work_sb, work_sc, work_sr, work_sl, _line_tap(taps, 4 * q + TAP0),
                        _line_tap(taps, 4 * q + TAP0 + 1), b, c, valid, rows, n, dilation, n_chains, chunks,
                        CIRCULAR, ACC, R, L, CH, CB)


_SIZES = ["C", "n_rows", "n", "dilation", "n_chains", "chunks"]
_STRIDES = ["sb", "sc", "sr", "sl"]


@triton.jit(do_not_specialize=_SIZES + [f"{p}_{s}" for p in ("src", "dst", "work") for s in _STRIDES])
def chunked_forward_kernel(src, dst, work, alpha, C, n_rows, n, dilation, n_chains, chunks,
                           src_sb, src_sc, src_sr, src_sl, dst_sb, dst_sc, dst_sr, dst_sl,
                           work_sb, work_sc, work_sr, work_sl,
                           Q: tl.constexpr, QP: tl.constexpr, TAP0: tl.constexpr, CIRCULAR: tl.constexpr,
                           REPARAM: tl.constexpr, ACC: tl.constexpr, R: tl.constexpr, L: tl.constexpr,
                           CH: tl.constexpr, CB: tl.constexpr):
    """``dst = `` the Q factors of one axis applied along the lines of ``src``, through the
    float32 (float64) ``work`` buffer (which may be ``dst``)."""
    b, c, c_inside, rows, rows_inside = _program(C, n_rows, R, CB)
    valid = rows_inside & c_inside[None, None, None, :]
    taps = channel_taps(alpha, c, c_inside, Q, QP, REPARAM, ACC)
    _chunked_factors(src, src_sb, src_sc, src_sr, src_sl, dst, dst_sb, dst_sc, dst_sr, dst_sl,
                     work, work_sb, work_sc, work_sr, work_sl, taps, b, c, valid, rows, n, dilation, n_chains,
                     chunks, Q, TAP0, CIRCULAR, ACC, R, L, CH, CB)


@triton.jit(do_not_specialize=_SIZES + ["row0", "rows_per_channel"]
            + [f"{p}_{s}" for p in ("src", "grad", "dst", "work") for s in _STRIDES])
def chunked_backward_kernel(src, grad, dst, work_y, work_z, work_g, alpha, partial, C, n_rows, n, dilation,
                            n_chains, chunks, row0, rows_per_channel,
                            src_sb, src_sc, src_sr, src_sl, grad_sb, grad_sc, grad_sr, grad_sl,
                            dst_sb, dst_sc, dst_sr, dst_sl, work_sb, work_sc, work_sr, work_sl,
                            Q: tl.constexpr, QP: tl.constexpr, TAP0: tl.constexpr, CIRCULAR: tl.constexpr,
                            REPARAM: tl.constexpr, ACC: tl.constexpr, R: tl.constexpr, L: tl.constexpr,
                            CH: tl.constexpr, CB: tl.constexpr, SRC_SOLVED: tl.constexpr):
    """Thm 4 for the Q factors of one axis along the lines: ``src`` is their input (their
    output if ``SRC_SOLVED``), ``grad`` the gradient of their output, ``dst`` receives the
    gradient of their input; ``work_y``, ``work_z``, ``work_g``: float32 (float64) scratch
    with one set of strides. Tap gradients: one row of ``partial`` per channel, as in
    ``backward_kernel``."""
    b, c, c_inside, rows, rows_inside = _program(C, n_rows, R, CB)
    valid = rows_inside & c_inside[None, None, None, :]
    taps = channel_taps(alpha, c, c_inside, Q, QP, REPARAM, ACC)
    if not SRC_SOLVED:
        _chunked_factors(src, src_sb, src_sc, src_sr, src_sl, work_y, work_sb, work_sc, work_sr, work_sl,
                         work_y, work_sb, work_sc, work_sr, work_sl, taps, b, c, valid, rows, n, dilation, n_chains,
                         chunks, Q, TAP0, CIRCULAR, ACC, R, L, CH, CB)
    grads = tl.zeros([CB, QP * 4], ACC)
    for step in tl.static_range(Q):
        q = Q - 1 - step
        left = _line_tap(taps, 4 * q + TAP0)
        right = _line_tap(taps, 4 * q + TAP0 + 1)
        # factor q's output y and where its input goes: src (if given) first, then the two work
        # buffers in turn
        if SRC_SOLVED and step == 0:
            y, y_sb, y_sc, y_sr, y_sl = src, src_sb, src_sc, src_sr, src_sl
        elif (step % 2 == 1) == SRC_SOLVED:
            y, y_sb, y_sc, y_sr, y_sl = work_y, work_sb, work_sc, work_sr, work_sl
        else:
            y, y_sb, y_sc, y_sr, y_sl = work_z, work_sb, work_sc, work_sr, work_sl
        if (step % 2 == 0) == SRC_SOLVED:
            spare = work_y
        else:
            spare = work_z
        if step == 0:
            g_in, g_sb, g_sc, g_sr, g_sl = grad, grad_sb, grad_sc, grad_sr, grad_sl
        else:
            g_in, g_sb, g_sc, g_sr, g_sl = work_g, work_sb, work_sc, work_sr, work_sl
        # the transposed factor: left and right swapped
        _chunked_factor(g_in, g_sb, g_sc, g_sr, g_sl, work_g, work_sb, work_sc, work_sr, work_sl,
                        work_g, work_sb, work_sc, work_sr, work_sl, right, left, b, c, valid, rows,
                        n, dilation, n_chains, chunks, CIRCULAR, ACC, R, L, CH, CB)
        grad_left = tl.zeros([CB], ACC)
        grad_right = tl.zeros([CB], ACC)
        for k in range(0, chunks):
            pos, inside, j, m = _chunk(n, dilation, n_chains, k, CIRCULAR, L, CH)
            mask = valid & inside
            pos_next, has_next = _neighbour_position(n, dilation, n_chains, j, m, 1, CIRCULAR, CH)
            pos_prev, has_prev = _neighbour_position(n, dilation, n_chains, j, m, -1, CIRCULAR, CH)
            tl.debug_barrier()
            g = tl.load(work_g + _offsets(b, c, rows, pos, work_sb, work_sc, work_sr, work_sl), mask=mask, other=0.0)
            y_here = tl.load(y + _offsets(b, c, rows, pos, y_sb, y_sc, y_sr, y_sl), mask=mask, other=0.0).to(ACC)
            y_next = tl.load(y + _offsets(b, c, rows, pos_next, y_sb, y_sc, y_sr, y_sl), mask=mask & has_next,
                             other=0.0).to(ACC)
            y_prev = tl.load(y + _offsets(b, c, rows, pos_prev, y_sb, y_sc, y_sr, y_sl), mask=mask & has_prev,
                             other=0.0).to(ACC)
            grad_left -= _line_channel_sum(g * y_next)
            grad_right -= _line_channel_sum(g * y_prev)
            if q == 0:
                tl.store(dst + _offsets(b, c, rows, pos, dst_sb, dst_sc, dst_sr, dst_sl), g.to(dst.dtype.element_ty),
                         mask=mask)
            else:
                tl.store(spare + _offsets(b, c, rows, pos, work_sb, work_sc, work_sr, work_sl),
                         y_here + right * y_prev + left * y_next, mask=mask)
        grads = with_tap(with_tap(grads, 4 * q + TAP0, grad_left), 4 * q + TAP0 + 1, grad_right)
    cols = tl.arange(0, QP * 4)[None, :]
    row = c[:, None].to(tl.int64) * rows_per_channel + row0 + b * tl.num_programs(1) + tl.program_id(1)
    tl.store(partial + row * (4 * Q) + cols, grads, mask=(cols < 4 * Q) & c_inside[:, None])
