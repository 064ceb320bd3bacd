"""An armafied model's own ``save_pretrained`` / ``push_to_hub`` write an arma-plugin checkpoint.

SMP models (like every ``huggingface_hub.PyTorchModelHubMixin``) have ``save_pretrained`` and
``push_to_hub`` methods that write the library's checkpoint, which the library's
``from_pretrained`` rebuilds without the AR layers: it refuses their weights, or drops them
without a word with ``strict=False``. As PEFT's ``PeftModel.save_pretrained`` writes the adapter
format rather than the base model's, :func:`~arma_plugin.armafy` routes these methods of the
instance to arma-plugin's functions, so ``model.save_pretrained(d)`` writes a checkpoint that
:func:`arma_plugin.from_pretrained` rebuilds exactly.

The functions live in ``arma_plugin.hub``, which imports ``convert`` (layers <- convert <- hub),
so ``convert`` never imports them: the hub registers them here when it is imported, and
``import arma_plugin`` always imports the hub. A method is routed only where the model's class
has one of that name; the binding is a ``functools.partial`` of the model, which ``deepcopy``,
``pickle`` and ``torch.jit.script`` (it ignores non-module attributes) handle.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch.nn as nn

__all__ = ["register_save_methods", "route_save_methods"]

_SAVE_METHODS: dict[str, Callable[..., Any]] = {}


def register_save_methods(**functions: Callable[..., Any]) -> None:
    """``name=function(model, ...)``: what an armafied model's method ``name`` calls."""
    _SAVE_METHODS.update(functions)


def route_save_methods(model: nn.Module) -> None:
    """Bind every registered function to ``model`` where its class has a method of that name."""
    for name, function in _SAVE_METHODS.items():
        if callable(getattr(type(model), name, None)):
            model.__dict__[name] = functools.partial(function, model)
