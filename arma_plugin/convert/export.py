"""An armafied model for exporters without custom ops (ONNX): every AR solve as two matmuls.

At a fixed map size ``H × W`` the AR solve of one channel is linear (Su et al., NeurIPS 2020,
Def. 1 and Def. 5): ``A = F ⊗ G`` with ``F`` (along H) and ``G`` (along W) the products of the
Q factor matrices, so ``Y = F⁻¹ X G⁻ᵀ``. :func:`for_export` computes ``F⁻¹`` (``H × H``) and
``G⁻¹`` (``W × W``) per channel once, in float64 with the AR solver itself, from the trained ``alpha`` (circular or zero
boundary, Q factors, dilation), and replaces each :class:`AutoRegressive2d` with a
:class:`FixedSizeAutoRegressive2d` that holds them as buffers: two batched matmuls, which
every exporter and runtime supports. Cost: ``C·(H² + W²)`` numbers per AR layer, and the
model then accepts only the map sizes the example input produced.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from ..layers.ar_solve_op import ar_solve, resolve_backend
from ..layers.ar_taps import ar_taps
from ..layers.autoregressive import AutoRegressive2d

__all__ = ["FixedSizeAutoRegressive2d", "for_export"]


class FixedSizeAutoRegressive2d(nn.Module):
    """An :class:`AutoRegressive2d` frozen at one map size: ``Y = A X Bᵀ`` per channel.

    Buffers ``row_inverse`` ``[C, H, H]`` (``A = F⁻¹``) and ``col_inverse`` ``[C, W, W]``
    (``B = G⁻¹``). Built by :func:`for_export`; an input of another size raises ``ValueError``.
    """

    def __init__(self, row_inverse: torch.Tensor, col_inverse: torch.Tensor) -> None:
        super().__init__()
        if row_inverse.dim() != 3 or col_inverse.dim() != 3 or row_inverse.shape[0] != col_inverse.shape[0]:
            raise ValueError("row_inverse and col_inverse must be [C, H, H] and [C, W, W] with the same C, "
                             f"got {tuple(row_inverse.shape)} and {tuple(col_inverse.shape)}")
        self.register_buffer("row_inverse", row_inverse)
        self.register_buffer("col_inverse", col_inverse)

    @classmethod
    def from_module(cls, ar: AutoRegressive2d, height: int, width: int) -> "FixedSizeAutoRegressive2d":
        """The matrices of ``ar``'s solve on ``height × width`` maps, computed in float64 and
        stored in ``alpha``'s dtype."""
        with torch.no_grad():
            taps = ar_taps(ar.alpha.detach().to(torch.float64), ar.reparam)
            inverses = [_axis_inverse(taps[..., 2 * axis:2 * axis + 2], n, ar.boundary, ar.dilation, ar.reparam)
                        for axis, n in ((0, height), (1, width))]
        return cls(*(inverse.to(ar.alpha.dtype) for inverse in inverses))

    @property
    def map_size(self) -> tuple[int, int]:
        return self.row_inverse.shape[-1], self.col_inverse.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.map_size
        if x.shape[-2] != height or x.shape[-1] != width:
            raise ValueError("this AR layer was fixed by arma_plugin.for_export for {}x{} maps, got {}x{}; "
                             "call for_export with an example input of the size to export".format(
                                 height, width, x.shape[-2], x.shape[-1]))
        y = torch.matmul(self.row_inverse, x.to(self.row_inverse.dtype))
        return torch.matmul(y, self.col_inverse.transpose(-1, -2)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.row_inverse.shape[0]}, map_size={self.map_size}"


def _axis_inverse(axis_taps: torch.Tensor, n: int, boundary: str, dilation: int, known_stable: bool) -> torch.Tensor:
    """``[C, n, n]``: the inverse of one axis's factor product, as the AR solve of the identity
    along H with no W factors. Not an LU inverse of the product: on cyclic factor products
    partial pivoting's growth is exponential in ``n`` (measured: 1e20 off at n = 256 with
    condition number 3), while the solver is exact for every stable factor (Thm 6)."""
    channels, factors, _ = axis_taps.shape
    taps = torch.cat((axis_taps, axis_taps.new_zeros(channels, factors, 2)), dim=-1)
    eye = torch.eye(n, dtype=torch.float64, device=axis_taps.device).expand(1, channels, n, n).contiguous()
    backend = resolve_backend(eye, taps, known_stable=known_stable)
    return ar_solve(eye, taps, boundary, False, dilation, backend)[0][0]  # reparam=False: taps as given


def _map_sizes(model: nn.Module, args: tuple[Any, ...]) -> dict[int, tuple[int, int]]:
    """``id(ar) -> (H, W)`` for every AR module the forward on ``args`` calls (eval mode, no grad;
    the modes are restored). A module called at two sizes raises ``ValueError``."""
    sizes: dict[int, set[tuple[int, int]]] = {}
    names = {id(m): name for name, m in model.named_modules() if isinstance(m, AutoRegressive2d)}

    def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        sizes.setdefault(id(module), set()).add(tuple(inputs[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, AutoRegressive2d)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    for key, seen in sizes.items():
        if len(seen) > 1:
            raise ValueError(f"AR layer {names[key]!r} is called on maps of sizes {sorted(seen)} in one forward; "
                             "for_export fixes one size per layer")
    return {key: seen.pop() for key, seen in sizes.items()}


def for_export(model: nn.Module, example_input: Any, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (``inplace=True``: ``model`` itself) whose AR solves are two matmuls,
    for ``torch.onnx.export`` and other exporters without custom ops.

    ``example_input`` (a tensor, or a tuple of the forward's positional arguments) is run once
    through the model (eval mode, no grad) to learn each AR layer's map size, which differs
    with depth. The result equals ``model`` on inputs of that size (float32: within 1e-5
    relative; measured 1.5e-7 to 4.1e-6, docs/export.md) and raises ``ValueError`` on other sizes. Each AR layer then holds
    ``C·(H² + W²)`` numbers; AR layers the example does not reach are left unchanged.
    """
    if not isinstance(inplace, bool):
        raise ValueError(f"inplace must be True or False, got {inplace!r}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not isinstance(args[0], torch.Tensor):
        raise ValueError("example_input must be a tensor or a tuple of the forward's positional arguments "
                         f"starting with a tensor, got {type(example_input).__name__}")
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, AutoRegressive2d):
        height, width = args[0].shape[-2:]
        return FixedSizeAutoRegressive2d.from_module(target, height, width)
    sizes = _map_sizes(target, args)
    fixed = {}
    for parent in list(target.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, AutoRegressive2d) and id(child) in sizes:
                if id(child) not in fixed:  # a shared AR module stays shared
                    fixed[id(child)] = FixedSizeAutoRegressive2d.from_module(child, *sizes[id(child)])
                setattr(parent, child_name, fixed[id(child)])
    return target
