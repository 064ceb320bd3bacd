"""Triton kernels of the AR solve that walk a plane: one program per plane, its tiles in a loop.

A plane too large for one program's registers but small enough for its working set to stay
in L2 (``ar_solve_triton.Tiling.walk_elements``) is owned by one program, which solves it tile
by tile with the one-tile bodies of ``ar_solve_triton_kernels`` (``forward_tile``,
``backward_tile``): one axis per phase, through a float32/float64 buffer that only this program
touches, with a barrier between phases. Each phase's tiles are independent, and each tile is
loaded before it is stored (its scans make every stored value depend on every loaded one), so
a phase may update the buffer in place. The grid has one program along axis 1, so
``tl.program_id(1)`` is a zero the compiler cannot see (``opaque_zero``: see ``_tile``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .ar_solve_triton_kernels import (SIZES, backward_tile, channel_taps, forward_tile, program_channels, store_partial,
                                      strides)


@triton.jit
def _walk_h_factors(src, work, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, blocks, opaque_zero,
                    src_sb, src_sc, src_sh, src_sw, work_sb, work_sc, work_sh, work_sw,
                    Q: tl.constexpr, CIRCULAR: tl.constexpr, ACC: tl.constexpr, LH: tl.constexpr,
                    CHH: tl.constexpr, BW: tl.constexpr):
    """A walk's first phase: the H factors of ``src`` into ``work`` on ``blocks`` tiles
    ``[H, BW]``, then a barrier (the next phase reads what other threads wrote)."""
    for block in range(blocks):
        forward_tile(src, work, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, block, opaque_zero,
                     src_sb, src_sc, src_sh, src_sw, work_sb, work_sc, work_sh, work_sw,
                     Q, True, False, CIRCULAR, ACC, LH, CHH, BW, 1)
    tl.debug_barrier()


@triton.jit(do_not_specialize=SIZES + ["blocks_h", "blocks_w"] + strides("src", "dst"))
def walked_forward_kernel(src, work, dst, alpha, C, H, W, dilation, chains_h, chains_w, blocks_h, blocks_w,
                          src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw,
                          Q: tl.constexpr, QP: tl.constexpr, CIRCULAR: tl.constexpr, REPARAM: tl.constexpr,
                          ACC: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr, BW: tl.constexpr,
                          BH: tl.constexpr, LW: tl.constexpr, CHW: tl.constexpr, CB: tl.constexpr):
    """One program per plane (block of ``CB`` channels; the grid has one program along axis 1)
    walks it in tiles: the H factors on ``blocks_h`` tiles ``[H, BW]``, ``src`` to ``work``
    (float32/float64, ``dst``'s strides; may be ``dst``), then, behind a barrier, the W
    factors on ``blocks_w`` tiles ``[BH, W]``, ``work`` to ``dst``. The program re-reads only
    what it wrote."""
    b, c, c_inside = program_channels(C, CB)
    taps = channel_taps(alpha, c, c_inside, Q, QP, REPARAM, ACC)
    opaque_zero = tl.program_id(1)
    _walk_h_factors(src, work, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, blocks_h, opaque_zero,
                    src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw, Q, CIRCULAR, ACC, LH, CHH, BW)
    for block in range(blocks_w):
        forward_tile(work, dst, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, block, opaque_zero,
                     dst_sb, dst_sc, dst_sh, dst_sw, dst_sb, dst_sc, dst_sh, dst_sw,
                     Q, False, True, CIRCULAR, ACC, BH, 1, LW, CHW)


@triton.jit(do_not_specialize=SIZES + ["blocks_h", "blocks_w", "solve_blocks_h", "rows"]
            + strides("src", "grad", "dst"))
def walked_backward_kernel(src, grad, work, dst, alpha, partial, C, H, W, dilation, chains_h, chains_w,
                           blocks_h, blocks_w, solve_blocks_h, rows,
                           src_sb, src_sc, src_sh, src_sw, grad_sb, grad_sc, grad_sh, grad_sw,
                           dst_sb, dst_sc, dst_sh, dst_sw,
                           Q: tl.constexpr, QP: tl.constexpr, CIRCULAR: tl.constexpr, REPARAM: tl.constexpr,
                           ACC: tl.constexpr, LH: tl.constexpr, CHH: tl.constexpr, BW: tl.constexpr,
                           BH: tl.constexpr, LW: tl.constexpr, CHW: tl.constexpr, CB: tl.constexpr,
                           SBW: tl.constexpr):
    """Thm 4 from ``src`` (the solve's input X), walking the plane as
    :func:`walked_forward_kernel` does, through ``work`` (float32/float64, ``dst``'s strides;
    may be ``dst``), in three phases behind barriers: the H factors' output into ``work``
    (``solve_blocks_h`` tiles ``[H, SBW]``); the W factors' backward from it and ``grad``, their
    input's gradient written over it; the H factors' backward from X and that gradient, into
    ``dst``. One row of ``partial`` per program."""
    b, c, c_inside = program_channels(C, CB)
    taps = channel_taps(alpha, c, c_inside, Q, QP, REPARAM, ACC)
    opaque_zero = tl.program_id(1)
    _walk_h_factors(src, work, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, solve_blocks_h,
                    opaque_zero, src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw, Q, CIRCULAR, ACC,
                    LH, CHH, SBW)
    grads = tl.zeros([CB, QP * 4], ACC)
    for block in range(blocks_w):
        grads += backward_tile(work, grad, work, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, block,
                               opaque_zero, dst_sb, dst_sc, dst_sh, dst_sw, grad_sb, grad_sc, grad_sh, grad_sw,
                               dst_sb, dst_sc, dst_sh, dst_sw, Q, QP, False, True, CIRCULAR, ACC, BH, 1, LW,
                               CHW, CB, False)
    tl.debug_barrier()
    for block in range(blocks_h):
        grads += backward_tile(src, work, dst, taps, b, c, c_inside, H, W, dilation, chains_h, chains_w, block,
                               opaque_zero, src_sb, src_sc, src_sh, src_sw, dst_sb, dst_sc, dst_sh, dst_sw,
                               dst_sb, dst_sc, dst_sh, dst_sw, Q, QP, True, False, CIRCULAR, ACC, LH, CHH, BW, 1,
                               CB, False)
    store_partial(partial, grads, c, c_inside, b, rows, Q, QP)
