"""The models the ``arma-plugin`` command accepts, and building one from what was typed.

``timm:NAME``, ``smp:ARCH/ENCODER``, or a :func:`~arma_plugin.save_pretrained` checkpoint: a local
directory or a Hub repo id ``user/name``. A string that looks like a local path is never sent
to the Hub, and a bare name (``resnet18``) is refused with the spec it probably meant. Every
refusal is a :class:`~arma_plugin.usage.UsageError`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.nn as nn

from .usage import UsageError

__all__ = ["MODEL_SPEC_HELP", "LIBRARIES", "build_model", "is_library_spec"]

MODEL_SPEC_HELP = ("timm:NAME (e.g. timm:vgg11), smp:ARCH/ENCODER (e.g. smp:Unet/resnet18), "
                   "or a checkpoint directory / Hub repo id (user/name) written by save_pretrained")
LIBRARIES = ("timm", "smp")


def build_model(spec: str, *, pretrained: bool = False, num_classes: int | None = None,
                trust_factories: Sequence[str] = ()) -> nn.Module:
    """A model from ``timm:NAME``, ``smp:ARCH/ENCODER`` or a ``save_pretrained`` directory / Hub id
    (``trust_factories``: see :func:`~arma_plugin.from_pretrained`)."""
    library, sep, name = spec.partition(":")
    if not is_library_spec(spec):
        if num_classes is not None or pretrained:
            raise UsageError(f"--num-classes and --pretrained apply to timm:/smp: models, not to checkpoint {spec!r}")
        return _load_checkpoint(spec, trust_factories)
    if library not in LIBRARIES:
        raise UsageError(f"unknown model library {library!r} in {spec!r}; a model is {MODEL_SPEC_HELP}")
    build = _build_timm if library == "timm" else _build_smp
    if not pretrained:
        return build(spec, name, pretrained, num_classes)
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return build(spec, name, pretrained, num_classes)
    except (OSError, EntryNotFoundError, HfHubHTTPError) as err:  # offline, no such weights, HTTP error
        raise UsageError(f"--pretrained: cannot download the weights of {spec} ({type(err).__name__}: {err}); "
                         "check the network (HF_HUB_OFFLINE=1 reads only the cache), or leave out --pretrained "
                         "for random weights") from err


def is_library_spec(spec: str) -> bool:
    """Whether ``spec`` names a model of a library (``timm:NAME``, ``smp:...``, or an unknown
    ``prefix:...``, refused by :func:`build_model`) rather than a checkpoint."""
    return ":" in spec and not _looks_like_path(spec)


def _announce_download(spec: str, pretrained: bool) -> None:
    if pretrained:  # an unreachable Hub takes a minute of retries: say what is being waited for
        print(f"fetching the pretrained weights of {spec} (Hugging Face Hub, or its cache)", flush=True)


def _build_timm(spec: str, name: str, pretrained: bool, num_classes: int | None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise UsageError(f"unknown timm model {name!r} (list them with timm.list_models())")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    _announce_download(spec, pretrained)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _build_smp(spec: str, name: str, pretrained: bool, num_classes: int | None) -> nn.Module:
    import segmentation_models_pytorch as smp

    arch, slash, encoder = name.partition("/")
    model_class = getattr(smp, arch, None)
    if not slash or not encoder or not (isinstance(model_class, type)
                                        and issubclass(model_class, smp.base.SegmentationModel)):
        raise UsageError(f"smp model must look like smp:ARCH/ENCODER with ARCH an SMP architecture "
                         f"(Unet, FPN, DeepLabV3, ...), got {spec!r}")
    kwargs = {} if num_classes is None else {"classes": num_classes}
    _announce_download(spec, pretrained)
    try:
        return model_class(encoder_name=encoder, encoder_weights="imagenet" if pretrained else None, **kwargs)
    except (KeyError, ValueError) as err:
        raise UsageError(f"cannot build {spec}: {err}") from err


def _looks_like_path(spec: str) -> bool:
    """A local path, never to be sent to the Hub: what :func:`~arma_plugin.from_pretrained` takes
    for one (it exists, starts with ``.``, ``/`` or ``~``, has more than one ``/``, ...), or a
    ``name/rest`` whose ``name`` is a local folder (a mistyped path inside it)."""
    from .hub.files import looks_like_local_path

    return looks_like_local_path(spec) or Path(spec.split("/")[0]).expanduser().is_dir()


def _load_checkpoint(spec: str, trust_factories: Sequence[str]) -> nn.Module:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .hub import CheckpointError, from_pretrained

    path = Path(spec).expanduser()
    if not path.is_dir():
        if _looks_like_path(spec):
            raise UsageError(f"no checkpoint directory {spec!r}; a model is {MODEL_SPEC_HELP}")
        if "/" not in spec:
            raise UsageError(_bare_name_hint(spec))
        try:
            validate_repo_id(spec)
        except HFValidationError:
            raise UsageError(f"{spec!r} is neither a checkpoint directory nor a Hub repo id (user/name); "
                             f"a model is {MODEL_SPEC_HELP}") from None
    try:
        return from_pretrained(path if path.is_dir() else spec, trust_factories=trust_factories)
    except CheckpointError as err:  # a missing or broken checkpoint is the user's input, not a bug
        raise UsageError(str(err)) from err
    except TimeoutError as err:  # another process kept saving into the checkpoint's folder
        raise UsageError(f"{spec}: {err}") from err


def _bare_name_hint(name: str) -> str:
    """The refusal of a bare name (no ``timm:``/``smp:``, no ``/``), with the spec it probably meant."""
    import segmentation_models_pytorch as smp
    import timm

    if timm.is_model(name):
        guess = f" (did you mean timm:{name}?)"
    elif isinstance(getattr(smp, name, None), type) and issubclass(getattr(smp, name), smp.base.SegmentationModel):
        guess = f" (did you mean smp:{name}/ENCODER, e.g. smp:{name}/resnet18?)"
    else:
        guess = ""
    return f"{name!r} is no checkpoint directory, and a bare name is not a model{guess}; a model is {MODEL_SPEC_HELP}"
