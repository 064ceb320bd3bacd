"""ARMA checkpoints: safetensors weights, a rebuild recipe, a model card, the Hugging Face Hub.

A stock ``timm.create_model("hf-hub:...")`` cannot rebuild an ARMA model (Su et al., NeurIPS
2020, Def. 1: every converted conv carries an AR filter ``alpha``), so a checkpoint directory
holds everything needed to rebuild one without downloading anything but itself:

* ``model.safetensors``: the state dict (safetensors only; pickle is never written or read);
* ``config.json``: the format version, the *base* model (timm architecture + ``create_model``
  arguments, SMP class + init arguments, or an ``nn.Module`` class named by import path), the
  :class:`~arma_plugin.ARMAConfig` and the :class:`~arma_plugin.ConversionReport`;
* ``README.md``: a model card rendered from ``arma_plugin/model_cards/arma_model_card.md``.

Loading rebuilds the base with ``pretrained=False``, armafies it with the saved config and
loads the weights strictly. Hub-style directories written by timm's ``save_for_hf`` /
``push_to_hf_hub`` or SMP's ``save_pretrained`` are read as a *base* to armafy with
``from_pretrained(..., armafy_base=True)``: all file and Hub handling lives here, and
``armafy`` stays a pure model-to-model transform (data flows layers <- convert <- hub).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jinja2
import safetensors.torch
import torch
import torch.nn as nn
import yaml
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, HfHubHTTPError
from safetensors import SafetensorError

from .convert import ARMAConfig, armafy

__all__ = [
    "save_pretrained", "from_pretrained", "push_to_hub",
    "CheckpointError", "CheckpointNotFoundError", "IncompatibleCheckpointError",
    "CorruptCheckpointError", "CheckpointMismatchError", "UnknownArchitectureError",
    "UnsafeCheckpointError", "FORMAT_VERSION",
]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the ``config.json`` layout; a file with a larger number is refused."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CARD_TEMPLATE = "arma_model_card.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

TIMM = "timm"
SMP = "segmentation_models_pytorch"
FACTORY = "factory"
LIBRARIES = (TIMM, SMP, FACTORY)
# The constructor argument that sets the head size, and the state-dict prefix of the SMP head
# (timm names its classifier in ``pretrained_cfg["classifier"]``).
HEAD_SIZE_ARG = {TIMM: "num_classes", SMP: "classes"}
SMP_HEAD_PREFIXES = ("segmentation_head.",)
TASK_TAG = {TIMM: "image-classification", SMP: "image-segmentation"}
# Constructor arguments that load or download weights: never taken from a file or an override.
WEIGHT_LOADING_ARGS = {TIMM: ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                              "cache_dir"),
                       SMP: ("encoder_weights",), FACTORY: ()}
CARD_FIELDS = ("repo_id", "license", "base_model", "tags", "datasets", "pipeline_tag",
               "metrics", "description")


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; ``path`` names the file (or directory) at fault."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointNotFoundError(CheckpointError):
    """``config.json`` or ``model.safetensors`` is missing (locally, on the Hub or in its cache)."""


class IncompatibleCheckpointError(CheckpointError):
    """``config.json`` is from a newer format version, or is not an arma-plugin/timm/SMP config."""


class CorruptCheckpointError(CheckpointError):
    """A file is truncated, is not valid JSON/safetensors, or lacks a required field."""


class CheckpointMismatchError(CheckpointError):
    """The weights do not fit the rebuilt model: shapes differ, or keys are missing/unexpected."""


class UnknownArchitectureError(CheckpointError):
    """The base architecture, library or model class cannot be found in this environment."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint (``.bin``, ``.pt``, ...): refused, since unpickling can run any code."""


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
        model_args = data.get("model_args", {})
        if not isinstance(model_args, Mapping):
            raise CorruptCheckpointError(path, f"'base.model_args' must be an object, got {model_args!r}")
        pretrained_cfg = data.get("pretrained_cfg")
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, Mapping):
            raise CorruptCheckpointError(path, f"'base.pretrained_cfg' must be an object, got {pretrained_cfg!r}")
        return cls(data["library"], data["architecture"], dict(model_args), pretrained_cfg)


