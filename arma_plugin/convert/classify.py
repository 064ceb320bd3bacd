"""Which convs ``armafy`` converts, and for every other conv the :class:`SkipReason`."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..layers.autoregressive import AutoRegressive2d
from ..layers.nonlocal_block import NonLocal2d
from .config import ARMAConfig, matches
from .conv_types import CONV_LIKE, pair
from .fx_helpers import get_attr, sole_module_user
from .report import ConvEntry, ConvStatus, SkipReason
from .tracing import TraceResult


def conv_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every 2-D conv module by (first) name, in definition order; shared modules once."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CONV_LIKE)}


def opaque_leaves(model: nn.Module, trace: TraceResult) -> list[str]:
    """Called leaf modules the trace cannot look into (timm's non-traceable blocks, ...)."""
    return [name for name in trace.leaf_calls
            if not isinstance(model.get_submodule(name), CONV_LIKE + (AutoRegressive2d,))]


def followed_by_ar(node: fx.Node, model: nn.Module) -> bool:
    return sole_module_user(node, model, AutoRegressive2d) is not None


def module_entry(name: str, conv: nn.Module, model: nn.Module, trace: TraceResult,
                 opaque: list[str], config: ARMAConfig) -> ConvEntry:
    """The report entry of the conv module ``name``: converted, already ARMA, or skipped and why."""
    kernel, dilation = pair(conv.kernel_size), pair(conv.dilation)
    calls = trace.calls(name, opaque) if trace.traced else None
    entry = ConvEntry(name, "module", type(conv).__name__, kernel, conv.groups, dilation, calls,
                      ConvStatus.CONVERTED)
    sites = [n for n in trace.graph.nodes if n.op == "call_module" and n.target == name] if trace.traced else []
    if isinstance(getattr(conv, "ar", None), AutoRegressive2d) or (
            sites and all(followed_by_ar(n, model) for n in sites)):
        entry.status = ConvStatus.ALREADY
    else:
        entry.reason = _module_skip_reason(name, kernel, dilation, calls, model, trace, config)
        if entry.reason is not None:
            entry.status = ConvStatus.SKIPPED
    return entry


def _module_skip_reason(name: str, kernel: tuple[int, int], dilation: tuple[int, int], calls: int | None,
                        model: nn.Module, trace: TraceResult, config: ARMAConfig) -> SkipReason | None:
    """The first rule that keeps the conv as it is, in this order, or ``None``."""
    if any(name.startswith(prefix + ".") for prefix, m in model.named_modules() if isinstance(m, NonLocal2d)):
        return SkipReason.INSIDE_NONLOCAL
    if calls == 0:
        return SkipReason.USED_FUNCTIONALLY if f"{name}.weight" in trace.used_attributes else SkipReason.NEVER_CALLED
    if config.target_modules is not None and not matches(name, config.target_modules):
        return SkipReason.NOT_TARGETED
    if config.exclude_modules is not None and matches(name, config.exclude_modules):
        return SkipReason.EXCLUDED
    if kernel == (1, 1) and not config.include_pointwise:
        return SkipReason.POINTWISE
    if config.ar_dilation == "match" and dilation[0] != dilation[1]:
        return SkipReason.ANISOTROPIC_DILATION
    return None


def functional_entry(node: fx.Node, model: nn.Module, config: ARMAConfig,
                     candidate_reason: SkipReason | None) -> ConvEntry:
    """The report entry of a functional ``F.conv2d`` call site. A site no rule skips is marked
    converted, or skipped for ``candidate_reason`` when one is given (module mode)."""
    weight = static_weight(node, model)
    kernel = tuple(weight.shape[-2:]) if weight is not None else None
    entry = ConvEntry(node.name, "functional", "F.conv2d", kernel, _conv_arg(node, 6, "groups", 1),
                      pair(_conv_arg(node, 5, "dilation", 1)), 1, ConvStatus.SKIPPED)
    if followed_by_ar(node, model):
        entry.status = ConvStatus.ALREADY
    elif kernel == (1, 1) and not config.include_pointwise:
        entry.reason = SkipReason.POINTWISE
    elif candidate_reason is not None:
        entry.reason = candidate_reason
    else:
        entry.status = ConvStatus.CONVERTED
    return entry


def _conv_arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    value = node.args[index] if len(node.args) > index else node.kwargs.get(key, default)
    return value if isinstance(value, (int, tuple, list)) else default


def static_weight(node: fx.Node, model: nn.Module) -> torch.Tensor | None:
    """The weight of a functional conv call site when it is a model attribute, else ``None``."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if isinstance(weight, fx.Node) and weight.op == "get_attr":
        return get_attr(model, weight.target)
    return None
