"""``ARMAConfig.nonlocal_after``: a zero-initialised :class:`NonLocal2d` after named modules.

Su et al., Sec. 4 / Table 2 ("NL ARMA U-Net"). The block is the identity at init, so the
model still computes what it did. Its channel count is the module's output channels, found
by one eval-mode forward with hooks.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ..layers.autoregressive import AutoRegressive2d
from ..layers.nonlocal_block import NonLocal2d
from .config import ConfigMismatchError
from .fx_helpers import insert_module_after, sole_module_user
from .output_subclass import NonLocalOutputMixin, attach_output_child


def default_example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A small input for models that state none: timm's ``pretrained_cfg`` input size, else
    ``[1, C, 64, 64]`` with ``C`` the first conv's input channels (64 is divisible by SMP's
    output stride 32)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    param = next(model.parameters(), torch.zeros(()))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (first.in_channels if first is not None else 3, 64, 64)
    return (torch.zeros(1, *size, device=param.device, dtype=param.dtype),)


def nonlocal_channels(model: nn.Module, names: Sequence[str], example_inputs: Any) -> dict[str, int]:
    """Output channels of the ``nonlocal_after`` modules, from one eval-mode dry run."""
    if not names:
        return {}
    inputs = example_inputs if example_inputs is not None else default_example_inputs(model)
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
            raise ConfigMismatchError(f"nonlocal_after module {n!r} must output one [B, C, H, W] tensor "
                             f"during the forward; got {'nothing' if n not in shapes else shape}")
        channels[n] = shape[1]
    return channels


def _new_block(channels: int, like: torch.Tensor | None, training: bool) -> NonLocal2d:
    block = NonLocal2d(channels)
    if like is not None:
        block.to(device=like.device, dtype=like.dtype)
    return block.train(training)


def insert_nonlocal_modules(model: nn.Module, names: Sequence[str], channels: dict[str, int]) -> list[str]:
    """Put a ``NonLocal2d`` after each named module, in place: appended to an ``nn.Sequential``
    (whose forward runs all its children), otherwise as the child ``nonlocal_block``."""
    inserted = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, NonLocalOutputMixin) or (
                isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], NonLocal2d)):
            continue  # idempotent: the block is already there
        block = _new_block(channels[name], next(module.parameters(), None), module.training)
        if isinstance(module, nn.Sequential):
            module.append(block)
        else:
            attach_output_child(module, NonLocalOutputMixin, block)
        inserted.append(name)
    return inserted


def insert_nonlocal_nodes(gm: fx.GraphModule, names: Sequence[str], channels: dict[str, int]) -> list[str]:
    """Graph mode, for leaf modules: a ``NonLocal2d`` node after each call (after its AR node)."""
    inserted = []
    for name in names:
        for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]:
            node = sole_module_user(node, gm, AutoRegressive2d) or node
            if sole_module_user(node, gm, NonLocal2d) is not None:
                continue  # idempotent: the block is already there
            like = next(gm.get_submodule(name).parameters(), torch.zeros(()))
            insert_module_after(gm, node, f"{name}_nonlocal", _new_block(channels[name], like, gm.training))
            if name not in inserted:
                inserted.append(name)
    gm.recompile()
    return inserted
