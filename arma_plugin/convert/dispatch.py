"""Which ARMA module a conv module becomes (PEFT's dispatch pattern: first match wins).

Each ``dispatch_*`` function takes a conv module and the :class:`ARMAConfig` and returns the
module that replaces it (possibly the conv itself, changed in place), or ``None`` when it does
not handle that kind of conv. :data:`DISPATCHERS` is tried in order; a new conv type gets
its own dispatcher in that list instead of another type check in the converter.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..layers.arma_conv import ARMAConv2d
from ..layers.autoregressive import AutoRegressive2d
from .config import ARMAConfig
from .conv_types import CONV_LIKE, pair
from .output_subclass import AROutputMixin, attach_output_child

Dispatcher = Callable[[nn.Module, ARMAConfig], "nn.Module | None"]


def ar_dilation(conv_dilation: tuple[int, int], config: ARMAConfig) -> int:
    """The AR taps' dilation: the conv's own with ``ar_dilation="match"``, else the config's."""
    return conv_dilation[0] if config.ar_dilation == "match" else config.ar_dilation


def identity_ar(channels: int, conv_dilation: tuple[int, int], like: torch.Tensor, training: bool,
                config: ARMAConfig) -> AutoRegressive2d:
    """A new :class:`AutoRegressive2d` at the identity (``alpha = 0``) to follow a conv with
    ``channels`` outputs and ``conv_dilation``, on ``like``'s device and dtype."""
    ar = AutoRegressive2d(channels, config.ar_kernel_size, config.boundary, config.reparam,
                          ar_dilation(conv_dilation, config), device=like.device, dtype=like.dtype)
    return ar.train(training)


def identity_ar_after(conv: nn.Module, config: ARMAConfig) -> AutoRegressive2d:
    """:func:`identity_ar` for the conv module ``conv`` (its output channels, dilation, device,
    dtype and train/eval mode)."""
    return identity_ar(conv.out_channels, pair(conv.dilation), conv.weight, conv.training, config)


def dispatch_conv2d(conv: nn.Module, config: ARMAConfig) -> nn.Module | None:
    """A plain ``nn.Conv2d`` becomes an :class:`ARMAConv2d` holding the same ``Parameter``
    objects: nothing is copied, and weights tied between convs stay tied. The new module is
    built on the meta device (no storage), then given ``conv``'s parameters and its AR child."""
    if type(conv) is not nn.Conv2d:
        return None
    new = ARMAConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
    new.weight, new.bias = conv.weight, conv.bias
    new.ar = identity_ar_after(conv, config)
    return new.train(conv.training)


def dispatch_conv_subclass(conv: nn.Module, config: ARMAConfig) -> nn.Module | None:
    """A ``Conv2d`` subclass (``Conv2dSame``, ``StdConv2d``, ...) or timm's ``CondConv2d`` keeps its
    class and ``forward`` and gains an ``ar`` child (see ``output_subclass``), in place."""
    if not isinstance(conv, CONV_LIKE):
        return None
    return attach_output_child(conv, AROutputMixin, identity_ar_after(conv, config))


DISPATCHERS: list[Dispatcher] = [dispatch_conv2d, dispatch_conv_subclass]


def convert_conv(conv: nn.Module, config: ARMAConfig) -> nn.Module:
    """The ARMA version of ``conv`` from the first dispatcher that handles it."""
    for dispatch in DISPATCHERS:
        new = dispatch(conv, config)
        if new is not None:
            return new
    raise TypeError(f"armafy cannot convert a {type(conv).__name__}; supported: nn.Conv2d, its subclasses "
                    f"and {', '.join(t.__name__ for t in CONV_LIKE[1:]) or 'no other type'}")
