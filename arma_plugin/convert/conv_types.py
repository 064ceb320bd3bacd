"""The 2-D convs ``armafy`` knows, and the small helpers every conversion step shares.

Two kinds of conv: modules (:data:`CONV_LIKE`: ``nn.Conv2d`` with its subclasses, and timm's
``CondConv2d``) and functional call sites in a traced graph (:data:`FUNCTIONAL_CONV2D`). Each
output is ``[B, out_channels, H, W]``, so the AR solve (Su et al., Def. 1) can follow any of them.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import CondConv2d

CONV_LIKE: tuple[type[nn.Module], ...] = (nn.Conv2d, CondConv2d)
FUNCTIONAL_CONV2D: tuple[Callable, ...] = (F.conv2d, torch.conv2d)


def pair(value: Any) -> tuple[int, int]:
    """A conv's ``kernel_size`` / ``dilation`` as ``(h, w)``."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def functional_conv_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The ``F.conv2d`` / ``torch.conv2d`` call sites of ``graph``, in graph order."""
    return [n for n in graph.nodes if n.op == "call_function" and n.target in FUNCTIONAL_CONV2D]