# --------------------------------------------------------------------------- saving


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *,
                    model_factory: str | type | None = None,
                    model_kwargs: Mapping[str, Any] | None = None,
                    model_card: bool = True, **card_fields: Any) -> Path:
    """Write ``model.safetensors``, ``config.json`` and (``model_card=True``) ``README.md``.

    Args:
        model: a model returned by :func:`~arma_plugin.armafy` (it carries ``arma_config`` and
            ``arma_report``), possibly fine-tuned since.
        save_directory: created if missing; existing files of the same names are replaced.
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

    Tied or shared parameters are stored once, as ``safetensors.torch.save_model`` does.
    Returns the directory.
    """
    unknown = sorted(set(card_fields) - set(CARD_FIELDS))
    if unknown:
        raise ValueError(f"save_pretrained: unknown card fields {unknown}; allowed are {list(CARD_FIELDS)}")
    arma_config, report = _arma_attributes(model)
    spec = _base_spec(model, model_factory, model_kwargs)
    config = {
        "arma_plugin_format": FORMAT_VERSION,
        "arma_plugin_version": _package_version(),
        "base": spec.to_dict(),
        "arma_config": arma_config.to_dict(),
        "conversion": report.to_dict(),
    }
    card = _render_model_card(config, **{"repo_id": str(save_directory), **card_fields}) if model_card else None
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    # write, then rename: an interrupted save never leaves a truncated model.safetensors
    staged = directory / f".{WEIGHTS_NAME}.tmp"
    try:
        safetensors.torch.save_model(model, str(staged), metadata={"format": "pt"})
        os.replace(staged, directory / WEIGHTS_NAME)
    finally:
        staged.unlink(missing_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if card is not None:
        (directory / CARD_NAME).write_text(card, encoding="utf-8")
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
                                 commit_message=commit_message)


def _arma_attributes(model: nn.Module):
    arma_config = getattr(model, "arma_config", None)
    report = getattr(model, "arma_report", None)
    if not isinstance(arma_config, ARMAConfig) or report is None:
        raise ValueError("save_pretrained: the model has no 'arma_config'/'arma_report' attributes; "
                         "save a model returned by arma_plugin.armafy(model)")
    return arma_config, report


def _base_spec(model: nn.Module, model_factory: str | type | None,
               model_kwargs: Mapping[str, Any] | None) -> BaseSpec:
    kwargs = dict(model_kwargs or {})
    if isinstance(model, torch.fx.GraphModule):
        raise ValueError("save_pretrained: a torch.fx.GraphModule (armafy with mode='graph') no longer "
                         "knows the timm/SMP model or class it was traced from, so it cannot be rebuilt; "
                         "armafy with mode='module' (the default) to save a checkpoint")
    if model_factory is not None:
        path = model_factory if isinstance(model_factory, str) else _import_path(model_factory)
        cls = _resolve_factory(path, "model_factory")
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


