"""Triton kernels of the AR solve: register tiles, first-order scans, taps computed on chip.

A tile holds a block of ``CB`` planes (channels ``c0 … c0+CB-1`` of one image) as
``[LH, CHH, LW, CHW, CB]``: ``CB = 1`` when W is the tensor's fastest axis (NCHW), so lanes
run along W; ``CB`` channels filling a 32-byte sector when C is (channels_last), so lanes run
across channels and every load and store is sector-aligned. Along an axis that the kernel
solves, ``(j, r)`` is position ``j`` of chain ``r`` (the positions ``r, r+d, r+2d, …`` that a
dilated factor couples; for ``circular`` the ``gcd(n, d)`` cycles ``(r + j·d) mod n``); along
an axis it does not solve, ``(j, 0)`` is position ``block0 + j``. With ``d = 1`` there is one
chain and the tile is the plain ``[H, W, CB]`` block; with ``d | n`` the flattened ``(j, r)`` is
the memory order again, so every load and store stays contiguous along the tensor's fastest axis.
Taps are per channel: ``[CB]`` vectors broadcast along the channel axis.

A factor ``y[i] + right·y[i-d] + left·y[i+d]`` is ``s(1 + b·L)(1 + a·U)`` on a chain (``L``/``U``:
previous/next element, ``s = (1 + sqrt(1 - 4·left·right))/2``, ``a = left/s``, ``b = right/s``,
``|a|, |b| < 1`` inside the stable region, Thm 6), up to the boundary: exact for ``circular``
(circulants), ``+ s·a·b·e_0 e_0ᵀ`` for ``zeros``. Each first-order recursion is a
``tl.associative_scan`` along the chain axis (``(p₁, s₁)∘(p₂, s₂) = (p₁p₂, s₁p₂ + s₂)``), started
from zero; the exact solution differs from that open solution by a term in closed form whose
coefficient comes from the scan's first or last element (the cyclic wrap for ``circular``, the
Sherman–Morrison rank-one term for ``zeros``).

Backward (Thm 4) re-solves from the saved ``X``, then walks the factors back, last first: the
transposed solve of the gradient (``left``/``right`` swapped), the tap gradients
``-Σ g[i]·y[i±d]`` against the factor's output ``y``, and the factor re-applied to ``y`` to get
its input. Tap gradients leave each program as one partial sum per channel and tap; one small kernel
sums them per channel and applies the re-parameterisation's chain rule (Thm 7).

``forward_kernel``/``backward_kernel`` solve one tile per program (``forward_tile``,
``backward_tile``); ``ar_solve_triton_walks`` gives a program a whole plane and loops over its
tiles with them.
"""
from __future__ import annotations

import triton
import triton.language as tl

TANH_LIMIT = tl.constexpr(1.0 - 2.0 ** -16)  # arma_plugin.layers.ar_taps.TANH_LIMIT (checked by the tests)
INV_SQRT2 = tl.constexpr(0.7071067811865476)


@triton.jit
def linear_combine(p1, s1, p2, s2):
    return p1 * p2, s1 * p2 + s2


@triton.jit
def power(base, e):
    """``base**e`` for a scalar ``|base| < 1`` and integer ``e >= 0`` (tensor)."""
    magnitude = tl.exp2(e.to(base.dtype) * tl.log2(tl.abs(base)))
    magnitude = tl.where(e == 0, 1.0, magnitude)
    odd = (e % 2) == 1
    return tl.where(base < 0, tl.where(odd, -magnitude, magnitude), magnitude)


@triton.jit
def _tanh(v):
    """tanh to a few ulp without cancellation near 0: ``-expm1(-2|v|) / (2 + expm1(-2|v|))``,
    expm1 by Kahan's ``(e - 1)·x / log(e)``."""
    x = -2.0 * tl.abs(v)
    e = tl.exp(x)
    em1 = tl.where(e == 1.0, x, (e - 1.0) * x / tl.log(tl.where(e == 1.0, 2.0, e)))
    em1 = tl.where(e == 0.0, -1.0, em1)
    t = -em1 / (2.0 + em1)
    return tl.where(v < 0, -t, t)


