"""save_pretrained / from_pretrained / push_to_hub: an ARMA model to a directory or the Hub and back."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import abc
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants

from ..convert import ARMAConfig, ConversionReport, armafy
from ..convert.save_methods import register_save_methods
from ..layers.autoregressive import AutoRegressive2d
from ..layers.nonlocal_block import NonLocal2d
from .base_spec import FACTORY, base_spec_from_library_config, base_spec_of, build_base
from .card import build_model_card, check_card_fields
from .checkpoint_format import (CARD_NAME, CONFIG_NAME, FORMAT_VERSION, SAVE_ID_KEY, WEIGHTS_NAME,
                                new_save_id, package_version, parse_arma_config, read_config)
from .errors import CheckpointMismatchError
from .factory import ImportPolicy
from .files import LOCK_NAME, directory_lock, file_fetcher, publish_files
from .weights import load_weights, read_weights, save_weights

__all__ = ["save_pretrained", "from_pretrained", "push_to_hub"]


# --------------------------------------------------------------------------- saving


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *,
                    model_factory: str | type | None = None,
                    model_kwargs: Mapping[str, Any] | None = None,
                    model_card: bool = True, **card_fields: Any) -> Path:
    """Write ``model.safetensors``, ``config.json`` and (``model_card=True``) ``README.md``.

    Args:
        model: a model returned by :func:`~arma_plugin.armafy` (it carries ``arma_config`` and
            ``arma_report``), possibly fine-tuned since, or a model that was never armafied
            (saved as the plain base; it loads back without ARMA layers).
        save_directory: created if missing; existing files of the same names are replaced,
            other files are left alone.
        model_factory: for a model that is neither timm nor SMP: the ``nn.Module`` subclass to
            rebuild it, as ``"package.module:Class"`` or the class itself. Only classes are
            accepted: a ``config.json`` from the Hub names what ``from_pretrained`` calls, and a
            class constructor is the only thing it may call.
        model_kwargs: JSON-able constructor arguments; for timm/SMP models they replace the
            ones read from the model (e.g. a serialisable stand-in for a layer class).
        model_card: also write the model card ``README.md``.
        **card_fields: model-card fields, any of ``repo_id`` (used in the load line; default the
            directory), ``license``, ``base_model``, ``tags``, ``datasets``, ``pipeline_tag``,
            ``metrics`` (a markdown string of *measured* results), ``description``.

    Tied or shared parameters are stored once, as ``safetensors.torch.save_model`` does. A
    ``torch.compile``'d model is saved as the model it wraps (no ``_orig_mod.`` keys).

    Interrupted and concurrent saves: every file is first written in full under a name unique
    to this save, then renamed into place (weights, config, card) holding the directory's lock
    (:mod:`arma_plugin.hub.files`). ``config.json`` and ``model.safetensors`` carry the same
    fresh save id, and :func:`from_pretrained` refuses a pair whose ids differ, so an interrupted
    save loads as the previous model or the new one, or raises :class:`CorruptCheckpointError`,
    and concurrent saves leave exactly one of the saved models: never a mix.
    Returns the directory.
    """
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
        model = model._orig_mod
    check_card_fields(card_fields)
    arma_config, report = _arma_attributes(model)
    spec = base_spec_of(model, model_factory, model_kwargs)
    if arma_config is None and spec.library != FACTORY and _has_ar_layers(model):
        raise ValueError("save_pretrained: the model holds ARMA layers but no 'arma_config'/'arma_report' "
                         "attributes, so it cannot be rebuilt; save the model armafy returned")
    config = {
        "arma_plugin_format": FORMAT_VERSION,
        "arma_plugin_version": package_version(),
        SAVE_ID_KEY: new_save_id(),
        "base": spec.to_dict(),
        "arma_config": None if arma_config is None else arma_config.to_dict(),
        "conversion": None if report is None else report.to_dict(),
    }
    writers = {WEIGHTS_NAME: lambda path: save_weights(model, path, config[SAVE_ID_KEY]),
               CONFIG_NAME: lambda path: path.write_text(json.dumps(config, indent=2) + "\n",
                                                         encoding="utf-8")}
    if model_card:
        writers[CARD_NAME] = build_model_card(config, **{"repo_id": str(save_directory),
                                                         **card_fields}).save
    directory = Path(save_directory)
    publish_files(directory, writers, config[SAVE_ID_KEY])
    return directory


def push_to_hub(model: nn.Module, repo_id: str, *, private: bool | None = None,
                token: str | bool | None = None,
                commit_message: str = "Upload ARMA model with arma-plugin",
                **save_kwargs: Any):
    """Save ``model`` as in :func:`save_pretrained` to a temporary folder and upload it.

    The repository is created if missing (``exist_ok=True``; ``private`` applies only then).
    ``save_kwargs`` go to :func:`save_pretrained`; the card's load line uses the full repo id
    (``namespace/name``) the Hub returns. Returns ``upload_folder``'s ``CommitInfo``.
    """
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    full_id = getattr(repo_url, "repo_id", None) or repo_id
    save_kwargs["repo_id"] = full_id
    with tempfile.TemporaryDirectory(prefix="arma-plugin-push-") as tmp:
        save_pretrained(model, tmp, **save_kwargs)
        return api.upload_folder(repo_id=full_id, folder_path=tmp, repo_type="model",
                                 commit_message=commit_message, ignore_patterns=[LOCK_NAME])


def _arma_attributes(model: nn.Module) -> tuple[ARMAConfig | None, ConversionReport | None]:
    """The model's ARMA config and report; both ``None`` for a model that was never armafied."""
    arma_config = getattr(model, "arma_config", None)
    report = getattr(model, "arma_report", None)
    if arma_config is None and report is None:
        return None, None
    if not isinstance(arma_config, ARMAConfig) or not isinstance(report, ConversionReport):
        raise ValueError(f"save_pretrained: the model's 'arma_config' ({type(arma_config).__name__}) "
                         f"and 'arma_report' ({type(report).__name__}) must be the ARMAConfig and "
                         "ConversionReport that arma_plugin.armafy sets")
    return arma_config, report


