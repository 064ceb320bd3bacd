"""``model.safetensors``: written with a save id, read, checked against the model, then loaded.

Safetensors only: pickle is never written or read. Every tensor is checked against the rebuilt
model before anything is loaded, so a model is loaded fully or not at all.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

import safetensors.torch
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .base_spec import HEAD_SIZE_ARG, SMP, SMP_HEAD_PREFIXES, BaseSpec
from .checkpoint_format import CONFIG_NAME, SAVE_ID_KEY
from .errors import CheckpointMismatchError, CorruptCheckpointError

__all__ = ["save_weights", "read_weights", "load_weights"]

_logger = logging.getLogger(__name__)
# The state-dict keys of armafy's AR parameters: "<conv>.ar.alpha" (module mode) and
# "<conv>_ar.alpha", "<conv>_ar_1.alpha", ... (graph mode).
_AR_KEY = re.compile(r"(?:(?:^|\.)ar|_ar(?:_\d+)?)\.alpha$")


def save_weights(model: nn.Module, path: str | os.PathLike, save_id: str) -> None:
    """Tied or shared parameters are stored once, as ``safetensors.torch.save_model`` does."""
    safetensors.torch.save_model(model, str(path), metadata={"format": "pt", SAVE_ID_KEY: save_id})


def read_weights(path: str | os.PathLike, save_id: str | None) -> dict[str, torch.Tensor]:
    """The tensors of ``path``. For an arma-plugin checkpoint (``save_id``: the id in
    ``config.json``) the file must carry the same save id in its metadata: weights from another
    save (an interrupted ``save_pretrained``) or without an id are refused. ``save_id=None``
    reads a timm/SMP checkpoint, which has no save id."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CorruptCheckpointError(path, f"is not a readable safetensors file "
                                           f"(truncated or corrupt?): {err}") from err
    if save_id is not None and SAVE_ID_KEY not in metadata:
        raise CorruptCheckpointError(path, f"has no save id in its metadata, so it cannot be matched "
                                           f"to {CONFIG_NAME}: save the model with save_pretrained")
    if save_id is not None and metadata[SAVE_ID_KEY] != save_id:
        raise CorruptCheckpointError(path, f"comes from another save than {CONFIG_NAME} (save id "
                                           f"{metadata.get(SAVE_ID_KEY)!r} vs {save_id!r}): an "
                                           "interrupted save_pretrained? Save the model again")
    return tensors


def _head_prefixes(model: nn.Module, spec: BaseSpec, overrides: Mapping[str, Any]) -> tuple[str, ...]:
    """State-dict prefixes of the head that an explicit head-size override re-initialises."""
    arg = HEAD_SIZE_ARG.get(spec.library)
    if arg is None or arg not in overrides or overrides[arg] == spec.model_args.get(arg):
        return ()
    if spec.library == SMP:
        return SMP_HEAD_PREFIXES
    classifier = model.pretrained_cfg.get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(n + "." for n in names)


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], weights_path: str,
                 spec: BaseSpec, overrides: Mapping[str, Any], *, strict: bool) -> None:
    """Check every tensor against ``model`` first, then load: nothing is loaded half-way."""
    expected = model.state_dict()
    aliases = _alias_groups(expected)
    fresh_head = _head_prefixes(model, spec, overrides)
    mismatched, reheaded = [], []
    not_floating = [name for name, tensor in tensors.items() if name in expected
                    and expected[name].is_floating_point() and not tensor.is_floating_point()]
    if not_floating:
        raise CheckpointMismatchError(weights_path, f"{len(not_floating)} tensor(s) are not floating point "
                                      f"but the model's are (a cast would lose or invent values): "
                                      + "; ".join(f"{k}: {tensors[k].dtype}" for k in not_floating[:5]))
    for name, tensor in tensors.items():
        if name in expected and tensor.shape != expected[name].shape:
            if name.startswith(fresh_head):
                reheaded.append(name)
            else:
                mismatched.append(f"{name}: file {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}")
    if mismatched:
        hint = HEAD_SIZE_ARG.get(spec.library)
        hint = f"; to load with a different head size pass {hint}=... to from_pretrained" if hint else ""
        raise CheckpointMismatchError(weights_path, f"{len(mismatched)} tensor(s) do not fit the model "
                                      f"rebuilt from {CONFIG_NAME}: " + "; ".join(mismatched[:5]) + hint)
    missing = [k for k in expected if k not in tensors and not any(a in tensors for a in aliases[k])]
    unexpected = [k for k in tensors if k not in expected]
    if fresh_head:  # a head that appears or disappears (timm num_classes=0) is re-headed too
        reheaded += [k for k in missing + unexpected if k.startswith(fresh_head)]
        missing = [k for k in missing if not k.startswith(fresh_head)]
        unexpected = [k for k in unexpected if not k.startswith(fresh_head)]
    dropped_ar = [k for k in unexpected if _AR_KEY.search(k)]
    if dropped_ar:  # refused even with strict=False: the model would lose its ARMA layers
        raise CheckpointMismatchError(weights_path, f"holds AR weights that the model rebuilt from "
                                      f"{CONFIG_NAME} has no layer for: {dropped_ar[:5]} ({len(dropped_ar)}). "
                                      "A timm/SMP checkpoint written by the library's own save of an "
                                      "armafied model does not record how its AR layers were made; save "
                                      "such a model with arma_plugin.save_pretrained(model, directory)")
    if strict and (missing or unexpected):
        raise CheckpointMismatchError(weights_path, f"keys do not match the model rebuilt from "
                                      f"{CONFIG_NAME}: missing {missing[:5]} ({len(missing)}), "
                                      f"unexpected {unexpected[:5]} ({len(unexpected)})")
    if missing or unexpected:
        _logger.warning("%s: strict=False: left %d missing key(s) at their init %s, ignored %d "
                        "unexpected key(s) %s", weights_path, len(missing), missing[:5],
                        len(unexpected), unexpected[:5])
    if reheaded:
        _logger.warning("%s: new head, freshly initialised: %s", weights_path, reheaded)
    skip = set(unexpected) | set(reheaded)
    try:
        model.load_state_dict({k: v for k, v in tensors.items() if k not in skip}, strict=False)
    except RuntimeError as err:  # shapes were checked above; a dtype that cannot be copied remains
        raise CheckpointMismatchError(weights_path, f"cannot load into the rebuilt model: {err}") from err


def _alias_groups(state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """For each key, the other keys viewing the same memory (tied weights, stored once)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if t.numel():
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            groups.setdefault(key, []).append(name)
    out = {name: [] for name in state}
    for names in groups.values():
        for name in names:
            out[name] = [n for n in names if n != name]
    return out