@triton.jit
def _capped_tanh(v):
    t = _tanh(v)
    return tl.minimum(tl.maximum(t, -TANH_LIMIT), TANH_LIMIT)


@triton.jit
def _rotate_pairs(v, QP: tl.constexpr, SECOND_MINUS_FIRST: tl.constexpr):
    """Per (factor, axis) pair ``(p, s)`` of each row of ``v`` ``[N, QP·4]``: ``((p + s)/√2,
    (s - p)/√2)``, or ``((p - s)/√2, (p + s)/√2)``, the transposed rotation (Thm 7's 45°
    rotation and its adjoint)."""
    first, second = tl.split(tl.reshape(v, [v.shape[0], QP * 2, 2]))
    if SECOND_MINUS_FIRST:
        rotated = tl.join((first + second) * INV_SQRT2, (second - first) * INV_SQRT2)
    else:
        rotated = tl.join((first - second) * INV_SQRT2, (first + second) * INV_SQRT2)
    return tl.reshape(rotated, [v.shape[0], QP * 4])


@triton.jit
def channel_taps(alpha, c, c_inside, Q: tl.constexpr, QP: tl.constexpr, REPARAM: tl.constexpr,
                  acc_t: tl.constexpr):
    """All taps of channels ``c`` ``[CB]`` as ``[CB, QP·4]`` (``q·4 + (f_left, f_right, g_left,
    g_right)``), one load."""
    cols = tl.arange(0, QP * 4)[None, :]
    a = tl.load(alpha + c[:, None] * (4 * Q) + cols, mask=(cols < 4 * Q) & c_inside[:, None], other=0.0).to(acc_t)
    if REPARAM:
        return _rotate_pairs(_capped_tanh(a) * INV_SQRT2, QP, True)
    return a


@triton.jit
def tap(taps, k):
    """Tap ``k`` of every channel of ``taps`` ``[CB, QP·4]``: ``[CB]``."""
    return tl.sum(tl.where(tl.arange(0, taps.shape[1])[None, :] == k, taps, 0.0), 1)


@triton.jit
def _tile_tap(taps, k):
    """Tap ``k`` shaped ``[1, 1, 1, 1, CB]`` for a tile."""
    return tap(taps, k)[None, None, None, None, :]


@triton.jit
def with_tap(taps, k, value):
    """``taps`` ``[CB, QP·4]`` with column ``k`` replaced by ``value`` ``[CB]``."""
    return tl.where(tl.arange(0, taps.shape[1])[None, :] == k, value[:, None], taps)


@triton.jit
def _channel_sum(t):
    """``[LH, CHH, LW, CHW, CB]`` summed to ``[CB]``."""
    return tl.sum(tl.sum(tl.sum(tl.sum(t, 0), 0), 0), 0)


@triton.jit
def chain_positions(n, dilation, n_chains, j, r, CIRCULAR: tl.constexpr):
    """``(position, chain length)`` of element ``0 <= j < m`` of chain ``r`` along an axis of ``n``."""
    if CIRCULAR:
        m = n // n_chains + 0 * r
        pos = (r + j * dilation) % n
    else:
        m = (n - r + dilation - 1) // dilation
        pos = r + j * dilation
    return pos, m


@triton.jit
def _axis(n, dilation, n_chains, block0, opaque_zero, SOLVED: tl.constexpr, CIRCULAR: tl.constexpr,
          L: tl.constexpr, CH: tl.constexpr):
    """``(position, inside, j, chain length)`` of one tile axis, each ``[L, CH]``; ``j`` offset by
    ``opaque_zero`` (:func:`_tile`)."""
    j = tl.arange(0, L)[:, None] + opaque_zero
    r = tl.arange(0, CH)[None, :]
    if SOLVED:
        pos, m = chain_positions(n, dilation, n_chains, j, r, CIRCULAR)
        inside = (r < n_chains) & (j < m)
    else:
        m = n + 0 * r
        pos = block0 + j + 0 * r
        inside = pos < n
    return pos, inside, j, m


