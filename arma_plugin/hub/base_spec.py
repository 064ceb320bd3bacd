"""What the base model is (timm / SMP / a model class) and how to rebuild it without its weights.

A checkpoint promises that nothing is downloaded or read but the checkpoint itself. The base is
rebuilt from arguments read from ``config.json``, and timm and SMP have several ways to fetch
weights from those arguments (timm ``create_model``: ``pretrained``, ``pretrained_cfg``,
``pretrained_cfg_overlay``, ``checkpoint_path``, ``cache_dir``, ``hf-hub:``/``local-dir:`` names;
SMP: ``encoder_weights``, and a ``tu-`` encoder passes its name and any extra argument on to
timm). The rule, applied to the arguments at every depth of nested objects and lists:

* a weight-source argument (:data:`WEIGHT_SOURCE_ARGS`) is refused;
* a string naming a model source (``hf-hub:``, ``hf_hub:``, ``local-dir:``, also after ``tu-``)
  is refused, in the arguments and in the architecture name;
* a pretrained switch (:data:`PRETRAINED_SWITCHES`) at the top level is forced off (the config
  records how the base was first built, e.g. SMP's ``encoder_weights="imagenet"``) and passed
  off explicitly to every constructor that accepts it (SMP's ``TimmUniversalEncoder`` defaults
  to ``pretrained=True``); a nested one that is on is refused.

timm's own ``pretrained_cfg`` is kept without its source fields (``url``, ``file``,
``hf_hub_id``, ...) and the model is built with ``pretrained=False``.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..validation import MAX_COUNT
from .errors import CorruptCheckpointError, IncompatibleCheckpointError, UnknownArchitectureError
from .factory import ImportPolicy, import_path, resolve_factory

__all__ = ["BaseSpec", "TIMM", "SMP", "FACTORY", "LIBRARIES", "HEAD_SIZE_ARG", "SMP_HEAD_PREFIXES",
           "WEIGHT_SOURCE_ARGS", "PRETRAINED_SWITCHES", "base_spec_of", "base_spec_from_library_config",
           "build_base", "weight_sources"]

TIMM = "timm"
SMP = "segmentation_models_pytorch"
FACTORY = "factory"
LIBRARIES = (TIMM, SMP, FACTORY)
# The constructor argument that sets the head size, and the state-dict prefix of the SMP head
# (timm names its classifier in ``pretrained_cfg["classifier"]``).
HEAD_SIZE_ARG = {TIMM: "num_classes", SMP: "classes"}
SMP_HEAD_PREFIXES = ("segmentation_head.",)
# Arguments that read or download weights, refused at any depth.
WEIGHT_SOURCE_ARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
# Arguments that switch a pretrained download on, and the value that switches it off.
PRETRAINED_SWITCHES = {"pretrained": False, "encoder_weights": None}
# timm's model sources other than its registry (timm.models.parse_model_name), also inside an
# SMP ``tu-`` encoder name.
_MODEL_SOURCE = re.compile(r"(?:hf[-_]hub|local-dir)\s*:", re.IGNORECASE)
# pretrained_cfg fields that say where weights come from (timm.models.filter_pretrained_cfg).
_PRETRAINED_CFG_SOURCES = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict")


@dataclass
class BaseSpec:
    """How to rebuild the model that ``armafy`` converted, with no pretrained download.

    ``architecture`` is a timm model name, an SMP class name (``"Unet"``) or, for
    ``library="factory"``, the import path ``"package.module:Class"`` of an ``nn.Module``.
    """

    library: str
    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"library": self.library, "architecture": self.architecture,
               "model_args": self.model_args}
        if self.pretrained_cfg is not None:
            out["pretrained_cfg"] = self.pretrained_cfg
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike) -> "BaseSpec":
        if not isinstance(data, Mapping) or not {"library", "architecture"} <= set(data):
            raise CorruptCheckpointError(path, f"'base' must be an object with 'library' and "
                                               f"'architecture', got {data!r}")
        if data["library"] not in LIBRARIES:
            raise UnknownArchitectureError(path, f"unknown base library {data['library']!r}; "
                                                 f"this arma-plugin knows {LIBRARIES}")
        if not isinstance(data["architecture"], str):
            raise CorruptCheckpointError(path, f"'base.architecture' must be a string, got "
                                               f"{data['architecture']!r}")
        model_args = data.get("model_args", {})
        if not isinstance(model_args, Mapping):
            raise CorruptCheckpointError(path, f"'base.model_args' must be an object, got {model_args!r}")
        pretrained_cfg = data.get("pretrained_cfg")
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, Mapping):
            raise CorruptCheckpointError(path, f"'base.pretrained_cfg' must be an object, got {pretrained_cfg!r}")
        return cls(data["library"], data["architecture"], dict(model_args),
                   None if pretrained_cfg is None else dict(pretrained_cfg))


# --------------------------------------------------------------------------- from a model


def base_spec_of(model: nn.Module, model_factory: str | type | None,
                 model_kwargs: Mapping[str, Any] | None) -> BaseSpec:
    """The spec ``save_pretrained`` records: read from a timm/SMP model, or the given class."""
    kwargs = dict(model_kwargs or {})
    if isinstance(model, torch.fx.GraphModule):
        raise ValueError("save_pretrained: a torch.fx.GraphModule (armafy with mode='graph') no longer "
                         "knows the timm/SMP model or class it was traced from, so it cannot be rebuilt; "
                         "armafy with mode='module' (the default) to save a checkpoint")
    if model_factory is not None:
        path = model_factory if isinstance(model_factory, str) else import_path(model_factory)
        cls = resolve_factory(path, "model_factory", policy=None)
        if not isinstance(model, cls):
            raise ValueError(f"model_factory {path!r} does not build this model: the model is a "
                             f"{type(model).__module__}.{type(model).__qualname__}")
        spec = BaseSpec(FACTORY, path, kwargs)
    elif _is_timm(model):
        import timm.models
        cfg = timm.models.filter_pretrained_cfg(
            {k: v for k, v in model.pretrained_cfg.items() if k != "state_dict"},
            remove_source=True, remove_null=True)
        cfg["num_classes"] = model.num_classes
        spec = BaseSpec(TIMM, cfg.pop("architecture"),
                        {**timm.models.get_model_args(model), **kwargs}, cfg)
    elif _is_smp(model):
        args = {k: v for k, v in model.config.items() if not k.startswith("_")}
        spec = BaseSpec(SMP, type(model).__name__, {**args, **kwargs})
    else:
        raise ValueError(
            f"save_pretrained: a {type(model).__module__}.{type(model).__qualname__} is neither a "
            "timm nor a segmentation_models_pytorch model, so it cannot be rebuilt from its name; "
            "pass model_factory='package.module:Class' (its nn.Module class) and model_kwargs={...} "
            "(the JSON-able constructor arguments)")
    for key, value in spec.model_args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"save_pretrained: model argument {key}={value!r} is not JSON-serialisable; "
                             f"pass a serialisable replacement in model_kwargs={{{key!r}: ...}}") from err
    # tuples become lists, as they will be when read back
    spec.model_args = json.loads(json.dumps(spec.model_args))
    spec.pretrained_cfg = json.loads(json.dumps(spec.pretrained_cfg))
    return spec


def _is_timm(model: nn.Module) -> bool:
    cfg = getattr(model, "pretrained_cfg", None)
    return type(model).__module__.startswith("timm.") and isinstance(cfg, Mapping) \
        and "architecture" in cfg


def _is_smp(model: nn.Module) -> bool:
    import segmentation_models_pytorch as smp
    return isinstance(model, smp.base.SegmentationModel) and \
        getattr(smp, type(model).__name__, None) is type(model)


# --------------------------------------------------------------------------- from a library's config


def base_spec_from_library_config(config: dict[str, Any], path: str) -> BaseSpec:
    """Read the ``config.json`` of timm's ``save_for_hf`` or SMP's ``save_pretrained``."""
    if "arma_plugin_format" in config:
        raise IncompatibleCheckpointError(path, "is already an ARMA checkpoint; load it without "
                                                "armafy_base=True")
    if "architecture" in config:  # timm: {architecture, num_classes, model_args, pretrained_cfg}
        pretrained_cfg = config.get("pretrained_cfg", {})
        model_args = config.get("model_args", {})
        if not isinstance(pretrained_cfg, Mapping) or not isinstance(model_args, Mapping):
            raise CorruptCheckpointError(path, "'pretrained_cfg' and 'model_args' must be objects")
        model_args = dict(model_args)
        num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
        if num_classes is not None:
            model_args.setdefault("num_classes", num_classes)
        return BaseSpec.from_dict({"library": TIMM, "architecture": config["architecture"],
                                   "model_args": model_args, "pretrained_cfg": pretrained_cfg}, path)
    if "_model_class" in config:  # SMP's hub mixin: init kwargs plus the class name
        args = {k: v for k, v in config.items() if not k.startswith("_")}
        return BaseSpec.from_dict({"library": SMP, "architecture": config["_model_class"],
                                   "model_args": args}, path)
    raise IncompatibleCheckpointError(path, "is neither a timm ('architecture') nor an SMP "
                                            "('_model_class') config")


# --------------------------------------------------------------------------- rebuilding


def weight_sources(value: Any, where: str = "") -> list[str]:
    """Where ``value`` (nested objects and lists) asks for weights, each as its path
    (``"encoder.checkpoint_path"``, ``"encoder_name"``): weight-source arguments, model-source
    strings, and pretrained switches set on below the top level (where they cannot be forced
    off without guessing what they belong to)."""
    found = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            at = f"{where}.{key}" if where else str(key)
            nested_switch_on = where and key in PRETRAINED_SWITCHES and item != PRETRAINED_SWITCHES[key]
            found += [at] if key in WEIGHT_SOURCE_ARGS or nested_switch_on else weight_sources(item, at)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += weight_sources(item, f"{where}[{index}]")
    elif isinstance(value, str) and _MODEL_SOURCE.search(value):
        found.append(where or repr(value))
    return found


def _leaves(value: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every value of nested objects and lists that is neither, with its path (``"a.b[0]"``)."""
    if isinstance(value, Mapping):
        return [leaf for key, item in value.items()
                for leaf in _leaves(item, f"{where}.{key}" if where else str(key))]
    if isinstance(value, (list, tuple)):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, f"{where}[{index}]")]
    return [(where, value)]


