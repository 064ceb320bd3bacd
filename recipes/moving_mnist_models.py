"""The Moving-MNIST model zoo (Su et al., NeurIPS 2020, Tables 3 and 4): ConvLSTM variants with
and without the AR part and non-local blocks, all one :class:`~arma_plugin.models.ConvLSTMNet`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from arma_plugin import ARMAConfig, armafy
from arma_plugin.models import ConvLSTMNet

MODEL_FACTORY = "arma_plugin.models.convlstm:ConvLSTMNet"
NO_AR = {"exclude_modules": ".*"}
"""ARMAConfig fields of a ConvLSTM with non-local blocks and no AR part: no conv is converted."""


@dataclass(frozen=True)
class Variant:
    """A Table-3/Table-4 row: gate-conv kernel and dilation, AR or not, non-local blocks or not."""

    kernel_size: int
    dilation: int
    arma: bool
    nonlocal_blocks: bool = False


BASE_VARIANTS = {
    "convlstm3": Variant(3, 1, False),
    "convlstm5": Variant(5, 1, False),
    "convlstm3-d2": Variant(3, 2, False),
    "armalstm3": Variant(3, 1, True),
    "armalstm3-d2": Variant(3, 2, True),
}
VARIANTS = {**BASE_VARIANTS,
            **{f"nl-{name}": Variant(v.kernel_size, v.dilation, v.arma, True) for name, v in BASE_VARIANTS.items()}}


def model_kwargs(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """JSON-able ``ConvLSTMNet`` arguments of one variant (also stored in its checkpoint)."""
    return dict(in_channels=1, hidden_channels=list(args.hidden_channels),
                layers_per_block=list(args.layers_per_block), skip_stride=args.skip_stride,
                kernel_size=variant.kernel_size, dilation=variant.dilation)


def arma_config(args: argparse.Namespace, net: ConvLSTMNet, variant: Variant) -> ARMAConfig:
    """The variant's ARMAConfig; non-local blocks follow the first gate conv of blocks 1 and 2
    (where the authors' network puts its blocks, at block inputs, Table 4)."""
    nonlocal_after = [f"blocks.{b}.0.gates" for b in (1, 2) if b < len(net.blocks)] \
        if variant.nonlocal_blocks else []
    fields = dict(ar_kernel_size=args.ar_kernel_size, boundary=args.boundary) if variant.arma else NO_AR
    return ARMAConfig(nonlocal_after=nonlocal_after, **fields)


def build_model(args: argparse.Namespace, name: str) -> ConvLSTMNet:
    """ConvLSTM of variant ``name``, armafied with its config (identity to the plain net at init)."""
    variant = VARIANTS[name]
    net = ConvLSTMNet(**model_kwargs(args, variant))
    if not (variant.arma or variant.nonlocal_blocks):
        return net
    example = torch.zeros(1, 2, 1, args.frame_size, args.frame_size)
    return armafy(net, arma_config(args, net, variant), example_inputs=example)
