"""``armafy``: turn the 2-D convs of any model into ARMA layers, exactly (identity at init).

Su et al., NeurIPS 2020, Def. 1 / eq. (2): an ARMA layer is the conv ``T = W * X`` (the
moving-average part) followed by the AR solve ``A * Y = T``. With the AR parameters at zero
``A`` is the identity (Thm 7's parameterisation), so the armafied model computes what the
original did and can be fine-tuned from its pretrained weights.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from ..layers.arma_conv import ARMAConv2d
from ..layers.autoregressive import AutoRegressive2d
from ..layers.nonlocal_block import NonLocal2d
from .config import ARMAConfig, matches
from .output_subclass import AROutputMixin, NonLocalOutputMixin, attach_output_child
from .report import ALREADY, CONVERTED, SKIPPED, ConversionReport, ConvEntry
from .tracing import CONV_LIKE, FUNCTIONAL_CONV2D, ARMATracer, TraceResult, trace_model

NEVER_CALLED = "never called in forward"
USED_FUNCTIONALLY = "weight used by a functional conv2d call site"
POINTWISE = "pointwise 1x1 (include_pointwise=False)"
NOT_TARGETED = "not in target_modules"
EXCLUDED = "in exclude_modules"
ANISOTROPIC_DILATION = "dilation differs per axis (ar_dilation='match' needs equal)"
INSIDE_NONLOCAL = "inside a NonLocal2d block"
FUNCTIONAL_IN_MODULE_MODE = "functional conv2d call site (converted only with mode='graph')"
UNKNOWN_CHANNELS = "output channels unknown (pass example_inputs)"


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
    nonlocal_channels = _nonlocal_channels(model, config.nonlocal_after, example_inputs)

    tracer = ARMATracer()
    leaf_nonlocal = [n for n in config.nonlocal_after if tracer.is_leaf_module(model.get_submodule(n), n)]
    if config.mode == "graph":  # modules the trace goes through need their block before tracing
        inserted = _insert_nonlocal_modules(model, [n for n in config.nonlocal_after if n not in leaf_nonlocal],
                                            nonlocal_channels)
    trace = trace_model(model)
    if config.mode == "graph" and not trace.traced:
        raise ValueError(f"mode='graph' needs a model torch.fx can trace, and tracing failed: "
                         f"{trace.error}. Use mode='module', which falls back to walking modules.")

    report = ConversionReport(mode=config.mode, traced=trace.traced, trace_error=trace.error,
                              untraceable=trace.untraceable)
    convs = _conv_modules(model)
    opaque = _opaque_leaves(model, trace)
    to_convert: dict[str, nn.Module] = {}
    for name, conv in convs.items():
        entry = _module_entry(name, conv, model, trace, opaque, config)
        report.entries.append(entry)
        if entry.status == CONVERTED:
            to_convert[name] = conv

    if config.mode == "module":
        report.entries += [_functional_entry(node, model, config, FUNCTIONAL_IN_MODULE_MODE)
                           for node in trace.functional_conv_nodes()]
        model, report.ar_params_added = _convert_modules(model, to_convert, config)
        report.nonlocal_inserted = _insert_nonlocal_modules(model, list(config.nonlocal_after), nonlocal_channels)
    else:
        in_graph = {name: conv for name, conv in to_convert.items() if trace.leaf_calls[name]}
        in_opaque = {name: conv for name, conv in to_convert.items() if name not in in_graph}
        model, added_in_modules = _convert_modules(model, in_opaque, config)
        model, added_in_graph = _graph_convert(model, trace.graph, in_graph, config, example_inputs, report)
        report.ar_params_added = added_in_modules + added_in_graph
        report.nonlocal_inserted = inserted + _insert_nonlocal_nodes(model, leaf_nonlocal, nonlocal_channels)

    if report.changed or not hasattr(model, "arma_config"):
        model.arma_config = config
        model.arma_report = report
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
    conv_names = list(_conv_modules(model))
    targets = config.target_modules
    if targets is not None:
        # a regex must match some conv; each listed name must match one (a typo is not a no-op)
        patterns = [targets] if isinstance(targets, str) else [(t,) for t in targets]
        unmatched = [p if isinstance(p, str) else p[0] for p in patterns
                     if not any(matches(n, p) for n in conv_names)]
        if unmatched:
            hints = {t: _close_names(t, conv_names) for t in unmatched}
            raise ValueError(f"target_modules entries {unmatched} match no 2-D conv of the model; "
                             f"close conv names: {hints}")
    all_names = [n for n, _ in model.named_modules() if n]
    for name in config.nonlocal_after:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"nonlocal_after names {name!r}, which is not a module of the model; "
                             f"close names: {_close_names(name, all_names)}") from None
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            raise ValueError(f"nonlocal_after names {name!r}, a {type(module).__name__}, which is never "
                             "called itself; name one of its elements or the module that runs them")


def _conv_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every 2-D conv module by (first) name, in definition order; shared modules once."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CONV_LIKE)}


def _opaque_leaves(model: nn.Module, trace: TraceResult) -> list[str]:
    """Called leaf modules the trace cannot look into (timm's non-traceable blocks, ...)."""
    return [name for name in trace.leaf_calls
            if not isinstance(model.get_submodule(name), CONV_LIKE + (AutoRegressive2d,))]


def _is_armafied(conv: nn.Module) -> bool:
    return isinstance(getattr(conv, "ar", None), AutoRegressive2d)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _followed_by_ar(node: fx.Node, model: nn.Module) -> bool:
    users = list(node.users)
    return (len(users) == 1 and users[0].op == "call_module"
            and isinstance(model.get_submodule(users[0].target), AutoRegressive2d))


def _module_entry(name: str, conv: nn.Module, model: nn.Module, trace: TraceResult,
                  opaque: list[str], config: ARMAConfig) -> ConvEntry:
    kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
    calls = trace.calls(name, opaque) if trace.traced else None
    entry = ConvEntry(name, "module", type(conv).__name__, kernel, conv.groups, dilation, calls, SKIPPED)
    sites = [n for n in trace.graph.nodes if n.op == "call_module" and n.target == name] if trace.traced else []
    if _is_armafied(conv) or (sites and all(_followed_by_ar(n, model) for n in sites)):
        entry.status = ALREADY
    elif any(name.startswith(prefix + ".") for prefix, m in model.named_modules() if isinstance(m, NonLocal2d)):
        entry.reason = INSIDE_NONLOCAL
    elif calls == 0:
        entry.reason = USED_FUNCTIONALLY if f"{name}.weight" in trace.used_attributes else NEVER_CALLED
    elif config.target_modules is not None and not matches(name, config.target_modules):
        entry.reason = NOT_TARGETED
    elif config.exclude_modules is not None and matches(name, config.exclude_modules):
        entry.reason = EXCLUDED
    elif kernel == (1, 1) and not config.include_pointwise:
        entry.reason = POINTWISE
    elif config.ar_dilation == "match" and dilation[0] != dilation[1]:
        entry.reason = ANISOTROPIC_DILATION
    else:
        entry.status = CONVERTED
    return entry


def _ar_dilation(conv_dilation: tuple[int, int], config: ARMAConfig) -> int:
    """The AR taps' dilation: the conv's own with ``ar_dilation="match"``, else the config's."""
    return conv_dilation[0] if config.ar_dilation == "match" else config.ar_dilation


def _new_ar(channels: int, dilation: tuple[int, int], like: torch.Tensor, training: bool,
            config: ARMAConfig) -> AutoRegressive2d:
    ar = AutoRegressive2d(channels, config.ar_kernel_size, config.boundary, config.reparam,
                          _ar_dilation(dilation, config))
    return ar.to(device=like.device, dtype=like.dtype).train(training)


def _ar_kwargs(conv: nn.Module, config: ARMAConfig) -> dict[str, Any]:
    return dict(ar_kernel_size=config.ar_kernel_size, boundary=config.boundary, reparam=config.reparam,
                ar_dilation=_ar_dilation(_pair(conv.dilation), config))


def _convert_modules(model: nn.Module, convs: dict[str, nn.Module], config: ARMAConfig) -> tuple[nn.Module, int]:
    """Convert in place: a plain ``nn.Conv2d`` is replaced by ``ARMAConv2d.from_conv`` wherever it
    is referenced; a subclass (or ``CondConv2d``) gains an ``ar`` child and keeps its class and
    forward. Returns the model (a new object only if it was a plain conv) and the AR parameters added."""
    replacements: dict[int, nn.Module] = {}
    added = 0
    for conv in convs.values():
        if type(conv) is nn.Conv2d:
            new = ARMAConv2d.from_conv(conv, **_ar_kwargs(conv, config))
            # Keep the model's own Parameter objects: weights tied between convs stay tied.
            new.weight, new.bias = conv.weight, conv.bias
            replacements[id(conv)] = new
            added += new.ar.alpha.numel()
        else:
            ar = _new_ar(conv.out_channels, _pair(conv.dilation), conv.weight, conv.training, config)
            attach_output_child(conv, AROutputMixin, ar)
            added += ar.alpha.numel()
    if id(model) in replacements:
        return replacements[id(model)], added
    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]
    return model, added