def _import_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_factory(path: str, where: str | os.PathLike) -> type:
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise UnknownArchitectureError(where, f"model factory {path!r} must look like 'package.module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise UnknownArchitectureError(where, f"cannot import model factory {path!r}: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UnknownArchitectureError(where, f"model factory {path!r} is not an nn.Module subclass; "
                                              "only model classes are called when loading")
    return obj


def _package_version() -> str:
    from . import __version__
    return __version__


# --------------------------------------------------------------------------- model card


def _render_model_card(config: Mapping[str, Any], **card_fields: Any) -> str:
    """The model card for a saved ``config.json`` dict: YAML front-matter, then markdown."""
    base = config["base"]
    library = base["library"]
    tags = ["arma", "arma-plugin"]
    if library in (TIMM, SMP):
        tags.append("timm" if library == TIMM else "segmentation-models-pytorch")
    pipeline_tag = card_fields.get("pipeline_tag") or TASK_TAG.get(library)
    if pipeline_tag:
        tags.append(pipeline_tag)
    front = {"library_name": "arma-plugin",
             "tags": list(dict.fromkeys(tags + _string_list(card_fields, "tags"))),
             "license": card_fields.get("license") or "other"}
    if card_fields.get("base_model"):
        front["base_model"] = card_fields["base_model"]
    if card_fields.get("datasets"):
        front["datasets"] = _string_list(card_fields, "datasets")
    if pipeline_tag:
        front["pipeline_tag"] = pipeline_tag
    metrics = card_fields.get("metrics")
    if metrics is not None and not isinstance(metrics, str):
        raise ValueError(f"card field 'metrics' must be a markdown string of measured results, got {metrics!r}")
    conversion = config["conversion"]
    repo_id = card_fields["repo_id"]
    template = resources.files(__package__).joinpath("model_cards", CARD_TEMPLATE).read_text("utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    return env.from_string(template).render(
        front_matter=yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        title=f"ARMA {base['architecture'].rpartition(':')[2]}: {Path(str(repo_id)).name}",
        repo_id=repo_id,
        base_description=_describe_base(base),
        arma_config_rows=[(k, repr(v).replace("|", "\\|")) for k, v in config["arma_config"].items()],
        converted=conversion["converted"],
        skipped=conversion["skipped"],
        ar_params_added=conversion["ar_params_added"],
        nonlocal_inserted=conversion["nonlocal_inserted"],
        metrics=metrics,
        description=card_fields.get("description"),
        license_given=bool(card_fields.get("license")),
        version=config["arma_plugin_version"],
    )


def _string_list(card_fields: Mapping[str, Any], name: str) -> list[str]:
    value = card_fields.get(name) or []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"card field {name!r} must be a list of strings, got {value!r}")
    return list(value)


def _describe_base(base: Mapping[str, Any]) -> str:
    args = base.get("model_args", {})
    if base["library"] == TIMM:
        return (f"the timm model `{base['architecture']}` (num_classes={args.get('num_classes')}, "
                f"in_chans={args.get('in_chans', 3)})")
    if base["library"] == SMP:
        return (f"the segmentation_models_pytorch `{base['architecture']}` with encoder "
                f"`{args.get('encoder_name')}` (classes={args.get('classes')}, "
                f"in_channels={args.get('in_channels')})")
    return f"the PyTorch model `{base['architecture']}`"


# --------------------------------------------------------------------------- loading


def from_pretrained(repo_id_or_path: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    token: str | bool | None = None, map_location: str | torch.device = "cpu",
                    strict: bool = True, armafy_base: bool = False,
                    arma_config: ARMAConfig | None = None, **overrides: Any) -> nn.Module:
    """Load an ARMA model saved by :func:`save_pretrained` / :func:`push_to_hub`.

    Args:
        repo_id_or_path: a local directory, or a Hub repo id resolved with
            ``huggingface_hub.hf_hub_download`` (honours ``HF_HUB_OFFLINE`` and the cache).
        revision, cache_dir, local_files_only, token: passed to ``hf_hub_download``.
        map_location: device the returned model lives on.
        strict: refuse missing or unexpected state-dict keys (shape mismatches are always refused).
        armafy_base: the directory is a plain timm (``save_for_hf``/``push_to_hf_hub``) or SMP
            (``save_pretrained``) checkpoint: load it as the base, then armafy it with
            ``arma_config`` (default ``ARMAConfig()``), giving an ARMA model equal to the base.
        arma_config: only with ``armafy_base=True``; an ARMA checkpoint uses its saved config.
        **overrides: constructor arguments replacing the saved ones. A different head size
            (timm ``num_classes``, SMP ``classes``) re-heads the model the way timm does: the
            classifier / segmentation head starts fresh, every other weight is loaded.

    The base is always built without pretrained weights (timm ``pretrained=False``, SMP
    ``encoder_weights=None``). The model is returned in eval mode, fully loaded or not at all:
    bad input raises a :class:`CheckpointError` subclass naming the file.
    """
    if arma_config is not None and not armafy_base:
        raise ValueError("from_pretrained: arma_config is only used with armafy_base=True; an ARMA "
                         "checkpoint is rebuilt with the ARMAConfig saved in its config.json")
    if arma_config is not None and not isinstance(arma_config, ARMAConfig):
        raise ValueError(f"from_pretrained: arma_config must be an ARMAConfig or None, got {arma_config!r}")
    fetch = _file_fetcher(repo_id_or_path, revision=revision, cache_dir=cache_dir,
                          local_files_only=local_files_only, token=token)
    config_path = fetch(CONFIG_NAME)
    config = _read_json(config_path)
    if armafy_base:
        spec = _base_spec_from_library_config(config, config_path)
        model = _build_base(spec, overrides, config_path)
        _load_weights(model, fetch(WEIGHTS_NAME), spec, overrides, strict=strict)
        model = armafy(model, arma_config or ARMAConfig(), inplace=True)
    else:
        spec, saved_config = _parse_arma_config(config, config_path)
        model = armafy(_build_base(spec, overrides, config_path), saved_config, inplace=True)
        _load_weights(model, fetch(WEIGHTS_NAME), spec, overrides, strict=strict)
    return model.to(map_location).eval()


