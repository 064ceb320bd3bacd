"""The checkpoint directory's layout: its file names and what ``config.json`` holds.

``config.json`` (format version :data:`FORMAT_VERSION`)::

    {"arma_plugin_format": 1, "arma_plugin_version": "0.1.0",
     "save_id": "<32 hex digits, also in model.safetensors' metadata>",
     "base": {"library": ..., "architecture": ..., "model_args": {...}, "pretrained_cfg": {...}},
     "arma_config": {...ARMAConfig...}, "conversion": {...ConversionReport...}}

A model saved without ARMA layers (not armafied) has ``"arma_config": null`` and
``"conversion": null``: loading rebuilds the base and loads its weights.
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

from ..convert import ARMAConfig
from ..version import __version__
from .base_spec import BaseSpec
from .errors import CorruptCheckpointError, IncompatibleCheckpointError

__all__ = ["FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "PICKLE_SUFFIXES",
           "SAVE_ID_KEY", "MAX_CONFIG_DEPTH", "package_version", "new_save_id", "read_config",
           "parse_arma_config"]

FORMAT_VERSION = 1
"""Version of the ``config.json`` layout; a file with a larger number is refused."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# A fresh random id per save, written to config.json and to model.safetensors' metadata: weights
# whose id differs from the config's (an interrupted save) are refused (weights.read_weights).
SAVE_ID_KEY = "save_id"
_SAVE_ID = re.compile(r"[0-9a-f]{32}")
# Real configs nest a few levels (timm block args); a deeper one is refused before any recursion.
MAX_CONFIG_DEPTH = 32


class _NonFiniteNumber(ValueError):
    pass


def _refuse_non_finite(literal: str) -> None:
    """``json.loads`` accepts ``NaN``/``Infinity``/``-Infinity``, which no JSON standard has."""
    raise _NonFiniteNumber(literal)


def _finite_float(literal: str) -> float:
    """A JSON number; one too large for a float (``1e999``) would become ``inf``."""
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFiniteNumber(literal)
    return value


def package_version() -> str:
    return __version__


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` as a dict, refused as corrupt if unreadable or nested too deep."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_refuse_non_finite,
                          parse_float=_finite_float)
    except OSError as err:
        raise CorruptCheckpointError(path, f"cannot be read ({err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(path, f"is not valid JSON ({err})") from err
    except _NonFiniteNumber as err:
        raise CorruptCheckpointError(path, f"holds the non-finite number {err}; JSON numbers must be "
                                           "finite") from err
    except RecursionError as err:
        raise CorruptCheckpointError(path, f"is nested deeper than {MAX_CONFIG_DEPTH} levels") from err
    if not isinstance(data, dict):
        raise CorruptCheckpointError(path, f"must hold a JSON object, got {type(data).__name__}")
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise CorruptCheckpointError(path, f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return data


def new_save_id() -> str:
    return uuid.uuid4().hex


def parse_arma_config(config: dict[str, Any], path: str) -> tuple[BaseSpec, ARMAConfig | None]:
    """The base spec and the ARMA config of an arma-plugin ``config.json``; the config is
    ``None`` for a model saved without ARMA layers (``"arma_config": null``)."""
    version = config.get("arma_plugin_format")
    if version is None:
        if "architecture" in config or "_model_class" in config:
            raise IncompatibleCheckpointError(path, "is a plain timm/SMP checkpoint, not an ARMA one; "
                                                    "load it with from_pretrained(..., armafy_base=True)")
        raise IncompatibleCheckpointError(path, "is not an arma-plugin config (no 'arma_plugin_format')")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptCheckpointError(path, f"'arma_plugin_format' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise IncompatibleCheckpointError(
            path, f"format version {version} was written by arma-plugin "
                  f"{config.get('arma_plugin_version', '?')}; this arma-plugin {package_version()} "
                  f"reads versions <= {FORMAT_VERSION}: upgrade arma-plugin")
    for key in (SAVE_ID_KEY, "base", "arma_config"):
        if key not in config:
            raise CorruptCheckpointError(path, f"missing the '{key}' field")
    if not (isinstance(config[SAVE_ID_KEY], str) and _SAVE_ID.fullmatch(config[SAVE_ID_KEY])):
        raise CorruptCheckpointError(path, f"'{SAVE_ID_KEY}' must be 32 hexadecimal digits, got "
                                           f"{config[SAVE_ID_KEY]!r}")
    if config["arma_config"] is None:  # a model saved without ARMA layers: the base itself
        return BaseSpec.from_dict(config["base"], path), None
    try:
        arma_config = ARMAConfig.from_dict(config["arma_config"])
    except (TypeError, ValueError) as err:
        raise CorruptCheckpointError(path, f"invalid 'arma_config': {err}") from err
    return BaseSpec.from_dict(config["base"], path), arma_config