def _functional_entry(node: fx.Node, model: nn.Module, config: ARMAConfig, reason: str) -> ConvEntry:
    weight = _static_weight(node, model)
    kernel = tuple(weight.shape[-2:]) if weight is not None else None
    dilation = _pair(_conv_arg(node, 5, "dilation", 1))
    entry = ConvEntry(node.name, "functional", "F.conv2d", kernel, _conv_arg(node, 6, "groups", 1),
                      dilation, 1, SKIPPED, reason)
    if _followed_by_ar(node, model):
        entry.status, entry.reason = ALREADY, ""
    elif kernel == (1, 1) and not config.include_pointwise:
        entry.reason = POINTWISE
    return entry


def _conv_arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    value = node.args[index] if len(node.args) > index else node.kwargs.get(key, default)
    return value if isinstance(value, (int, tuple, list)) else default


def _static_weight(node: fx.Node, model: nn.Module) -> torch.Tensor | None:
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if isinstance(weight, fx.Node) and weight.op == "get_attr":
        return _get_attr(model, weight.target)
    return None


def _get_attr(model: nn.Module, target: str) -> Any:
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _graph_convert(model: nn.Module, graph: fx.Graph, convs: dict[str, nn.Module], config: ARMAConfig,
                   example_inputs: Any, report: ConversionReport) -> tuple[fx.GraphModule, int]:
    """Build the GraphModule and put an AR node after every conv call site to convert."""
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    gm.train(model.training)
    functional = _functional_nodes(gm)
    shapes = _output_shapes(gm, example_inputs) if functional else {}
    added = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in convs:
            conv = convs[node.target]
            added += _insert_ar_node(gm, node, f"{node.target}_ar", conv.out_channels, _pair(conv.dilation),
                                     conv.weight, config)
    for node in functional:
        entry = _functional_entry(node, gm, config, "")
        if entry.status == SKIPPED and not entry.reason:
            like = _static_weight(node, gm)
            channels = like.shape[0] if like is not None else shapes.get(node.name)
            if channels is None:
                entry.reason = UNKNOWN_CHANNELS
            else:
                like = like if like is not None else next(gm.parameters(), torch.zeros(()))
                added += _insert_ar_node(gm, node, f"{node.name}_ar", channels, entry.dilation, like, config)
                entry.status = CONVERTED
        report.entries.append(entry)
    gm.graph.lint()
    gm.recompile()
    return gm, added


