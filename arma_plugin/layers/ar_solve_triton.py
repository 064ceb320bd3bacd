"""GPU AR solve: Triton kernels, one program per (plane, tile of lines), one launch per axis.

A factor ``y[i] + right*y[i-d] + left*y[i+d]`` acts independently on each chain of
positions ``start, start+d, start+2d, …`` (``zeros``: the ``min(n, d)`` chains, ``y = 0``
past the ends; ``circular``: the ``gcd(n, d)`` cycles of length ``n/gcd(n, d)``). On a
chain it is ``s(1 + a·U)(1 + b·L)`` (``L``/``U``: previous/next element of the chain,
``s = (1 + sqrt(1 - 4·left·right))/2``, ``a = left/s``, ``b = right/s``; ``|a|, |b| < 1``
whenever ``|left| + |right| < 1``, Thm 6), up to the boundary:

- ``circular``: exactly the product (circulants commute);
- ``zeros``: the product plus ``s·a·b·e_0 e_0ᵀ`` (``L·U`` misses its first diagonal entry).

So each factor is solved exactly by one causal and one anti-causal first-order
recursion (both stable), started from the right boundary value, which a read-only
sweep computes first in closed form: the cyclic wrap-around (``u_{-1} = u_{m-1}``,
``v_m = v_0``) for ``circular``, the rank-one (Sherman–Morrison) term ``y_0`` for
``zeros``. Three sweeps per factor along the chain, each a vector operation over a
tile of ``BLOCK_LINES`` lines (coalesced along H, strided along W), no pivot table.

Forward: one launch along H (``x`` → float32 work buffer), one along W (work → output
in the input dtype): all Q factors of an axis inside one launch, float32 accumulation
(float64 for float64 input), loads and stores in the tensors' own dtype and strides.

Backward (Thm 4) from ``X`` and ``dY`` only: one launch re-solves ``V = A_H^{-1} X``;
one launch along W solves the W factors of ``V`` (the states) and, factor by factor
from the last, does the transposed solve of the gradient (``left``/``right`` swapped),
pairs it with the state for the tap gradients (``-Σ u[i]·z[i∓d]``, fused in the last
sweep) and re-applies the factor to the state; one launch does the same along H and
writes ``dX``. Tap gradients: one partial sum per line and tap, summed once on device
(no reduction inside the kernels). No host synchronisation. Only valid for taps inside the
stable region (the dispatcher checks, as for numba).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Lines per program, warps per program and loop iterations in flight (Triton's software
# pipelining of each sweep's loads; 1 = none), read at each call: the GPU benchmark
# (scripts/gpu_check.py) times alternatives by setting them; not yet measured on a GPU.
BLOCK_LINES = 64
NUM_WARPS = 2
PIPELINE_STAGES = 1


@triton.jit
def _chain_solve(src, src_off, src_step, mid, mid_off, mid_step, dst, dst_off, dst_step, mask,
                 z, z_off, z_step, start, m, d, n, left, right, apply_left, apply_right,
                 CIRCULAR: tl.constexpr, PAIR: tl.constexpr, APPLY: tl.constexpr, BLOCK: tl.constexpr,
                 STAGES: tl.constexpr):
    """Solve one factor on one chain of every line in the tile: ``src`` → ``dst`` (``mid``: scratch).

    With ``PAIR`` the last sweep also returns ``(Σ y[j]·z[j+1], Σ y[j]·z[j-1])`` over the
    chain, per line (the tap-gradient pairings), and, with ``APPLY``, replaces ``z`` by
    ``z[j] + apply_right·z[j-1] + apply_left·z[j+1]`` (the factor applied to the state).
    """
    acc_t = left.dtype
    s = 0.5 * (1.0 + tl.sqrt(1.0 - 4.0 * left * right))
    a = left / s
    b = right / s
    inv_s = 1.0 / s
    one = tl.full([], 1.0, acc_t)
    src = src + src_off
    mid = mid + mid_off
    dst = dst + dst_off
    # A sweep reads what an earlier one wrote. Unpipelined, every thread reads back its own
    # stores (same offsets, same layout); pipelined loads go through shared memory and may be
    # issued by other threads, so the earlier stores are made visible to them first.
    if STAGES > 1:
        tl.debug_barrier()
    # Sweep 1 (read only): the open causal recursion w[j] = x[j]/s - b·w[j-1] and what the
    # boundary needs from it.
    w = tl.zeros([BLOCK], acc_t)
    if CIRCULAR:
        pow_b = one
        for j in tl.range(m, num_stages=STAGES):
            x = tl.load(src + ((start + j * d) % n).to(tl.int64) * src_step, mask=mask, other=0.0).to(acc_t)
            w = x * inv_s - b * w
            pow_b = pow_b * -b
        u = w / (1.0 - pow_b)  # u[m-1] of the closed cycle: the causal start u[-1]
    else:
        w_sum = tl.zeros([BLOCK], acc_t)  # Σ (-a)^j w[j]
        pow_a = one
        pow_ab = one
        ab_sum = tl.zeros([], acc_t)  # Σ_{j<m} (ab)^j
        for j in tl.range(m, num_stages=STAGES):
            x = tl.load(src + (start + j * d).to(tl.int64) * src_step, mask=mask, other=0.0).to(acc_t)
            w = x * inv_s - b * w
            w_sum += pow_a * w
            pow_a = pow_a * -a
            ab_sum += pow_ab
            pow_ab = pow_ab * (a * b)
        u = a * (w_sum / (ab_sum + pow_ab))  # a·y[0]: the rank-one boundary term
    # Sweep 2: causal u[j] = x[j]/s - b·u[j-1] (exact start), stored in mid.
    u_sum = tl.zeros([BLOCK], acc_t)  # Σ (-a)^j u[j], for the cyclic anti-causal start
    pow_a = one
    for j in tl.range(m, num_stages=STAGES):
        pos = ((start + j * d) % n if CIRCULAR else start + j * d).to(tl.int64)
        x = tl.load(src + pos * src_step, mask=mask, other=0.0).to(acc_t)
        u = x * inv_s - b * u
        tl.store(mid + pos * mid_step, u.to(mid.dtype.element_ty), mask=mask)
        if CIRCULAR:
            u_sum += pow_a * u
            pow_a = pow_a * -a
    if CIRCULAR:
        y = u_sum / (1.0 - pow_a)  # v[0] of the closed cycle: the anti-causal start v[m]
    else:
        y = tl.zeros([BLOCK], acc_t)
    # Sweep 3: anti-causal y[j] = u[j] - a·y[j+1], into dst; optionally paired with z.
    if STAGES > 1:
        tl.debug_barrier()
    pair_next = tl.zeros([BLOCK], acc_t)
    pair_prev = tl.zeros([BLOCK], acc_t)
    if PAIR:
        z = z + z_off
        z_cur = tl.load(z + ((start + (m - 1) * d) % n).to(tl.int64) * z_step, mask=mask, other=0.0)
        z_wrap = z_cur  # z[m-1] before it is overwritten: z[j-1] of j = 0 on a cycle
        if CIRCULAR:
            z_next = tl.load(z + (start % n).to(tl.int64) * z_step, mask=mask, other=0.0)
        else:
            z_next = tl.zeros([BLOCK], acc_t)
    for jj in tl.range(m, num_stages=STAGES):
        j = m - 1 - jj
        pos = ((start + j * d) % n if CIRCULAR else start + j * d).to(tl.int64)
        y = tl.load(mid + pos * mid_step, mask=mask, other=0.0).to(acc_t) - a * y
        tl.store(dst + pos * dst_step, y.to(dst.dtype.element_ty), mask=mask)
        if PAIR:
            if CIRCULAR:
                prev_pos = ((start + (j - 1 + m) * d) % n).to(tl.int64)  # m·d ≡ 0 (mod n)
                z_prev = tl.load(z + prev_pos * z_step, mask=mask & (j >= 1), other=0.0)
                z_prev = tl.where(j >= 1, z_prev, z_wrap)
            else:
                prev_pos = (start + (j - 1) * d).to(tl.int64)
                z_prev = tl.load(z + prev_pos * z_step, mask=mask & (j >= 1), other=0.0)
            pair_next += y * z_next
            pair_prev += y * z_prev
            if APPLY:
                tl.store(z + pos * z_step, z_cur + apply_right * z_prev + apply_left * z_next, mask=mask)
            z_next = z_cur
            z_cur = z_prev
    return pair_next, pair_prev


@triton.jit
def _tile(C, n_lines, src_sb, src_sc, src_sl, out_sb, out_sc, out_sl, BLOCK: tl.constexpr):
    """Program → (channel, line mask, per-line offsets in the source and in the output layout)."""
    plane = tl.program_id(0)
    lines = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = lines < n_lines
    b = (plane // C).to(tl.int64)
    c = plane % C
    lines = lines.to(tl.int64)
    src_off = b * src_sb + c * src_sc + lines * src_sl
    out_off = b * out_sb + c * out_sc + lines * out_sl
    return c, mask, src_off, out_off


# Sizes and strides are not specialised on (Triton would compile a variant per value == 1
# and per divisibility by 16): one compiled kernel per dtype × Q × boundary × axis role.
_SIZES = ["C", "n", "n_lines", "d", "n_chains"]
_STRIDES = ["sb", "sc", "sn", "sl"]


@triton.jit
def _chain_length(n, d, n_chains, r, CIRCULAR: tl.constexpr):
    """Positions on chain ``r`` (``r, r+d, …``): a whole cycle, or up to the map's edge."""
    return n // n_chains if CIRCULAR else (n - r + d - 1) // d