def _file_fetcher(repo_id_or_path: str | os.PathLike, **hub_kwargs: Any):
    """``fetch(filename) -> local path`` for a directory or a Hub repo, refusing pickles."""
    source = Path(repo_id_or_path)
    if source.is_file():
        if source.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(source, _PICKLE_REFUSAL)
        raise CheckpointNotFoundError(source, "is a file; pass the directory that holds "
                                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if source.is_dir():
        def fetch_local(filename: str) -> str:
            path = source / filename
            if path.is_file():
                return str(path)
            if filename == WEIGHTS_NAME:
                pickles = sorted(p.name for p in source.iterdir() if p.suffix in PICKLE_SUFFIXES)
                if pickles:
                    raise UnsafeCheckpointError(source / pickles[0], _PICKLE_REFUSAL)
            raise CheckpointNotFoundError(path, "missing")
        return fetch_local

    repo_id = str(repo_id_or_path)

    def fetch_hub(filename: str) -> str:
        try:
            path = hf_hub_download(repo_id, filename, library_name="arma-plugin",
                                   library_version=_package_version(), **hub_kwargs)
        except HFValidationError as err:
            raise CheckpointNotFoundError(repo_id, "is neither a local directory nor a valid Hub "
                                                   f"repo id ({err})") from err
        except (EntryNotFoundError, HfHubHTTPError, OSError) as err:
            hint = (f"; arma-plugin reads only {WEIGHTS_NAME} (pickle checkpoints are refused)"
                    if filename == WEIGHTS_NAME else "")
            raise CheckpointNotFoundError(f"{repo_id}/{filename}", "not a local directory, and not "
                                          f"found on the Hub or in its cache{hint} "
                                          f"({type(err).__name__}: {err})") from err
        # later files come from the same commit, even if the repo is pushed to in between
        snapshot = Path(path).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", snapshot):
            hub_kwargs["revision"] = snapshot
        return path
    return fetch_hub


_PICKLE_REFUSAL = (f"pickle checkpoints are refused: unpickling can run arbitrary code. Convert it "
                   f"once, in a trusted environment, to {WEIGHTS_NAME} (safetensors.torch.save_file)")


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(path, f"is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CorruptCheckpointError(path, f"must hold a JSON object, got {type(data).__name__}")
    return data


def _parse_arma_config(config: dict[str, Any], path: str) -> tuple[BaseSpec, ARMAConfig]:
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
                  f"{config.get('arma_plugin_version', '?')}; this arma-plugin {_package_version()} "
                  f"reads versions <= {FORMAT_VERSION}: upgrade arma-plugin")
    for key in ("base", "arma_config"):
        if key not in config:
            raise CorruptCheckpointError(path, f"missing the '{key}' field")
    try:
        arma_config = ARMAConfig.from_dict(config["arma_config"])
    except (TypeError, ValueError) as err:
        raise CorruptCheckpointError(path, f"invalid 'arma_config': {err}") from err
    return BaseSpec.from_dict(config["base"], path), arma_config


def _base_spec_from_library_config(config: dict[str, Any], path: str) -> BaseSpec:
    """Read the ``config.json`` of timm's ``save_for_hf`` or SMP's ``save_pretrained``."""
    if "arma_plugin_format" in config:
        raise IncompatibleCheckpointError(path, "is already an ARMA checkpoint; load it without "
                                                "armafy_base=True")
    if "architecture" in config:  # timm: {architecture, num_classes, model_args, pretrained_cfg}
        pretrained_cfg = dict(config.get("pretrained_cfg", {}))
        model_args = dict(config.get("model_args", {}))
        num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
        if num_classes is not None:
            model_args.setdefault("num_classes", num_classes)
        return BaseSpec(TIMM, config["architecture"], model_args, pretrained_cfg)
    if "_model_class" in config:  # SMP's hub mixin: init kwargs plus the class name
        args = {k: v for k, v in config.items() if not k.startswith("_")}
        return BaseSpec(SMP, config["_model_class"], args)
    raise IncompatibleCheckpointError(path, "is neither a timm ('architecture') nor an SMP "
                                            "('_model_class') config")


def _build_base(spec: BaseSpec, overrides: Mapping[str, Any], path: str) -> nn.Module:
    """The base model with random weights; nothing is downloaded."""
    refused = WEIGHT_LOADING_ARGS[spec.library]
    if any(k in overrides for k in refused):
        raise ValueError(f"from_pretrained: overrides {sorted(set(refused) & set(overrides))} would load "
                         "base weights; all weights come from the checkpoint")
    model_args = dict(spec.model_args)
    if spec.library == SMP:
        model_args["encoder_weights"] = None  # saved for the record; the encoder is in the checkpoint
    elif any(k in model_args for k in refused):
        raise CorruptCheckpointError(path, f"model_args {sorted(set(refused) & set(model_args))} would "
                                           "load or download weights; refused")
    args = {**model_args, **overrides}
    if spec.library == TIMM:
        import timm
        if not timm.is_model(spec.architecture):
            raise UnknownArchitectureError(path, f"timm {timm.__version__} has no model "
                                                 f"{spec.architecture!r}")
        build = lambda: timm.create_model(spec.architecture, pretrained=False,  # noqa: E731
                                          pretrained_cfg=spec.pretrained_cfg or None, **args)
    elif spec.library == SMP:
        import segmentation_models_pytorch as smp
        cls = getattr(smp, spec.architecture, None)
        if not (isinstance(cls, type) and issubclass(cls, smp.base.SegmentationModel)):
            raise UnknownArchitectureError(path, f"segmentation_models_pytorch {smp.__version__} "
                                                 f"has no model class {spec.architecture!r}")
        build = lambda: cls(**args)  # noqa: E731
    else:
        cls = _resolve_factory(spec.architecture, path)
        build = lambda: cls(**args)  # noqa: E731
    try:
        return build()
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        problem = (f"cannot build {spec.library} {spec.architecture!r} with {args}: "
                   f"{type(err).__name__}: {err}")
        if overrides:
            raise ValueError(f"from_pretrained: overrides {dict(overrides)} rejected: {problem}") from err
        raise CorruptCheckpointError(path, problem) from err


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


def _load_weights(model: nn.Module, weights_path: str, spec: BaseSpec,
                  overrides: Mapping[str, Any], *, strict: bool) -> None:
    """Check every tensor against ``model`` first, then load: nothing is loaded half-way."""
    try:
        tensors = safetensors.torch.load_file(weights_path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CorruptCheckpointError(weights_path, f"is not a readable safetensors file "
                                                   f"(truncated or corrupt?): {err}") from err
    expected = model.state_dict()
    aliases = _alias_groups(expected)
    fresh_head = _head_prefixes(model, spec, overrides)
    mismatched, reheaded = [], []
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
    model.load_state_dict({k: v for k, v in tensors.items() if k not in skip}, strict=False)


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