def _functional_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in FUNCTIONAL_CONV2D]


def _output_shapes(gm: fx.GraphModule, example_inputs: Any) -> dict[str, int]:
    """Channel count of every functional conv output, by propagating ``example_inputs``."""
    if example_inputs is None:
        return {}
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    return {n.name: n.meta["tensor_meta"].shape[1] for n in _functional_nodes(gm) if "tensor_meta" in n.meta}


def _insert_ar_node(gm: fx.GraphModule, node: fx.Node, base_name: str, channels: int,
                    dilation: tuple[int, int], like: torch.Tensor, config: ARMAConfig) -> int:
    name, i = base_name, 0
    while _has_attr(gm, name):
        i += 1
        name = f"{base_name}_{i}"
    ar = _new_ar(channels, dilation, like, gm.training, config)
    gm.add_submodule(name, ar)
    with gm.graph.inserting_after(node):
        ar_node = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(ar_node, delete_user_cb=lambda user: user is not ar_node)
    return ar.alpha.numel()


def _has_attr(gm: nn.Module, target: str) -> bool:
    try:
        _get_attr(gm, target)
    except AttributeError:
        return False
    return True


def _default_example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A small input for models that state none: timm's ``pretrained_cfg`` input size, else
    ``[1, C, 64, 64]`` with ``C`` the first conv's input channels (64 is divisible by SMP's
    output stride 32)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    param = next(model.parameters(), torch.zeros(()))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (first.in_channels if first is not None else 3, 64, 64)
    return (torch.zeros(1, *size, device=param.device, dtype=param.dtype),)


