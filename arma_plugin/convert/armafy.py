"""``armafy``: turn the 2-D convs of any model into ARMA layers, exactly (identity at init).

Su et al., NeurIPS 2020, Def. 1 / eq. (2): an ARMA layer is the conv ``T = W * X`` (the
moving-average part) followed by the AR solve ``A * Y = T``. With the AR parameters at zero
``A`` is the identity (Thm 7's parameterisation), so the armafied model computes what the
original did and can be fine-tuned from its pretrained weights.

This file is the entry point and the module swapping (``mode="module"``); which convs are
converted is ``classify``, what each conv type becomes is ``dispatch``, graph mode is ``graph``
and non-local blocks are ``nonlocal_insertion``.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Iterator, Sequence

import torch.nn as nn

from ..layers.autoregressive import AutoRegressive2d
from .classify import conv_modules, functional_entry, module_entry, opaque_leaves
from .config import ARMAConfig, ConfigMismatchError, matches
from .conv_types import functional_conv_nodes
from .dispatch import convert_conv
from .graph import graph_convert
from .nonlocal_insertion import insert_nonlocal_modules, insert_nonlocal_nodes, nonlocal_channels
from .report import ConversionReport, ConvStatus, SkipReason
from .save_methods import route_save_methods
from .tracing import ARMATracer, trace_model


def armafy(model: nn.Module, config: ARMAConfig | None = None, *, inplace: bool = False,
           return_report: bool = False, example_inputs: Any = None, **overrides: Any):
    """Convert every spatial 2-D conv of ``model`` into an ARMA layer (Su et al., Def. 1).

    Args:
        model: any ``nn.Module`` (timm, SMP, torchvision, your own).
        config: an :class:`ARMAConfig`; ``None`` means the defaults.
        inplace: change ``model`` itself; by default a deep copy is converted.
        return_report: also return the :class:`ConversionReport`.
        example_inputs: a tensor or a tuple of tensors the model accepts. Needed only to find
            channel counts that the model's modules do not state: the output of a
            ``nonlocal_after`` module (otherwise a default input is tried) and of functional
            ``F.conv2d`` calls whose weight is computed (``mode="graph"``).
        **overrides: :class:`ARMAConfig` fields, applied on top of ``config``.

    Returns:
        The converted model (``model, report`` with ``return_report``). In ``"module"`` mode it is
        the same class with convs swapped in place: plain ``nn.Conv2d`` become
        :class:`ARMAConv2d`; subclasses (``Conv2dSame``, ``StdConv2d``, ...) and timm's
        ``CondConv2d`` keep their class and forward and gain an ``ar`` child (see
        ``output_subclass``). Every original state-dict key keeps its name and value; the new keys
        are ``<conv>.ar.alpha`` and the non-local blocks. In ``"graph"`` mode it is a
        ``torch.fx.GraphModule`` with an ``AutoRegressive2d`` node after every 2-D conv call site
        (modules: ``<conv>_ar``, repeated call sites ``<conv>_ar_1``, ...; functional calls:
        ``<node>_ar``); Python-level branches such as ``if self.training`` are fixed as traced.
        The model carries ``arma_config`` and ``arma_report``. Converting an armafied model again
        changes nothing, and the report says so.

    The model is traced with :class:`ARMATracer` to learn which convs are called and how often.
    A submodule whose forward cannot be traced is kept opaque (its convs count as called) and the
    model retraced; if the root's own forward cannot be traced, ``"module"`` mode walks the
    modules instead and records the trace error in the report (``"graph"`` mode raises).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"armafy expects a torch.nn.Module, got {type(model).__name__}")
    config = _resolve_config(config, overrides)
    if not inplace:
        model = copy.deepcopy(model)
    _check_names(model, config)
    block_channels = nonlocal_channels(model, config.nonlocal_after, example_inputs)

    tracer = ARMATracer()
    leaf_nonlocal = [n for n in config.nonlocal_after if tracer.is_leaf_module(model.get_submodule(n), n)]
    if config.mode == "graph":  # modules the trace goes through need their block before tracing
        inserted = insert_nonlocal_modules(model, [n for n in config.nonlocal_after if n not in leaf_nonlocal],
                                           block_channels)
    trace = trace_model(model)
    if config.mode == "graph" and not trace.traced:
        raise ValueError(f"mode='graph' needs a model torch.fx can trace, and tracing failed: "
                         f"{trace.error}. Use mode='module', which falls back to walking modules.")

    report = ConversionReport(mode=config.mode, traced=trace.traced, trace_error=trace.error,
                              untraceable=trace.untraceable)
    convs = conv_modules(model)
    opaque = opaque_leaves(model, trace)
    to_convert: dict[str, nn.Module] = {}
    for name, conv in convs.items():
        entry = module_entry(name, conv, model, trace, opaque, config)
        report.entries.append(entry)
        if entry.status == ConvStatus.CONVERTED:
            to_convert[name] = conv

    if config.mode == "module":
        report.entries += [functional_entry(node, model, config, SkipReason.FUNCTIONAL_IN_MODULE_MODE)
                           for node in (functional_conv_nodes(trace.graph) if trace.traced else [])]
        model, report.ar_params_added = _convert_modules(model, to_convert, config)
        report.nonlocal_inserted = insert_nonlocal_modules(model, list(config.nonlocal_after), block_channels)
    else:
        in_graph = {name: conv for name, conv in to_convert.items() if trace.leaf_calls[name]}
        in_opaque = {name: conv for name, conv in to_convert.items() if name not in in_graph}
        model, added_in_modules = _convert_modules(model, in_opaque, config)
        model, added_in_graph = graph_convert(model, trace.graph, in_graph, config, example_inputs, report)
        report.ar_params_added = added_in_modules + added_in_graph
        report.nonlocal_inserted = inserted + insert_nonlocal_nodes(model, leaf_nonlocal, block_channels)

    if report.changed or not hasattr(model, "arma_config"):
        model.arma_config = config
        model.arma_report = report
        route_save_methods(model)  # the model's own save_pretrained/push_to_hub keep the AR layers
    return (model, report) if return_report else model


