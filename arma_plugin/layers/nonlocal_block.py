"""Non-local block (embedded Gaussian), as used by the paper's "NL ARMA U-Net" (Table 2).

Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018, eq. (1)-(3) and (6):
``z = W_z y + x`` with ``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)``.
``W_z`` starts at zero (weight and bias), so a freshly inserted block is the identity.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..validation import check_positive_int


class ZeroInitConv2d(nn.Conv2d):
    """A ``Conv2d`` whose (re-)initialisation is zero, weight and bias: the block's ``W_z``.

    The zero init lives in the conv itself so that every way of re-initialising a model
    (``reset_parameters()`` per module, parents before or after children, as FSDP does
    after meta-device construction) keeps the block the identity.
    """

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block on ``[B, C, H, W]``; identity at initialisation.

    Args:
        channels: ``C`` of the input (and output).
        reduction: the embeddings ``theta``, ``phi``, ``g`` have ``max(1, C // reduction)`` channels.

    Memory is ``O((H W)^2)`` per image (the attention matrix), as in the original block.
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("reduction", reduction)
        self.channels = channels
        self.reduction = reduction
        inner = max(1, channels // reduction)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = ZeroInitConv2d(inner, channels, 1)

    def reset_parameters(self) -> None:
        """Fresh embeddings and ``W_z = 0``: the identity, as at construction."""
        for conv in (self.theta, self.phi, self.g, self.out):
            conv.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            # str.format, not an f-string: TorchScript compiles this check
            raise ValueError("NonLocal2d({}) expects [B, {}, H, W], got {}".format(
                self.channels, self.channels, list(x.shape)))
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        phi = self.phi(x).flatten(2)  # [B, C', HW]
        g = self.g(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        attn = torch.softmax(theta @ phi, dim=-1)  # eq. (3): f / C(x) is a softmax over j
        y = (attn @ g).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}"