def _nonlocal_channels(model: nn.Module, names: Sequence[str], example_inputs: Any) -> dict[str, int]:
    """Output channels of the ``nonlocal_after`` modules, from one eval-mode dry run."""
    if not names:
        return {}
    inputs = example_inputs if example_inputs is not None else _default_example_inputs(model)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    shapes: dict[str, tuple[int, ...]] = {}

    def record_shape(name: str):
        # A forward hook that returns a value replaces the module's output: return None.
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            shapes.setdefault(name, tuple(out.shape) if torch.is_tensor(out) else None)
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record_shape(n)) for n in names]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    except Exception as err:
        raise ValueError(f"could not run the model to find the output channels of nonlocal_after "
                         f"modules ({type(err).__name__}: {err}); pass example_inputs") from err
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    channels = {}
    for n in names:
        shape = shapes.get(n)
        if shape is None or len(shape) != 4:
            raise ValueError(f"nonlocal_after module {n!r} must output one [B, C, H, W] tensor "
                             f"during the forward; got {'nothing' if n not in shapes else shape}")
        channels[n] = shape[1]
    return channels


def _insert_nonlocal_modules(model: nn.Module, names: Sequence[str], channels: dict[str, int]) -> list[str]:
    """Put a ``NonLocal2d`` after each named module, in place: appended to an ``nn.Sequential``
    (whose forward runs all its children), otherwise as the child ``nonlocal_block``."""
    inserted = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, NonLocalOutputMixin) or (
                isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], NonLocal2d)):
            continue  # idempotent: the block is already there
        param = next(module.parameters(), None)
        block = NonLocal2d(channels[name])
        if param is not None:
            block.to(device=param.device, dtype=param.dtype)
        block.train(module.training)
        if isinstance(module, nn.Sequential):
            module.append(block)
        else:
            attach_output_child(module, NonLocalOutputMixin, block)
        inserted.append(name)
    return inserted


def _insert_nonlocal_nodes(gm: fx.GraphModule, names: Sequence[str], channels: dict[str, int]) -> list[str]:
    """Graph mode, for leaf modules: a ``NonLocal2d`` node after each call (after its AR node)."""
    inserted = []
    for name in names:
        for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]:
            if _followed_by_ar(node, gm):
                node = next(iter(node.users))
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and isinstance(
                    gm.get_submodule(users[0].target), NonLocal2d):
                continue
            block_name = f"{name}_nonlocal"
            i = 0
            while _has_attr(gm, block_name):
                i += 1
                block_name = f"{name}_nonlocal_{i}"
            like = next(gm.get_submodule(name).parameters(), torch.zeros(()))
            block = NonLocal2d(channels[name]).to(device=like.device, dtype=like.dtype).train(gm.training)
            gm.add_submodule(block_name, block)
            with gm.graph.inserting_after(node):
                nl_node = gm.graph.call_module(block_name, (node,))
            node.replace_all_uses_with(nl_node, delete_user_cb=lambda user, nl_node=nl_node: user is not nl_node)
            if name not in inserted:
                inserted.append(name)
    gm.recompile()
    return inserted