@triton.jit
def causal_cycle_end(w_last, m, b):
    """``u[m-1] = w[m-1] / (1 - (-b)^m)``: the causal recursion around a cycle of ``m`` from the
    open one's last element (``u[j] = w[j] + (-b)^(j+1)·u[m-1]``)."""
    return w_last / (1.0 - power(-b, m))


@triton.jit
def exact_first(v_first, m, a, b, CIRCULAR: tl.constexpr):
    """``y[0]`` from ``v[0]``, the open anti-causal solution's first element: ``v[0] / (1 - (-a)^m)``
    around the cycle; ``v[0] / σ(m+1)`` for ``zeros``, ``σ(k) = Σ_{i<k} (ab)^i``."""
    if CIRCULAR:
        return v_first / (1.0 - power(-a, m))
    ab = a * b
    return v_first * (1.0 - ab) / (1.0 - power(ab, m + 1))


@triton.jit
def exact_from_open(v, j, m, a, b, y_first, CIRCULAR: tl.constexpr):
    """The exact solution from the open one ``v`` and ``y[0]``: ``v + (-a)^(m-j)·y[0]`` around the
    cycle; ``v - a·b·y[0]·(-b)^j·σ(m-j)`` for ``zeros`` (the rank-one term)."""
    if CIRCULAR:
        return v + power(-a, m - j) * y_first
    ab = a * b
    return v - ab * y_first * power(-b, j) * ((1.0 - power(ab, m - j)) / (1.0 - ab))


@triton.jit
def _factor_solve(t, j, m, inside, left, right, AXIS: tl.constexpr, CIRCULAR: tl.constexpr):
    """One factor solved along ``AXIS`` for every chain of the tile (module docstring)."""
    s = 0.5 * (1.0 + tl.sqrt(1.0 - 4.0 * left * right))
    a = left / s
    b = right / s
    x = tl.where(inside, t / s, 0.0)
    w = tl.associative_scan((tl.zeros_like(x) - b, x), AXIS, linear_combine)[1]
    w = tl.where(inside, w, 0.0)
    if CIRCULAR:
        w_last = tl.sum(tl.where(j == m - 1, w, 0.0), AXIS, keep_dims=True)
        w = tl.where(inside, w + power(-b, j + 1) * causal_cycle_end(w_last, m, b), 0.0)
    v = tl.associative_scan((tl.zeros_like(w) - a, w), AXIS, linear_combine, reverse=True)[1]
    v_first = tl.sum(tl.where(j == 0, v, 0.0), AXIS, keep_dims=True)
    y = exact_from_open(v, j, m, a, b, exact_first(v_first, m, a, b, CIRCULAR), CIRCULAR)
    return tl.where(inside, y, 0.0)


@triton.jit
def _neighbour(t, j, m, STEP: tl.constexpr, AXIS: tl.constexpr, CIRCULAR: tl.constexpr):
    """``t`` at chain position ``j + STEP`` (around the cycle, or 0 past a ``zeros`` edge)."""
    k = j + STEP
    if CIRCULAR:
        k = (k + m) % m
    present = (k >= 0) & (k < m)
    k = tl.broadcast_to(tl.where(present, k, 0), t.shape)
    return tl.where(present, tl.gather(t, k, AXIS), 0.0)


@triton.jit
def _factor_backward(y, g, j, m, inside, left, right, AXIS: tl.constexpr, CIRCULAR: tl.constexpr):
    """Transposed solve of ``g``, the tap gradients against the factor's output ``y``, and the
    factor's input ``A·y``: ``(g', d left, d right, input)``."""
    g = _factor_solve(g, j, m, inside, right, left, AXIS, CIRCULAR)
    y_next = _neighbour(y, j, m, 1, AXIS, CIRCULAR)
    grad_left = -_channel_sum(g * y_next)
    factor_input = y + left * y_next
    y_prev = _neighbour(y, j, m, -1, AXIS, CIRCULAR)
    grad_right = -_channel_sum(g * y_prev)
    return g, grad_left, grad_right, tl.where(inside, factor_input + right * y_prev, 0.0)