def _has_ar_layers(model: nn.Module) -> bool:
    return any(isinstance(m, (AutoRegressive2d, NonLocal2d)) for m in model.modules())


# --------------------------------------------------------------------------- loading


def from_pretrained(repo_id_or_path: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    token: str | bool | None = None, map_location: str | torch.device = "cpu",
                    strict: bool = True, armafy_base: bool = False,
                    arma_config: ARMAConfig | None = None, trust_factories: Iterable[str] = (),
                    **overrides: Any) -> nn.Module:
    """Load an ARMA model saved by :func:`save_pretrained` / :func:`push_to_hub`.

    Args:
        repo_id_or_path: a local directory, or a Hub repo id resolved with
            ``huggingface_hub.hf_hub_download`` (honours ``HF_HUB_OFFLINE`` and the cache).
        revision, cache_dir, local_files_only, token: passed to ``hf_hub_download``.
        map_location: device the returned model lives on.
        strict: refuse missing or unexpected state-dict keys (shape and dtype mismatches, and
            AR weights the rebuilt model has no layer for, are always refused).
        armafy_base: the directory is a plain timm (``save_for_hf``/``push_to_hf_hub``) or SMP
            (``save_pretrained``) checkpoint: load it as the base, then armafy it with
            ``arma_config`` (default ``ARMAConfig()``), giving an ARMA model equal to the base.
        arma_config: only with ``armafy_base=True``; an ARMA checkpoint uses its saved config.
        trust_factories: top-level package names (e.g. ``("mypkg",)``) from which a ``factory``
            checkpoint's model class may be imported, besides modules already imported and the
            packages the project trusts (arma_plugin, timm, segmentation_models_pytorch,
            torchvision). Never a ``__main__`` module, the checkpoint's directory or the Hub
            cache. See :mod:`arma_plugin.hub.factory` for the rule.
        **overrides: constructor arguments replacing the saved ones. A different head size
            (timm ``num_classes``, SMP ``classes``) re-heads the model the way timm does: the
            classifier / segmentation head starts fresh, every other weight is loaded.

    A string that looks like a local path (it exists, starts with ``.``, ``/``, ``~``, or holds
    more than one ``/``) is never looked up on the Hub. Nothing is downloaded or read but the
    checkpoint: the base is always built without
    pretrained weights, and arguments that would fetch weights are refused
    (:mod:`arma_plugin.hub.base_spec`). The model is returned in eval mode, fully loaded or not
    at all: every failure caused by the checkpoint's content raises a :class:`CheckpointError`
    subclass naming the file.
    """
    if arma_config is not None and not armafy_base:
        raise ValueError("from_pretrained: arma_config is only used with armafy_base=True; an ARMA "
                         "checkpoint is rebuilt with the ARMAConfig saved in its config.json")
    if arma_config is not None and not isinstance(arma_config, ARMAConfig):
        raise ValueError(f"from_pretrained: arma_config must be an ARMAConfig or None, got {arma_config!r}")
    trusted = (tuple(trust_factories) if isinstance(trust_factories, abc.Iterable)
               and not isinstance(trust_factories, str) else None)
    if trusted is None or not all(isinstance(name, str) for name in trusted):
        raise ValueError(f"from_pretrained: trust_factories must be a list of package names, "
                         f"got {trust_factories!r}")
    fetch, local_directory = file_fetcher(repo_id_or_path, revision=revision, cache_dir=cache_dir,
                                          local_files_only=local_files_only, token=token)
    with (directory_lock(local_directory, "from_pretrained", writing=False) if local_directory
          else contextlib.nullcontext()):
        config_path = fetch(CONFIG_NAME)
        config = read_config(config_path)
        weights_path = fetch(WEIGHTS_NAME)
        tensors = read_weights(weights_path, None if armafy_base else config.get(SAVE_ID_KEY))
    policy = ImportPolicy.for_checkpoint(Path(config_path).parent,
                                         cache_dir or hf_constants.HF_HUB_CACHE, trusted)
    # a strict load needs every value of the base in the file; overrides may re-head it larger
    max_values = sum(t.numel() for t in tensors.values()) if strict and not overrides else None
    if armafy_base:  # load the base's own weights, then armafy
        spec = base_spec_from_library_config(config, config_path)
        model = build_base(spec, overrides, config_path, policy, max_values=max_values)
    else:  # armafy with the saved config, then load the ARMA weights
        spec, saved_config = parse_arma_config(config, config_path)
        model = build_base(spec, overrides, config_path, policy, max_values=max_values)
        if saved_config is not None:
            try:
                model = armafy(model, saved_config, inplace=True)
            except (TypeError, ValueError) as err:
                raise CheckpointMismatchError(config_path, f"its 'arma_config' does not fit the "
                                                           f"rebuilt base model: {err}") from err
    load_weights(model, tensors, weights_path, spec, overrides, strict=strict)
    if armafy_base:
        model = armafy(model, arma_config or ARMAConfig(), inplace=True)
    return model.to(map_location).eval()


register_save_methods(save_pretrained=save_pretrained, push_to_hub=push_to_hub)
