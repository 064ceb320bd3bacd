"""GPU AR solve: Triton tile-scan kernels (``ar_solve_triton_kernels``) and their launches.

A program holds one plane (W the fastest axis, NCHW) or a block of channels that fills a
32-byte sector (C the fastest axis, channels_last: 8 float32, 16 bfloat16/float16, 4
float64), so its lanes always run along contiguous memory. Planes whose padded tile has at
most ``fused_elements`` elements (every map of a 224-px ImageNet network in NCHW at the
default 16 384) are solved by one program along both axes and all Q factors: the forward
reads ``X`` once and writes ``Y`` once, the backward reads ``X`` and ``dY`` once and writes
``dX`` once. Larger tiles take one pass per axis through a float32 (float64) buffer in the
input's layout, each program holding whole lines: ``[H, columns]`` for the H factors,
``[rows, W]`` for the W factors, about ``pass_elements`` elements each.
Tap gradients: one partial sum per program and tap, summed per channel by one small kernel
that also applies the re-parameterisation's chain rule. No host synchronisation; launches run
under the input's device. Only valid for taps inside the stable region (the dispatcher checks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from . import ar_solve_triton_kernels as kernels

FUSED_ELEMENTS = 16384
PASS_ELEMENTS = 4096
SECTOR_BYTES = 32


@dataclass(frozen=True)
class _AxisTile:
    """One axis of a tile: ``(length, chains)`` when solved, ``(block, 1)`` otherwise."""
    length: int
    chains: int
    n_chains: int


def _solved_axis(n: int, dilation: int, circular: bool) -> _AxisTile:
    n_chains = math.gcd(n, dilation) if circular else min(n, dilation)
    longest = n // n_chains if circular else -(-n // dilation)
    return _AxisTile(triton.next_power_of_2(longest), triton.next_power_of_2(n_chains), n_chains)


@dataclass(frozen=True)
class _Pass:
    """One launch's tiling: which axes it solves, the tile along each axis, the channels per
    program and the programs per channel block."""
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


def channel_block(x: torch.Tensor) -> int:
    """Channels per program: 1 unless C is ``x``'s fastest axis (channels_last), then enough
    channels to fill a 32-byte sector (at most C, rounded up to a power of two)."""
    if x.shape[1] == 1 or x.stride(1) != 1:
        return 1
    return min(triton.next_power_of_2(x.shape[1]), max(SECTOR_BYTES // x.element_size(), 1))


def _plan(h: int, w: int, dilation: int, circular: bool, channels: int, fused_elements: int,
          pass_elements: int) -> list[_Pass]:
    """One fused pass if the padded tile fits ``fused_elements``, else an H pass then a W pass."""
    axis_h, axis_w = _solved_axis(h, dilation, circular), _solved_axis(w, dilation, circular)
    fused = _Pass(True, True, axis_h, axis_w, channels, 1)
    if fused.elements() <= fused_elements:
        return [fused]
    line_h = axis_h.length * axis_h.chains * channels
    line_w = axis_w.length * axis_w.chains * channels
    cols = min(max(pass_elements // line_h, 1), triton.next_power_of_2(w))
    rows = min(max(pass_elements // line_w, 1), triton.next_power_of_2(h))
    return [_Pass(True, False, axis_h, _AxisTile(cols, 1, 1), channels, triton.cdiv(w, cols)),
            _Pass(False, True, _AxisTile(rows, 1, 1), axis_w, channels, triton.cdiv(h, rows))]


def _warps(elements: int, num_warps: int | None) -> int:
    """Default: about 8 elements of a tile per thread (the backward holds several tiles), 1 to 16 warps."""
    return num_warps or min(max(triton.next_power_of_2(elements) // (32 * 8), 1), 16)


def _accumulator(x: torch.Tensor):
    return triton.language.float64 if x.dtype == torch.float64 else triton.language.float32


def _common(x: torch.Tensor, alpha: torch.Tensor, boundary: str, reparam: bool, dilation: int, step: _Pass):
    b, c, h, w = x.shape
    args = (c, h, w, dilation, step.tile_h.n_chains, step.tile_w.n_chains)
    q = alpha.shape[1]
    consts = dict(Q=q, QP=triton.next_power_of_2(q), CIRCULAR=boundary == "circular", REPARAM=reparam,
                  ACC=_accumulator(x), **step.constants())
    return (b * triton.cdiv(c, step.channels), step.blocks), args, consts


def _launch_forward(src, dst, alpha, boundary, reparam, dilation, step, num_warps):
    grid, args, consts = _common(src, alpha, boundary, reparam, dilation, step)
    kernels.forward_kernel[grid](src, dst, alpha, *args, *src.stride(), *dst.stride(), **consts,
                                 num_warps=_warps(step.elements(), num_warps))


def triton_ar_solve(x: torch.Tensor, alpha: torch.Tensor, boundary: str, reparam: bool, dilation: int, *,
                    fused_elements: int = FUSED_ELEMENTS, pass_elements: int = PASS_ELEMENTS,
                    num_warps: int | None = None) -> torch.Tensor:
    """``Y = A^{-1} X`` for non-empty ``x`` ``[B, C, H, W]`` (any float dtype and strides; ``Y`` in
    ``x``'s dtype and layout), ``alpha`` ``[C, Q, 4]`` (taps themselves if not ``reparam``)."""
    out = torch.empty_like(x)
    alpha = alpha.detach().contiguous()
    plan = _plan(*x.shape[2:], dilation, boundary == "circular", channel_block(x), fused_elements, pass_elements)
    with torch.cuda.device_of(x):
        if len(plan) == 1:
            _launch_forward(x, out, alpha, boundary, reparam, dilation, plan[0], num_warps)
        else:
            work = torch.empty_like(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
            _launch_forward(x, work, alpha, boundary, reparam, dilation, plan[0], num_warps)
            _launch_forward(work, out, alpha, boundary, reparam, dilation, plan[1], num_warps)
    return out


def _launch_backward(src, grad, dst, alpha, partial, row0, boundary, reparam, dilation, step, num_warps):
    grid, args, consts = _common(src, alpha, boundary, reparam, dilation, step)
    kernels.backward_kernel[grid](src, grad, dst, alpha, partial, *args, row0, partial.shape[1],
                                  *src.stride(), *grad.stride(), *dst.stride(), **consts,
                                  num_warps=_warps(step.elements(), num_warps))


def triton_ar_solve_backward(grad_y: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, boundary: str,
                             reparam: bool, dilation: int, *, fused_elements: int = FUSED_ELEMENTS,
                             pass_elements: int = PASS_ELEMENTS,
                             num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dalpha)`` from ``dL/dY`` and the saved input ``X`` (non-empty)."""
    b, c = x.shape[:2]
    q = alpha.shape[1]
    alpha = alpha.detach().contiguous()
    grad_x = torch.empty_like(x)
    grad_alpha = torch.empty_like(alpha)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    plan = _plan(*x.shape[2:], dilation, boundary == "circular", channel_block(x), fused_elements, pass_elements)
    rows = b * sum(step.blocks for step in plan)
    partial = torch.empty(c, rows, q * 4, dtype=acc, device=x.device)
    with torch.cuda.device_of(x):
        if len(plan) == 1:
            _launch_backward(x, grad_y, grad_x, alpha, partial, 0, boundary, reparam, dilation, plan[0], num_warps)
        else:
            pass_h, pass_w = plan
            state = torch.empty_like(x, dtype=acc)
            _launch_forward(x, state, alpha, boundary, reparam, dilation, pass_h, num_warps)
            grad_state = torch.empty_like(x, dtype=acc)
            _launch_backward(state, grad_y, grad_state, alpha, partial, 0, boundary, reparam, dilation, pass_w,
                             num_warps)
            _launch_backward(x, grad_state, grad_x, alpha, partial, b * pass_w.blocks, boundary, reparam,
                             dilation, pass_h, num_warps)
        kernels.tap_gradient_kernel[(c,)](partial, alpha, grad_alpha, rows, Q=q, QP=triton.next_power_of_2(q),
                                          REPARAM=reparam, ACC=_accumulator(x),
                                          ROWS=min(triton.next_power_of_2(rows), 256))
    return grad_x, grad_alpha


INTERPRETED = not isinstance(kernels.forward_kernel, triton.runtime.JITFunction)
"""Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were
imported): then they take CPU tensors, and nothing else."""
