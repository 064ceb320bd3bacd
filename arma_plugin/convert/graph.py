"""Graph mode (``ARMAConfig(mode="graph")``): an AR node after every 2-D conv call site.

The traced graph becomes a ``torch.fx.GraphModule`` in which each call of a conv module and
each functional ``F.conv2d`` call is followed by its own :class:`AutoRegressive2d` (Su et al.,
Def. 1: ``Y = A^{-1} (W * X)``), so a conv called twice gets two AR solves and convs the
module walk cannot reach (functional calls) are converted too.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from .classify import functional_entry, static_weight
from .config import ARMAConfig
from .conv_types import functional_conv_nodes
from .dispatch import identity_ar, identity_ar_after
from .fx_helpers import insert_module_after
from .report import ConversionReport, ConvStatus, SkipReason


def graph_convert(model: nn.Module, graph: fx.Graph, convs: dict[str, nn.Module], config: ARMAConfig,
                  example_inputs: Any, report: ConversionReport) -> tuple[fx.GraphModule, int]:
    """Build the GraphModule and put an AR node after every call site of ``convs`` and every
    functional conv; functional entries go to ``report``. Returns it and the AR parameters added."""
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    gm.train(model.training)
    functional = functional_conv_nodes(gm.graph)
    channels_of = _output_channels(gm, example_inputs) if functional else {}
    added = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in convs:
            ar = identity_ar_after(convs[node.target], config).train(gm.training)
            insert_module_after(gm, node, f"{node.target}_ar", ar)
            added += ar.alpha.numel()
    for node in functional:
        entry = functional_entry(node, gm, config, candidate_reason=None)
        if entry.status == ConvStatus.CONVERTED:
            like = static_weight(node, gm)
            channels = like.shape[0] if like is not None else channels_of.get(node.name)
            if channels is None:
                entry.status, entry.reason = ConvStatus.SKIPPED, SkipReason.UNKNOWN_CHANNELS
            else:
                like = like if like is not None else next(gm.parameters(), torch.zeros(()))
                ar = identity_ar(channels, entry.dilation, like, gm.training, config)
                insert_module_after(gm, node, f"{node.name}_ar", ar)
                added += ar.alpha.numel()
        report.entries.append(entry)
    gm.graph.lint()
    gm.recompile()
    return gm, added


def _output_channels(gm: fx.GraphModule, example_inputs: Any) -> dict[str, int]:
    """Channel count of every functional conv output, by propagating ``example_inputs``."""
    if example_inputs is None:
        return {}
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    return {n.name: n.meta["tensor_meta"].shape[1] for n in functional_conv_nodes(gm.graph) if "tensor_meta" in n.meta}