@triton.jit
def _solve_axis(src, src_off, src_step, work, dst, out_off, out_step, taps, c, mask, n, d, n_chains,
                TAP: tl.constexpr, Q: tl.constexpr, CIRCULAR: tl.constexpr, BLOCK: tl.constexpr,
                STAGES: tl.constexpr):
    """All Q factors along one axis for every line of the tile: factor 0 reads ``src``, the
    last writes ``dst``, ``work`` (output layout) holds the states between."""
    for q in tl.static_range(Q):
        left = tl.load(taps + (c * Q + q) * 4 + TAP).to(work.dtype.element_ty)
        right = tl.load(taps + (c * Q + q) * 4 + TAP + 1).to(work.dtype.element_ty)
        for r in range(n_chains):
            m = _chain_length(n, d, n_chains, r, CIRCULAR)
            if q == 0:
                a_ptr, a_off, a_step = src, src_off, src_step
            else:
                a_ptr, a_off, a_step = work, out_off, out_step
            if q == Q - 1:
                o_ptr = dst
            else:
                o_ptr = work
            _chain_solve(a_ptr, a_off, a_step, work, out_off, out_step, o_ptr, out_off, out_step, mask,
                         work, out_off, out_step, r, m, d, n, left, right, left, right,
                         CIRCULAR, False, False, BLOCK, STAGES)


