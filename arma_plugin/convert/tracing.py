"""A ``torch.fx`` tracer that knows timm's and SMP's models, and what it learns about convs.

``armafy`` traces the model once to find out which 2-D convs the forward really calls and how
often, and which functional ``F.conv2d`` calls exist outside modules. Every ``nn.Conv2d``
(subclasses included) is a leaf, as are timm's registered non-traceable modules and functions
(``timm.layers._fx``) and this package's own layers. Convs inside another leaf are opaque to
the trace: they count as called, with an unknown number of calls.

A module whose forward cannot be traced (shape-dependent Python control flow, iterating a
tensor's shape, ...) is made a leaf and the model is traced again, so one untraceable decoder
block does not hide every other conv's call count; only an error in the root module's own
forward makes the whole trace fail.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch.fx as fx
import torch.nn as nn
from timm.layers import get_notrace_functions, get_notrace_modules, register_notrace_module

from ..layers.arma_conv import ARMAConv2d
from ..layers.autoregressive import AutoRegressive2d
from ..layers.nonlocal_block import NonLocal2d
from .conv_types import CONV_LIKE

OWN_LEAVES: tuple[type[nn.Module], ...] = (AutoRegressive2d, ARMAConv2d, NonLocal2d)

# So timm's own fx feature extraction (``features_only`` via fx, ``create_feature_extractor``)
# also works on armafied models: the AR solve indexes with the feature-map size.
for _leaf in OWN_LEAVES:
    register_notrace_module(_leaf)


MAX_RETRACES = 16


class ARMATracer(fx.Tracer):
    """fx tracer with conv, timm and arma-plugin leaves; counts leaf-module calls by name.

    ``extra_leaves`` are module names, ``extra_leaf_types`` module classes to keep opaque;
    ``failed_in`` is set to the innermost module whose forward raised during the last trace.
    """

    def __init__(self, extra_leaves: Iterable[str] = (), extra_leaf_types: Iterable[type] = ()) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.leaf_types = CONV_LIKE + OWN_LEAVES + tuple(get_notrace_modules()) + tuple(extra_leaf_types)
        self.extra_leaves = set(extra_leaves)
        self.leaf_calls: Counter[str] = Counter()
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (module_qualified_name in self.extra_leaves or isinstance(m, self.leaf_types)
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            self.leaf_calls[name] += 1
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name
            raise


@contextlib.contextmanager
def _without_input_shape_checks(model: nn.Module) -> Iterator[None]:
    """SMP's ``SegmentationModel.forward`` checks ``H % output_stride`` in Python, which a
    symbolic trace cannot evaluate; its ``requires_divisible_input_shape`` flag turns it off."""
    flag = "requires_divisible_input_shape"
    patched = [(m, vars(m).get(flag)) for m in model.modules()
               if getattr(m, flag, False) and callable(getattr(m, "check_input_shape", None))]
    for m, _ in patched:
        setattr(m, flag, False)
    try:
        yield
    finally:
        for m, own_value in patched:
            if own_value is None:
                delattr(m, flag)  # back to the class attribute
            else:
                setattr(m, flag, own_value)


@dataclass
class TraceResult:
    """What the trace tells about convs. ``graph`` is ``None`` when tracing failed."""

    graph: fx.Graph | None
    error: str | None = None
    leaf_calls: Counter = field(default_factory=Counter)
    used_attributes: set[str] = field(default_factory=set)
    untraceable: dict[str, str] = field(default_factory=dict)  # module name -> its trace error

    @property
    def traced(self) -> bool:
        return self.graph is not None

    def calls(self, name: str, opaque_leaves: list[str]) -> int | None:
        """Times the conv ``name`` is called; ``None`` if it sits in an opaque leaf that is called."""
        if name in self.leaf_calls:
            return self.leaf_calls[name]
        if any(name.startswith(leaf + ".") for leaf in opaque_leaves):
            return None
        return 0


def _message(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]


def trace_model(model: nn.Module) -> TraceResult:
    """Trace ``model``, making untraceable submodules leaves; on failure in the root's own
    forward return the error instead of raising (armafy then walks modules).

    An untraceable module without convs inside (a norm layer with a shape check, ...) makes its
    whole class a leaf, so its many instances cost one retrace, not one each.
    """
    untraceable: dict[str, str] = {}
    conv_free_types: set[type] = set()
    for _ in range(MAX_RETRACES):
        tracer = ARMATracer(untraceable, conv_free_types)
        try:
            with _without_input_shape_checks(model):
                graph = tracer.trace(model)
        except Exception as err:  # any failure means "not traceable here": narrow it down or report it
            if not tracer.failed_in or tracer.failed_in in untraceable:
                return TraceResult(None, _message(err), untraceable=untraceable)
            failed = model.get_submodule(tracer.failed_in)
            if not any(isinstance(m, CONV_LIKE) for m in failed.modules()):
                conv_free_types.add(type(failed))
            untraceable[tracer.failed_in] = _message(err)
            continue
        used = {n.target for n in graph.nodes if n.op == "get_attr"}
        return TraceResult(graph, None, tracer.leaf_calls, used, untraceable)
    return TraceResult(None, f"still untraceable after making {MAX_RETRACES} modules leaves", untraceable=untraceable)
