"""ARMA convolution: a ``Conv2d`` (moving-average part) followed by an AR solve.

Su et al., NeurIPS 2020, Def. 1 / eq. (2): ``T = W * X`` then ``A * Y = T``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..validation import check_positive_int
from .autoregressive import AutoRegressive2d


class ARMAConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose output goes through an :class:`AutoRegressive2d` child ``ar``.

    ``Y = A^{-1}(W * X)`` (Def. 1): the conv is the moving-average part, ``ar`` solves the
    autoregressive part per output channel. The conv's ``weight``/``bias`` keep their
    state-dict keys; the AR parameter is ``ar.alpha`` (zero at init, so the layer starts
    as the plain convolution, exactly). ``ar_kernel_size``, ``boundary``, ``reparam`` and
    ``ar_dilation`` are :class:`AutoRegressive2d`'s ``ar_kernel_size``, ``boundary``,
    ``reparam`` and ``dilation``. :meth:`reset_parameters` re-initialises both parts, as
    after ``device="meta"`` construction and ``to_empty()``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 ar_kernel_size: int = 3, boundary: str = "circular", reparam: bool = True,
                 ar_dilation: int = 1, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        self.ar = AutoRegressive2d(out_channels, ar_kernel_size, boundary, reparam,
                                   check_positive_int("ar_dilation", ar_dilation), device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """The conv's own initialisation, and ``ar`` back to the identity (``alpha = 0``)."""
        super().reset_parameters()
        if "ar" in self._modules:  # nn.Conv2d.__init__ calls this before ``ar`` exists
            self.ar.reset_parameters()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **ar_kwargs) -> "ARMAConv2d":
        """Build an ARMA layer that shares nothing with, but equals, ``conv`` at init.

        Copies the conv's hyper-parameters, weights, device, dtype and train/eval mode;
        ``ar_kwargs`` go to :class:`ARMAConv2d` (``ar_kernel_size``, ``boundary``, ...).
        A ``Conv2d`` subclass with its own ``forward`` is rebuilt as a plain
        ``ARMAConv2d``; to keep such a forward, put an :class:`AutoRegressive2d` after it.
        """
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype, **ar_kwargs)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ar(self._conv_forward(x, self.weight, self.bias))  # nn.Conv2d.forward, scriptable