@triton.jit(do_not_specialize=_SIZES + [f"src_{s}" for s in _STRIDES] + [f"out_{s}" for s in _STRIDES])
def _forward_axis_kernel(src, work, dst, taps, C, n, n_lines, d, n_chains,
                         src_sb, src_sc, src_sn, src_sl, out_sb, out_sc, out_sn, out_sl,
                         TAP: tl.constexpr, Q: tl.constexpr, CIRCULAR: tl.constexpr, BLOCK: tl.constexpr,
                         STAGES: tl.constexpr):
    """All Q factors along one axis: factor 0 reads ``src``, the last writes ``dst``, ``work`` between."""
    c, mask, src_off, out_off = _tile(C, n_lines, src_sb, src_sc, src_sl, out_sb, out_sc, out_sl, BLOCK)
    _solve_axis(src, src_off, src_sn, work, dst, out_off, out_sn, taps, c, mask, n, d, n_chains,
                TAP, Q, CIRCULAR, BLOCK, STAGES)


@triton.jit(do_not_specialize=_SIZES + [f"g_{s}" for s in _STRIDES] + [f"out_{s}" for s in _STRIDES])
def _backward_axis_kernel(grad, u_work, u_dst, z_work, taps, partial, C, n, n_lines, d, n_chains,
                          g_sb, g_sc, g_sn, g_sl, out_sb, out_sc, out_sn, out_sl,
                          TAP: tl.constexpr, Q: tl.constexpr, CIRCULAR: tl.constexpr,
                          SOLVE_STATES: tl.constexpr, UNDO_FIRST: tl.constexpr, BLOCK: tl.constexpr,
                          STAGES: tl.constexpr):
    """Thm 4 along one axis, last factor first (see the module docstring).

    ``z_work`` holds the state before this axis's factors (solved here first if
    ``SOLVE_STATES``); ``grad`` the incoming gradient; ``u_dst`` receives the outgoing one.
    The tap gradients ``(d left, d right)`` of every factor go to ``partial``, one partial sum
    per line (summed on device by the caller; a line past the map's edge contributes 0).
    """
    c, mask, g_off, out_off = _tile(C, n_lines, g_sb, g_sc, g_sl, out_sb, out_sc, out_sl, BLOCK)
    acc_t = z_work.dtype.element_ty
    if SOLVE_STATES:
        _solve_axis(z_work, out_off, out_sn, z_work, z_work, out_off, out_sn, taps, c, mask, n, d, n_chains,
                    TAP, Q, CIRCULAR, BLOCK, STAGES)
    slots = ((tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * BLOCK + tl.arange(0, BLOCK)) * (2 * Q)
    for k in tl.static_range(Q - 1, -1, -1):
        left = tl.load(taps + (c * Q + k) * 4 + TAP).to(acc_t)
        right = tl.load(taps + (c * Q + k) * 4 + TAP + 1).to(acc_t)
        grad_left = tl.zeros([BLOCK], acc_t)
        grad_right = tl.zeros([BLOCK], acc_t)
        for r in range(n_chains):
            m = _chain_length(n, d, n_chains, r, CIRCULAR)
            if k == Q - 1:
                a_ptr, a_off, a_step = grad, g_off, g_sn
            else:
                a_ptr, a_off, a_step = u_work, out_off, out_sn
            if k == 0:
                o_ptr = u_dst
            else:
                o_ptr = u_work
            # transposed factor: left and right swapped
            pair_next, pair_prev = _chain_solve(a_ptr, a_off, a_step, u_work, out_off, out_sn, o_ptr, out_off,
                                                out_sn, mask, z_work, out_off, out_sn, r, m, d, n, right, left,
                                                left, right, CIRCULAR, True, (k > 0) or UNDO_FIRST, BLOCK,
                                                STAGES)
            grad_left -= pair_next
            grad_right -= pair_prev
        tl.store(partial + slots + 2 * k, grad_left)
        tl.store(partial + slots + 2 * k + 1, grad_right)


def _chains(n: int, dilation: int, circular: bool) -> int:
    return math.gcd(n, dilation) if circular else min(n, dilation)


def _accumulator_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _axis_args(t: torch.Tensor, axis: int) -> tuple[int, int, int, int]:
    """(batch, channel, solve-axis, line-axis) strides of ``t`` for a solve along dim ``axis``."""
    sb, sc, sh, sw = t.stride()
    return (sb, sc, sh, sw) if axis == 2 else (sb, sc, sw, sh)


def _launch_forward(src, work, dst, taps, axis, circular, dilation):
    b, c, h, w = src.shape
    n, n_lines = (h, w) if axis == 2 else (w, h)
    grid = (b * c, triton.cdiv(n_lines, BLOCK_LINES))
    _forward_axis_kernel[grid](src, work, dst, taps, c, n, n_lines, dilation, _chains(n, dilation, circular),
                               *_axis_args(src, axis), *_axis_args(work, axis),
                               TAP=0 if axis == 2 else 2, Q=taps.shape[1], CIRCULAR=circular,
                               BLOCK=BLOCK_LINES, STAGES=PIPELINE_STAGES, num_warps=NUM_WARPS)


def triton_ar_solve(x: torch.Tensor, taps: torch.Tensor, boundary: str, dilation: int) -> torch.Tensor:
    """``Y = A^{-1} X`` for ``x`` ``[B, C, H, W]`` (any float dtype and strides), taps ``[C, Q, 4]``."""
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    acc = _accumulator_dtype(x)
    taps = taps.detach().to(acc).contiguous()
    work = out if out.dtype == acc else torch.empty_like(out, dtype=acc)
    circular = boundary == "circular"
    _launch_forward(x, work, work, taps, 2, circular, dilation)
    _launch_forward(work, work, out, taps, 3, circular, dilation)
    return out


def triton_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, boundary: str,
                             dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dtaps)`` from ``dL/dY`` and the saved input ``X`` (see the module docstring)."""
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(taps)
    b, c, h, w = x.shape
    q = taps.shape[1]
    acc = _accumulator_dtype(x)
    taps_acc = taps.detach().to(acc).contiguous()
    circular = boundary == "circular"
    state = torch.empty_like(grad_x, dtype=acc)
    grad_v = grad_x if grad_x.dtype == acc else torch.empty_like(grad_x, dtype=acc)
    _launch_forward(x, state, state, taps_acc, 2, circular, dilation)
    grad_taps = []
    for axis, grad_in, grad_out, solve_states in ((3, grad_y, grad_v, True), (2, grad_v, grad_x, False)):
        n, n_lines = (h, w) if axis == 2 else (w, h)
        tiles = triton.cdiv(n_lines, BLOCK_LINES)
        partial = torch.empty(b, c, tiles * BLOCK_LINES, q, 2, dtype=acc, device=x.device)
        _backward_axis_kernel[(b * c, tiles)](
            grad_in, grad_v, grad_out, state, taps_acc, partial, c, n, n_lines, dilation,
            _chains(n, dilation, circular), *_axis_args(grad_in, axis), *_axis_args(state, axis),
            TAP=0 if axis == 2 else 2, Q=q, CIRCULAR=circular, SOLVE_STATES=solve_states,
            UNDO_FIRST=solve_states, BLOCK=BLOCK_LINES, STAGES=PIPELINE_STAGES, num_warps=NUM_WARPS)
        grad_taps.append(partial.sum((0, 2)))
    grad_h, grad_w = grad_taps[1], grad_taps[0]
    return grad_x, torch.cat((grad_h, grad_w), -1).to(taps.dtype)


INTERPRETED = not isinstance(_forward_axis_kernel, triton.runtime.JITFunction)
"""Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when this module
was imported): then they take CPU tensors, and nothing else."""
