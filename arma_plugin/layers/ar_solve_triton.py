"""GPU AR solve: Triton tile-scan kernels (``ar_solve_triton_kernels``) and their launches.

A program holds one plane (W the fastest axis, NCHW) or a block of channels that fills a
32-byte sector (C the fastest axis, channels_last: 8 float32, 16 bfloat16/float16, 4
float64), so its lanes always run along contiguous memory. Planes whose padded tile has at
most ``fused_elements`` elements (4096 float32: NCHW maps up to 64²) are solved by one
program along both axes and all Q factors: X read once, Y written once (the backward: X and
dY read once, dX written once). Larger planes spill a program's registers (a 128² float32
backward: over 1 MB per program). float32 NCHW planes up to ``walk_elements`` (16384: 128²)
are walked by one program each: the H factors tile by tile (``[H, columns]``) into a float32
buffer, then, behind a barrier, the W factors (``[rows, W]`` tiles) from it; the buffer is
the output itself in the forward and dX in the backward, whose three phases re-solve the H
factors from ``X``, walk the W factors back over the buffer in place, and walk the H factors
back into dX. A program re-reads only what it wrote, 64 KB a tensor that stays in L2: 3 T
forward, 4 T backward. Other maps take one pass per axis through a float32 (float64) buffer
in the input's layout, each program holding whole lines, or a few long lines walked in
chunks with a carried state (``ar_solve_triton_chunks``); that buffer is the forward's
state, from which the backward's W pass re-solves ``Y`` and its H pass walks the H factors
back (4 T forward, 6 T backward in float32), or, for bfloat16 and float16 input, whose ``X``
is half the state's size, the H pass re-solves them from ``X``.
Tap gradients: one partial sum per program and tap, summed per channel by one small kernel
that also applies the re-parameterisation's chain rule. No host synchronisation; launches run
under the input's device. Only valid for taps inside the stable region (the dispatcher checks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import triton

from . import ar_solve_triton_chunks as chunk_kernels
from . import ar_solve_triton_kernels as kernels
from . import ar_solve_triton_walks as walks

SECTOR_BYTES = 32


@dataclass(frozen=True)
class Tiling:
    """The plan's knobs, in float32 elements (float64 tiles hold half as many): a padded tile of
    at most ``fused_elements`` is solved by one program along both axes; a float32 NCHW plane
    of at most ``walk_elements`` by one program walking it in tiles of about ``pass_elements``
    (its backward's first solve: ``walk_solve_elements``); larger maps take one pass per axis
    with tiles of about ``pass_elements``; a line longer than ``line_positions`` (padded, all
    chains), or than ``line_elements`` with the channels of a program, is walked in chunks,
    tiles of ``chunk_elements``; ``num_warps`` per program (default: :func:`launch_options`). The
    tile limits shrink by :func:`register_weight` (float64, Q > 2) or :func:`walk_weight`.

    Compiled for sm_90 (docs/benchmarks.md), a one-program 128² backward spills over 1 MB per
    program, a 2048-position line at any warp count; 4096-element planes and passes, 1024-
    position lines, 1024-element chunks and 128² walks (4096-element tiles, 8192 for the first
    solve, 8 warps) do not. A walked plane, 64 KB a tensor, stays in L2."""
    fused_elements: int = 4096
    walk_elements: int = 16384
    walk_solve_elements: int = 8192
    pass_elements: int = 4096
    line_positions: int = 1024
    line_elements: int = 4096
    chunk_elements: int = 1024
    num_warps: int | None = None

    def for_solve(self, weight: int) -> "Tiling":
        """The tile limits for a solve of register ``weight`` (:func:`register_weight`); the walked
        plane's (float32 only: bytes in L2) stays."""
        shrink = max(weight // 4, 1)
        return replace(self, fused_elements=self.fused_elements // shrink,
                       walk_solve_elements=self.walk_solve_elements // shrink,
                       pass_elements=self.pass_elements // shrink, line_elements=self.line_elements // shrink,
                       chunk_elements=self.chunk_elements // shrink)

    def whole(self, axis: "_AxisTile", channels: int) -> bool:
        """Whether a pass holds whole lines of ``axis``."""
        positions = axis.length * axis.chains
        return positions <= self.line_positions and positions * channels <= self.line_elements


@dataclass(frozen=True)
class _AxisTile:
    """One axis of a tile: ``(length, chains)`` when solved (``longest``: the longest chain,
    ``length`` padded to a power of two), ``(block, 1)`` otherwise."""
    length: int
    chains: int
    n_chains: int
    longest: int = 0


def _solved_axis(n: int, dilation: int, circular: bool) -> _AxisTile:
    n_chains = math.gcd(n, dilation) if circular else min(n, dilation)
    longest = n // n_chains if circular else -(-n // dilation)
    return _AxisTile(triton.next_power_of_2(longest), triton.next_power_of_2(n_chains), n_chains, longest)


@dataclass(frozen=True)
class _Pass:
    """A launch of ``forward_kernel``/``backward_kernel``: which axes it solves, the tile along
    each axis, the channels per program and the programs per channel block."""
    solve_h: bool
    solve_w: bool
    tile_h: _AxisTile
    tile_w: _AxisTile
    channels: int
    blocks: int

    def constants(self) -> dict:
        return dict(SOLVE_H=self.solve_h, SOLVE_W=self.solve_w, LH=self.tile_h.length, CHH=self.tile_h.chains,
                    LW=self.tile_w.length, CHW=self.tile_w.chains, CB=self.channels)

    def elements(self) -> int:
        return (self.tile_h.length * self.tile_h.chains * self.tile_w.length * self.tile_w.chains
                * self.channels)


@dataclass(frozen=True)
class _ChunkedPass:
    """A launch of the chunked kernels along one axis: ``rows`` lines per program, each chain
    walked ``length`` positions at a time, ``chunks`` times."""
    solve_h: bool
    rows: int
    length: int
    chains: _AxisTile
    channels: int
    chunks: int
    blocks: int

    def constants(self) -> dict:
        return dict(TAP0=0 if self.solve_h else 2, R=self.rows, L=self.length, CH=self.chains.chains,
                    CB=self.channels)

    def elements(self) -> int:
        return self.rows * self.length * self.chains.chains * self.channels


@dataclass(frozen=True)
class _Walk:
    """A launch of ``walked_forward_kernel``/``walked_backward_kernel``: one program per plane
    walks the tiles of an H pass, then those of a W pass, through a buffer; the backward's
    first phase, a solve without gradients, walks ``solve_h``'s wider H tiles (fewer loads and
    stores per program)."""
    pass_h: _Pass
    pass_w: _Pass
    solve_h: _Pass
    weight: int  # register bytes per element its tiles were sized for (walk_weight)
    blocks = 1  # programs per channel block

    @property
    def channels(self) -> int:
        return self.pass_h.channels

    def constants(self, backward: bool = False) -> dict:
        consts = dict(LH=self.pass_h.tile_h.length, CHH=self.pass_h.tile_h.chains, BW=self.pass_h.tile_w.length,
                      BH=self.pass_w.tile_h.length, LW=self.pass_w.tile_w.length, CHW=self.pass_w.tile_w.chains,
                      CB=self.channels)
        return dict(consts, SBW=self.solve_h.tile_w.length) if backward else consts

    def sizes(self, backward: bool = False) -> tuple[int, ...]:
        """The number of tiles of each phase."""
        blocks = (self.pass_h.blocks, self.pass_w.blocks)
        return blocks + (self.solve_h.blocks,) if backward else blocks

    def elements(self) -> int:
        return max(self.pass_h.elements(), self.pass_w.elements())


def channel_block(x: torch.Tensor, element_size: int | None = None) -> int:
    """Channels per program: 1 unless C is ``x``'s fastest axis (channels_last), then enough
    channels of ``element_size`` bytes (``x``'s) to fill a 32-byte sector (at most C, rounded
    up to a power of two)."""
    if x.shape[1] == 1 or x.stride(1) != 1:
        return 1
    return min(triton.next_power_of_2(x.shape[1]), max(SECTOR_BYTES // (element_size or x.element_size()), 1))


def _axis_pass(solve_h: bool, axis: _AxisTile, other: int, channels: int, sector_elements: int,
               tiling: Tiling) -> _Pass | _ChunkedPass:
    """The pass that solves one axis: whole lines, or lines in chunks when they are too long.
    Rows per program: a sector's worth when they are the contiguous axis (W of an NCHW H pass)."""
    line = axis.length * axis.chains * channels
    if not tiling.whole(axis, channels):
        rows = sector_elements if solve_h and channels == 1 else 1
        length = max(tiling.chunk_elements // (rows * axis.chains * channels), 1)
        return _ChunkedPass(solve_h, rows, length, axis, channels, triton.cdiv(axis.longest, length),
                            triton.cdiv(other, rows))
    block = min(max(tiling.pass_elements // line, 1), triton.next_power_of_2(other))
    tile = _AxisTile(block, 1, 1)
    blocks = triton.cdiv(other, block)
    return _Pass(True, False, axis, tile, channels, blocks) if solve_h else _Pass(False, True, tile, axis,
                                                                                  channels, blocks)


def _plan(h: int, w: int, dilation: int, circular: bool, channels: int, sector_elements: int, tiling: Tiling,
          weight: int, walk_weight: int | None = None) -> list[_Pass | _ChunkedPass | _Walk]:
    """With ``tiling`` for register ``weight``: one fused pass if the padded tile fits ``fused_elements``
    and both axes' lines are held whole; else, given a ``walk_weight``, one walk if a program holds
    one plane (not a channels_last block: docs/benchmarks.md) of at most ``walk_elements`` whose
    lines are held whole (with ``tiling`` for ``walk_weight``); else an H pass then a W pass."""
    pass_tiling = tiling.for_solve(weight)
    axis_h, axis_w = _solved_axis(h, dilation, circular), _solved_axis(w, dilation, circular)
    fused = _Pass(True, True, axis_h, axis_w, channels, 1)
    if fused.elements() <= pass_tiling.fused_elements and all(pass_tiling.whole(axis, 1) for axis in (axis_h, axis_w)):
        return [fused]
    passes = [_axis_pass(True, axis_h, w, channels, sector_elements, pass_tiling),
              _axis_pass(False, axis_w, h, channels, sector_elements, pass_tiling)]
    if walk_weight is None or channels > 1 or h * w > tiling.walk_elements:
        return passes
    walk_tiling = tiling.for_solve(walk_weight)
    walked = [_axis_pass(True, axis_h, w, channels, sector_elements, walk_tiling),
              _axis_pass(False, axis_w, h, channels, sector_elements, walk_tiling),
              _axis_pass(True, axis_h, w, channels, sector_elements,
                         replace(walk_tiling, pass_elements=walk_tiling.walk_solve_elements))]
    return [_Walk(*walked, walk_weight)] if all(isinstance(step, _Pass) for step in walked) else passes


def _plan_for(x: torch.Tensor, boundary: str, dilation: int, q: int, tiling: Tiling,
              element_size: int | None = None) -> list[_Pass | _ChunkedPass | _Walk]:
    size = element_size or x.element_size()
    walk = None  # walks are float32 only, sized for x's device
    if x.dtype == torch.float32:
        walk = walk_weight(q, torch.cuda.get_device_capability(x.device) if x.device.type == "cuda" else None)
    return _plan(*x.shape[2:], dilation, boundary == "circular", channel_block(x, size), max(SECTOR_BYTES // size, 1),
                 tiling, register_weight(_accumulation_dtype(x).itemsize, q), walk)


def register_weight(accumulation_bytes: int, q: int) -> int:
    """Registers a tile element costs, in bytes: its accumulation type's size, doubled for Q > 2
    (on sm_90 at 16 float32 elements per thread, Q = 3's backward spills 8-32 B). Tiles and
    elements per thread shrink by it."""
    return accumulation_bytes * (2 if q > 2 else 1)


def walk_weight(q: int, capability: tuple[int, int] | None = None) -> int:
    """:func:`register_weight` of a walk's float32 element: its backward, the heaviest body here,
    doubles it at Q = 2 and quadruples it from Q = 3 (on sm_90, 4096-element tiles spilled
    120 B at Q = 2, 2048 still 8 B at Q = 3); doubled again on CUDA devices other than sm_90
    (``capability`` None: the interpreter's plans, as sm_90), where a 128² walk's backward
    spilled 8 B (sm_80) and 64 B (sm_100) at sm_90's sizes."""
    weight = 4 * min(2 ** (q - 1), 4)
    return weight if capability in (None, (9, 0)) else 2 * weight


def launch_options(step: "_Pass | _ChunkedPass | _Walk", q: int, accumulation_bytes: int,
                   num_warps: int | None = None) -> dict:
    """``num_warps`` (default: about 64 bytes of weight per thread, 1 to 16 warps; on sm_90 a
    4096-element tile of 1024-position lines spills at 16 warps and fits at 8) and, but for tiles
    of whole lines accumulated in float32, ptxas ``maxnreg``: one program's share of the register file
    (65536), at most 255 a thread. Left to itself ptxas traded stack slots for programs per SM:
    it capped a 64×128 walk at 128 registers, a float64 Q = 3 W pass at 80 (8 B of stack; a cap
    of 128 spilled 8-384 B in other float64 tiles), sm_80's chunked lines at 168 (16-24 B)."""
    weight = step.weight if isinstance(step, _Walk) else register_weight(accumulation_bytes, q)
    warps = num_warps or min(max(triton.next_power_of_2(step.elements() * weight) // (32 * 64), 1), 16)
    if isinstance(step, _Pass) and accumulation_bytes != 8:
        return dict(num_warps=warps)
    return dict(num_warps=warps, maxnreg=min(65536 // (32 * warps), 255))


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _accumulator(x: torch.Tensor):
    return triton.language.float64 if x.dtype == torch.float64 else triton.language.float32


def keeps_state(x: torch.Tensor, boundary: str, dilation: int, q: int, tiling: Tiling = Tiling()) -> bool:
    """Whether :func:`triton_ar_solve` solves ``x`` in two passes and returns a state."""
    return len(_plan_for(x, boundary, dilation, q, tiling)) == 2


def _line_strides(t: torch.Tensor, solve_h: bool) -> tuple[int, int, int, int]:
    """``(batch, channel, row, line)`` strides of ``t`` for lines along H or along W."""
    sb, sc, sh, sw = t.stride()
    return (sb, sc, sw, sh) if solve_h else (sb, sc, sh, sw)


def _common(x: torch.Tensor, alpha: torch.Tensor, boundary: str, reparam: bool, dilation: int,
            step: _Pass | _ChunkedPass | _Walk, num_warps: int | None, backward: bool = False):
    """Grid, size arguments, constants and options of a launch of ``step`` on ``x``."""
    b, c, h, w = x.shape
    step_consts = step.constants(backward) if isinstance(step, _Walk) else step.constants()
    if isinstance(step, _ChunkedPass):
        rows, n = (w, h) if step.solve_h else (h, w)
        args = (c, rows, n, dilation, step.chains.n_chains, step.chunks)
    elif isinstance(step, _Walk):
        args = (c, h, w, dilation, step.pass_h.tile_h.n_chains, step.pass_w.tile_w.n_chains, *step.sizes(backward))
    else:
        args = (c, h, w, dilation, step.tile_h.n_chains, step.tile_w.n_chains)
    q = alpha.shape[1]
    consts = dict(Q=q, QP=triton.next_power_of_2(q), CIRCULAR=boundary == "circular", REPARAM=reparam,
                  ACC=_accumulator(x), **step_consts)
    options = launch_options(step, q, _accumulation_dtype(x).itemsize, num_warps)
    return (b * triton.cdiv(c, step.channels), step.blocks), args, consts, options


def _launch_forward(src, dst, alpha, boundary, reparam, dilation, step, num_warps):
    grid, args, consts, options = _common(src, alpha, boundary, reparam, dilation, step, num_warps)
    if isinstance(step, _ChunkedPass):
        acc = _accumulation_dtype(src)
        work = dst if dst.dtype == acc else torch.empty_like(dst, dtype=acc)
        chunk_kernels.chunked_forward_kernel[grid](
            src, dst, work, alpha, *args, *_line_strides(src, step.solve_h), *_line_strides(dst, step.solve_h),
            *_line_strides(work, step.solve_h), **consts, **options)
    elif isinstance(step, _Walk):
        work = _work_buffer(dst, _accumulation_dtype(src))
        walks.walked_forward_kernel[grid](src, work, dst, alpha, *args, *src.stride(), *dst.stride(), **consts,
                                            **options)
    else:
        kernels.forward_kernel[grid](src, dst, alpha, *args, *src.stride(), *dst.stride(), **consts, **options)


def _work_buffer(out: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """A walk's buffer: ``out`` itself when it holds the accumulation type ``acc`` (the walk
    writes it last), else an ``acc`` buffer with its strides (``out`` is dense)."""
    return out if out.dtype == acc else torch.empty_like(out, dtype=acc)


def triton_ar_solve(x: torch.Tensor, alpha: torch.Tensor, boundary: str, reparam: bool, dilation: int,
                    tiling: Tiling = Tiling()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(Y, state)``: ``Y = A^{-1} X`` for non-empty ``x`` ``[B, C, H, W]`` (any float dtype and
    strides; ``Y`` in ``x``'s dtype and layout), ``alpha`` ``[C, Q, 4]`` (taps themselves if not
    ``reparam``); ``state``: the H factors' output of a two-pass plan, else None."""
    out = torch.empty_like(x)
    alpha = alpha.detach().contiguous()
    plan = _plan_for(x, boundary, dilation, alpha.shape[1], tiling)
    state = None
    with torch.cuda.device_of(x):
        if len(plan) == 1:
            _launch_forward(x, out, alpha, boundary, reparam, dilation, plan[0], tiling.num_warps)
        else:
            state = torch.empty_like(x, dtype=_accumulation_dtype(x))
            _launch_forward(x, state, alpha, boundary, reparam, dilation, plan[0], tiling.num_warps)
            _launch_forward(state, out, alpha, boundary, reparam, dilation, plan[1], tiling.num_warps)
    return out, state


def _launch_backward(src, grad, dst, alpha, partial, row0, boundary, reparam, dilation, step, num_warps,
                     src_solved=False):
    grid, args, consts, options = _common(src, alpha, boundary, reparam, dilation, step, num_warps, backward=True)
    if isinstance(step, _ChunkedPass):
        work_y, work_z, work_g = (torch.empty_like(src, dtype=partial.dtype) for _ in range(3))
        chunk_kernels.chunked_backward_kernel[grid](
            src, grad, dst, work_y, work_z, work_g, alpha, partial, *args, row0, partial.shape[1],
            *(stride for t in (src, grad, dst, work_y) for stride in _line_strides(t, step.solve_h)),
            **consts, SRC_SOLVED=src_solved, **options)
    elif isinstance(step, _Walk):
        work = _work_buffer(dst, partial.dtype)
        walks.walked_backward_kernel[grid](src, grad, work, dst, alpha, partial, *args, partial.shape[1],
                                             *src.stride(), *grad.stride(), *dst.stride(), **consts, **options)
    else:
        kernels.backward_kernel[grid](src, grad, dst, alpha, partial, *args, row0, partial.shape[1],
                                      *src.stride(), *grad.stride(), *dst.stride(), **consts,
                                      SRC_SOLVED=src_solved, **options)


def triton_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor | None, alpha: torch.Tensor, boundary: str,
                             reparam: bool, dilation: int, state: torch.Tensor | None = None,
                             tiling: Tiling = Tiling()) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dalpha)`` from ``dL/dY`` and the solve's input ``X``, the ``state`` that
    :func:`triton_ar_solve` returned with the same tiling, or both (non-empty). A two-pass
    plan's W pass starts from the state (computed from ``X`` if not given); its H pass
    re-solves the H factors from ``X`` when ``X`` is given and narrower than the state
    (bfloat16/float16: half the bytes to read), else walks them back from the state."""
    if x is None and state is None:
        raise ValueError("triton_ar_solve_backward needs x (the solve's input), state, or both; got neither")
    like = state if x is None else x
    b, c = like.shape[:2]
    q = alpha.shape[1]
    alpha = alpha.detach().contiguous()
    grad_x = torch.empty_like(like, dtype=grad_y.dtype)
    grad_alpha = torch.empty_like(alpha)
    acc = _accumulation_dtype(like)
    plan = _plan_for(like, boundary, dilation, q, tiling, grad_y.element_size())
    if state is not None and len(plan) == 1:
        raise ValueError("state was given, but this map is solved in one pass, which keeps no state: pass x alone")
    rows = b * sum(step.blocks for step in plan)
    partial = torch.empty(c, rows, q * 4, dtype=acc, device=like.device)
    with torch.cuda.device_of(like):
        if len(plan) == 1:
            _launch_backward(x, grad_y, grad_x, alpha, partial, 0, boundary, reparam, dilation, plan[0],
                             tiling.num_warps)
        else:
            pass_h, pass_w = plan
            if state is None:
                state = torch.empty_like(x, dtype=acc)
                _launch_forward(x, state, alpha, boundary, reparam, dilation, pass_h, tiling.num_warps)
            grad_state = torch.empty_like(state)
            _launch_backward(state, grad_y, grad_state, alpha, partial, 0, boundary, reparam, dilation, pass_w,
                             tiling.num_warps)
            from_x = x is not None and x.element_size() < state.element_size()
            _launch_backward(x if from_x else state, grad_state, grad_x, alpha, partial, b * pass_w.blocks, boundary,
                             reparam, dilation, pass_h, tiling.num_warps, src_solved=not from_x)
        kernels.tap_gradient_kernel[(c,)](partial, alpha, grad_alpha, rows, Q=q, QP=triton.next_power_of_2(q),
                                          REPARAM=reparam, ACC=_accumulator(like),
                                          ROWS=min(triton.next_power_of_2(rows), 256))
    return grad_x, grad_alpha


INTERPRETED = not isinstance(kernels.forward_kernel, triton.runtime.JITFunction)
"""Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were
imported): then they take CPU tensors, and nothing else."""