def ar_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The AR parameters (``alpha`` of every :class:`AutoRegressive2d`), e.g. for their own
    optimizer param group (``[{"params": ar_parameters(m), "weight_decay": 0}, ...]``)."""
    for module in model.modules():
        if isinstance(module, AutoRegressive2d):
            yield from module.parameters(recurse=False)


def non_ar_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter of ``model`` that :func:`ar_parameters` does not yield."""
    ar_ids = {id(p) for p in ar_parameters(model)}
    return (p for p in model.parameters() if id(p) not in ar_ids)


def _resolve_config(config: ARMAConfig | None, overrides: dict[str, Any]) -> ARMAConfig:
    if config is None:
        return ARMAConfig().replace(**overrides)
    if not isinstance(config, ARMAConfig):
        raise TypeError(f"config must be an ARMAConfig or None, got {type(config).__name__} "
                        "(build one from a dict with ARMAConfig.from_dict)")
    return config.replace(**overrides)


def _close_names(wanted: str, names: Sequence[str]) -> list[str]:
    tails = {n.rsplit(".", 1)[-1]: n for n in names}
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.6)
    close += [tails[t] for t in difflib.get_close_matches(wanted, list(tails), n=5, cutoff=0.6)]
    return list(dict.fromkeys(close))[:5] or list(names)[:5]


def _check_names(model: nn.Module, config: ARMAConfig) -> None:
    """``target_modules`` must match some conv, ``nonlocal_after`` must name modules."""
    conv_names = list(conv_modules(model))
    targets = config.target_modules
    if targets is not None:
        # a regex must match some conv; each listed name must match one (a typo is not a no-op)
        patterns = [targets] if isinstance(targets, str) else [(t,) for t in targets]
        unmatched = [p if isinstance(p, str) else p[0] for p in patterns
                     if not any(matches(n, p) for n in conv_names)]
        if unmatched:
            hints = {t: _close_names(t, conv_names) for t in unmatched}
            raise ConfigMismatchError(f"target_modules entries {unmatched} match no 2-D conv of the model; "
                             f"close conv names: {hints}")
    all_names = [n for n, _ in model.named_modules() if n]
    for name in config.nonlocal_after:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigMismatchError(f"nonlocal_after names {name!r}, which is not a module of the model; "
                             f"close names: {_close_names(name, all_names)}") from None
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            raise ConfigMismatchError(f"nonlocal_after names {name!r}, a {type(module).__name__}, which is never "
                             "called itself; name one of its elements or the module that runs them")


def _convert_modules(model: nn.Module, convs: dict[str, nn.Module], config: ARMAConfig) -> tuple[nn.Module, int]:
    """Convert in place with :func:`~.dispatch.convert_conv`; a conv that becomes a new module is
    replaced wherever it is referenced. Returns the model (a new object only if it was itself such
    a conv) and the AR parameters added."""
    replacements: dict[int, nn.Module] = {}
    added = 0
    for conv in convs.values():
        new = convert_conv(conv, config)
        if new is not conv:
            replacements[id(conv)] = new
        added += new.ar.alpha.numel()
    if id(model) in replacements:
        return replacements[id(model)], added
    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]
    return model, added