def _values_held(build: Callable[[], nn.Module]) -> int | None:
    """The parameters and persistent buffers of the model ``build`` makes, counted on the ``meta``
    device; ``None`` for a model that cannot be built there (the real build then says why)."""
    try:
        with torch.device("meta"):
            model = build()
    except (Exception, SystemExit):
        return None
    persistent = set(model.state_dict())
    return (sum(p.numel() for p in model.parameters())
            + sum(b.numel() for name, b in model.named_buffers() if name in persistent))


def _pretrained_switches_of(constructor: Callable) -> dict[str, Any]:
    """The pretrained switches ``constructor`` accepts, set off."""
    try:
        parameters = inspect.signature(constructor).parameters
    except (TypeError, ValueError):  # a constructor without a readable signature takes no switch
        return {}
    return {k: off for k, off in PRETRAINED_SWITCHES.items() if k in parameters}


def build_base(spec: BaseSpec, overrides: Mapping[str, Any], path: str, policy: ImportPolicy, *,
               max_values: int | None = None) -> nn.Module:
    """The base model with random weights; nothing is downloaded or read (module docstring).

    ``max_values``: the number of values in the checkpoint's weights. A base whose state dict
    would hold more (``num_classes=10**7`` in a small checkpoint) is refused before anything is
    allocated: it is first built on the ``meta`` device, where tensors have no storage.
    """
    refused = sorted(set(weight_sources(dict(overrides))) | (set(PRETRAINED_SWITCHES) & set(overrides)))
    if refused:
        raise ValueError(f"from_pretrained: overrides {refused} would load base weights; all weights "
                         "come from the checkpoint")
    if weight_sources(spec.architecture):
        raise CorruptCheckpointError(path, f"architecture {spec.architecture!r} names a model source "
                                           "other than the library's registry; refused")
    refused = weight_sources(spec.model_args)
    if refused:
        raise CorruptCheckpointError(path, f"model_args {refused} would load or download weights; refused")
    oversized = [f"{at}={value}" for at, value in _leaves(spec.model_args)
                 if isinstance(value, int) and abs(value) > MAX_COUNT]
    if oversized:
        raise CorruptCheckpointError(path, f"model_args {oversized} exceed the bound {MAX_COUNT} on "
                                           "integers read from a checkpoint; refused before building")
    args = {**spec.model_args, **overrides}
    args.update({k: off for k, off in PRETRAINED_SWITCHES.items() if k in args})
    if spec.library == TIMM:
        import timm
        if not timm.is_model(spec.architecture):
            raise UnknownArchitectureError(path, f"timm {timm.__version__} has no model "
                                                 f"{spec.architecture!r}")
        pretrained_cfg = {k: v for k, v in (spec.pretrained_cfg or {}).items()
                          if k not in _PRETRAINED_CFG_SOURCES}
        args = {"pretrained": False, **args}
        build = lambda: timm.create_model(spec.architecture, pretrained_cfg=pretrained_cfg or None,  # noqa: E731
                                          **args)
    else:
        if spec.library == SMP:
            import segmentation_models_pytorch as smp
            cls = getattr(smp, spec.architecture, None)
            if not (isinstance(cls, type) and issubclass(cls, smp.base.SegmentationModel)):
                raise UnknownArchitectureError(path, f"segmentation_models_pytorch {smp.__version__} "
                                                     f"has no model class {spec.architecture!r}")
        else:
            cls = resolve_factory(spec.architecture, path, policy)
        args = {**_pretrained_switches_of(cls), **args}
        build = lambda: cls(**args)  # noqa: E731
    try:
        held = _values_held(build) if max_values is not None else None
        if held is not None and held > max_values:
            raise CorruptCheckpointError(path, f"describes a base model holding {held} values, more than "
                                               f"the {max_values} in its weights; refused before "
                                               "allocating it")
        return build()
    except CorruptCheckpointError:
        raise
    except (Exception, SystemExit) as err:  # the arguments come from the file: what they break is its fault
        problem = (f"cannot build {spec.library} {spec.architecture!r} with {args}: "
                   f"{type(err).__name__}: {err}")
        if overrides:
            raise ValueError(f"from_pretrained: overrides {dict(overrides)} rejected: {problem}") from err
        raise CorruptCheckpointError(path, problem) from err
