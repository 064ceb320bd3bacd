"""Small ``torch.fx`` idioms shared by graph-mode conversion and non-local insertion."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn


def get_attr(root: nn.Module, target: str) -> Any:
    """The object a ``get_attr`` / ``call_module`` target names (``"layer1.0.conv1.weight"``)."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def unique_submodule_name(root: nn.Module, base: str) -> str:
    """``base``, else ``base_1``, ``base_2``, ...: the first name no attribute of ``root`` uses."""
    name, i = base, 0
    while True:
        try:
            get_attr(root, name)
        except AttributeError:
            return name
        i += 1
        name = f"{base}_{i}"


def sole_module_user(node: fx.Node, root: nn.Module, module_type: type[nn.Module]) -> fx.Node | None:
    """The user of ``node`` if it has exactly one and that one calls a ``module_type`` module of ``root``."""
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module" and isinstance(root.get_submodule(users[0].target),
                                                                        module_type):
        return users[0]
    return None


def insert_module_after(gm: fx.GraphModule, node: fx.Node, base_name: str, module: nn.Module) -> fx.Node:
    """Register ``module`` under a unique name from ``base_name`` and route every use of ``node``
    through it: ``node -> module -> (former users)``. The caller recompiles."""
    name = unique_submodule_name(gm, base_name)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new_node = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new_node, delete_user_cb=lambda user: user is not new_node)
    return new_node