@triton.jit
def _solve_factors(t, taps, j_h, m_h, j_w, m_w, inside, Q: tl.constexpr, SOLVE_H: tl.constexpr,
                   SOLVE_W: tl.constexpr, CIRCULAR: tl.constexpr):
    """The Q factors along the solved axes applied to the tile ``t``, factor 1 first."""
    for q in tl.static_range(Q):
        if SOLVE_H:
            t = _factor_solve(t, j_h, m_h, inside, _tile_tap(taps, 4 * q), _tile_tap(taps, 4 * q + 1), 0, CIRCULAR)
        if SOLVE_W:
            t = _factor_solve(t, j_w, m_w, inside, _tile_tap(taps, 4 * q + 2), _tile_tap(taps, 4 * q + 3), 2, CIRCULAR)
    return t


@triton.jit
def program_channels(C, CB: tl.constexpr):
    """Program → (batch, its channels ``[CB]``, their mask)."""
    plane = tl.program_id(0)
    channel_blocks = tl.cdiv(C, CB)
    b = (plane // channel_blocks).to(tl.int64)
    c = (plane % channel_blocks) * CB + tl.arange(0, CB)
    return b, c, c < C


@triton.jit
def _tile(c_inside, H, W, dilation, chains_h, chains_w, block, opaque_zero, SOLVE_H: tl.constexpr,
          SOLVE_W: tl.constexpr, CIRCULAR: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr, LW: tl.constexpr,
          CHW: tl.constexpr):
    """Tile ``block`` along the axis not solved → (H and W positions and chain indices as 5-D
    tiles, mask). ``opaque_zero``: 0 where the compiler cannot see it, in a program that walks
    tiles in a loop: the chain indices and every boundary coefficient made from them are then
    computed per tile, not hoisted out of the loop and held in registers through it (on sm_90
    that hoisting spilled a 128² walk's backward)."""
    zero = opaque_zero * block  # varies with the loop's block, as far as the compiler knows
    pos_h, in_h, j_h, m_h = _axis(H, dilation, chains_h, block * LH, zero, SOLVE_H, CIRCULAR, LH, CHH)
    pos_w, in_w, j_w, m_w = _axis(W, dilation, chains_w, block * LW, zero, SOLVE_W, CIRCULAR, LW, CHW)
    mask = in_h[:, :, None, None, None] & in_w[None, None, :, :, None] & c_inside[None, None, None, None, :]
    return (pos_h[:, :, None, None, None].to(tl.int64), pos_w[None, None, :, :, None].to(tl.int64),
            j_h[:, :, None, None, None], m_h[:, :, None, None, None], j_w[None, None, :, :, None],
            m_w[None, None, :, :, None], mask)


SIZES = ["C", "H", "W", "dilation", "chains_h", "chains_w"]
_STRIDES = ["sb", "sc", "sh", "sw"]


def strides(*pointers: str) -> list[str]:
    return [f"{p}_{s}" for p in pointers for s in _STRIDES]


@triton.jit
def _offsets(b, c, pos_h, pos_w, sb, sc, sh, sw):
    return b * sb + c[None, None, None, None, :].to(tl.int64) * sc + pos_h * sh + pos_w * sw


@triton.jit
def forward_tile(src, dst, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, block, opaque_zero,
                 src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw,
                 Q: tl.constexpr, SOLVE_H: tl.constexpr, SOLVE_W: tl.constexpr, CIRCULAR: tl.constexpr,
                 ACC: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr, LW: tl.constexpr, CHW: tl.constexpr):
    """``dst = `` the Q factors along the solved axes applied to ``src``, on tile ``block``."""
    pos_h, pos_w, j_h, m_h, j_w, m_w, mask = _tile(c_inside, H, W, dilation, chains_h, chains_w, block,
                                                   opaque_zero, SOLVE_H, SOLVE_W, CIRCULAR, LH, CHH, LW, CHW)
    t = tl.load(src + _offsets(b, c, pos_h, pos_w, src_sb, src_sc, src_sh, src_sw), mask=mask, other=0.0).to(ACC)
    t = _solve_factors(t, taps, j_h, m_h, j_w, m_w, mask, Q, SOLVE_H, SOLVE_W, CIRCULAR)
    tl.store(dst + _offsets(b, c, pos_h, pos_w, dst_sb, dst_sc, dst_sh, dst_sw), t.to(dst.dtype.element_ty),
             mask=mask)


@triton.jit
def backward_tile(src, grad, dst, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, block, opaque_zero,
                  src_sb, src_sc, src_sh, src_sw, grad_sb, grad_sc, grad_sh, grad_sw,
                  dst_sb, dst_sc, dst_sh, dst_sw,
                  Q: tl.constexpr, QP: tl.constexpr, SOLVE_H: tl.constexpr, SOLVE_W: tl.constexpr,
                  CIRCULAR: tl.constexpr, ACC: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr,
                  LW: tl.constexpr, CHW: tl.constexpr, CB: tl.constexpr, SRC_SOLVED: tl.constexpr):
    """Thm 4 for the solved axes on tile ``block``: ``src`` is the input of their factors (their
    output if ``SRC_SOLVED``), ``grad`` the gradient of their output, ``dst`` receives the
    gradient of their input (``dst`` may be ``grad`` or ``src``: each tile is read before it is
    written). Returns the tile's tap gradients ``[CB, QP·4]`` (0 for an axis not solved)."""
    pos_h, pos_w, j_h, m_h, j_w, m_w, mask = _tile(c_inside, H, W, dilation, chains_h, chains_w, block,
                                                   opaque_zero, SOLVE_H, SOLVE_W, CIRCULAR, LH, CHH, LW, CHW)
    y = tl.load(src + _offsets(b, c, pos_h, pos_w, src_sb, src_sc, src_sh, src_sw), mask=mask, other=0.0).to(ACC)
    if not SRC_SOLVED:
        y = _solve_factors(y, taps, j_h, m_h, j_w, m_w, mask, Q, SOLVE_H, SOLVE_W, CIRCULAR)
    g = tl.load(grad + _offsets(b, c, pos_h, pos_w, grad_sb, grad_sc, grad_sh, grad_sw), mask=mask,
                other=0.0).to(ACC)
    grads = tl.zeros([CB, QP * 4], ACC)  # d taps, in the taps' layout
    for k in tl.static_range(Q):
        q = Q - 1 - k
        if SOLVE_W:
            g, grad_left, grad_right, y = _factor_backward(y, g, j_w, m_w, mask, _tile_tap(taps, 4 * q + 2),
                                                           _tile_tap(taps, 4 * q + 3), 2, CIRCULAR)
            grads = with_tap(with_tap(grads, 4 * q + 2, grad_left), 4 * q + 3, grad_right)
        if SOLVE_H:
            g, grad_left, grad_right, y = _factor_backward(y, g, j_h, m_h, mask, _tile_tap(taps, 4 * q),
                                                           _tile_tap(taps, 4 * q + 1), 0, CIRCULAR)
            grads = with_tap(with_tap(grads, 4 * q, grad_left), 4 * q + 1, grad_right)
    tl.store(dst + _offsets(b, c, pos_h, pos_w, dst_sb, dst_sc, dst_sh, dst_sw), g.to(dst.dtype.element_ty),
             mask=mask)
    return grads


@triton.jit
def store_partial(partial, grads, c, c_inside, row, rows, Q: tl.constexpr, QP: tl.constexpr):
    """A program's tap gradients ``[CB, QP·4]`` to row ``row`` of ``partial`` ``[C, rows, Q·4]``."""
    cols = tl.arange(0, QP * 4)[None, :]
    tl.store(partial + (c[:, None].to(tl.int64) * rows + row) * (4 * Q) + cols, grads,
             mask=(cols < 4 * Q) & c_inside[:, None])


@triton.jit(do_not_specialize=SIZES + strides("src", "dst"))
def forward_kernel(src, dst, alpha, C, H, W, dilation, chains_h, chains_w,
                   src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw,
                   Q: tl.constexpr, QP: tl.constexpr, SOLVE_H: tl.constexpr, SOLVE_W: tl.constexpr,
                   CIRCULAR: tl.constexpr, REPARAM: tl.constexpr, ACC: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr,
                   LW: tl.constexpr, CHW: tl.constexpr, CB: tl.constexpr):
    """``dst = `` the Q factors along the solved axes applied to ``src``: one read, one write."""
    b, c, c_inside = program_channels(C, CB)
    taps = channel_taps(alpha, c, c_inside, Q, QP, REPARAM, ACC)
    forward_tile(src, dst, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, tl.program_id(1), 0,
                 src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw,
                 Q, SOLVE_H, SOLVE_W, CIRCULAR, ACC, LH, CHH, LW, CHW)


@triton.jit(do_not_specialize=SIZES + ["row0", "rows"] + strides("src", "grad", "dst"))
def backward_kernel(src, grad, dst, alpha, partial, C, H, W, dilation, chains_h, chains_w, row0, rows,
                    src_sb, src_sc, src_sh, src_sw, grad_sb, grad_sc, grad_sh, grad_sw,
                    dst_sb, dst_sc, dst_sh, dst_sw,
                    Q: tl.constexpr, QP: tl.constexpr, SOLVE_H: tl.constexpr, SOLVE_W: tl.constexpr,
                    CIRCULAR: tl.constexpr, REPARAM: tl.constexpr, ACC: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr,
                    LW: tl.constexpr, CHW: tl.constexpr, CB: tl.constexpr, SRC_SOLVED: tl.constexpr):
    """:func:`backward_tile` on the program's tile; its tap gradients go to row ``row0 +
    b·rows_per_batch + block`` of ``partial`` ``[C, rows, Q·4]``, one row per channel."""
    b, c, c_inside = program_channels(C, CB)
    taps = channel_taps(alpha, c, c_inside, Q, QP, REPARAM, ACC)
    grads = backward_tile(src, grad, dst, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w,
                          tl.program_id(1), 0, src_sb, src_sc, src_sh, src_sw, grad_sb, grad_sc, grad_sh, grad_sw,
                          dst_sb, dst_sc, dst_sh, dst_sw, Q, QP, SOLVE_H, SOLVE_W, CIRCULAR, ACC, LH, CHH, LW, CHW,
                          CB, SRC_SOLVED)
    store_partial(partial, grads, c, c_inside, row0 + b * tl.num_programs(1) + tl.program_id(1), rows, Q, QP)


@triton.jit(do_not_specialize=["rows"])
def tap_gradient_kernel(partial, alpha, grad_alpha, rows, Q: tl.constexpr, QP: tl.constexpr,
                        REPARAM: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr):
    """``d alpha[c]``: the sum of channel ``c``'s rows of ``partial`` ``[C, rows, Q·4]`` (d taps),
    through the re-parameterisation (Thm 7: a 45° rotation of capped ``tanh(alpha)/√2``)."""
    c = tl.program_id(0)
    cols = tl.arange(0, QP * 4)
    acc = tl.zeros([QP * 4], ACC)
    base = partial + c.to(tl.int64) * rows * (4 * Q)
    for start in range(0, rows, ROWS):
        r = start + tl.arange(0, ROWS)
        tile = tl.load(base + r[:, None] * (4 * Q) + cols[None, :],
                       mask=(r[:, None] < rows) & (cols[None, :] < 4 * Q), other=0.0)
        acc += tl.sum(tile.to(ACC), 0)
    if REPARAM:
        a = tl.load(alpha + c * (4 * Q) + cols, mask=cols < 4 * Q, other=0.0).to(ACC)
        t = _tanh(a)
        # d c_k / d alpha_k, 0 where the cap is flat (as torch.clamp's gradient)
        slope = tl.where(tl.abs(t) <= TANH_LIMIT, (1.0 - t * t) * INV_SQRT2, 0.0)
        acc = tl.reshape(_rotate_pairs(acc[None, :], QP, False), [QP * 4]) * slope
    tl.store(grad_alpha + c * (4 * Q) + cols, acc.to(grad_alpha.dtype.element_ty), mask=cols < 4 * Q)
