"""The model card (``README.md``): ``huggingface_hub.ModelCard`` from the package's template.

The metadata (library, tags, license, task, base model, datasets) is a ``ModelCardData``, which
the Hub reads; the body says what the model is, how to load it, what the conversion did, and
the results the uploader measured.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import ModelCard, ModelCardData

from ..convert.report import SkipReason
from .base_spec import SMP, TIMM

__all__ = ["CARD_FIELDS", "check_card_fields", "build_model_card"]

CARD_TEMPLATE = "arma_model_card.md"
CARD_FIELDS = ("repo_id", "license", "base_model", "tags", "datasets", "pipeline_tag",
               "metrics", "description")
TASK_TAG = {TIMM: "image-classification", SMP: "image-segmentation"}
LIBRARY_TAG = {TIMM: "timm", SMP: "segmentation-models-pytorch"}


def check_card_fields(card_fields: Mapping[str, Any]) -> None:
    """Refuse unknown fields and fields of the wrong type, before anything is written."""
    unknown = sorted(set(card_fields) - set(CARD_FIELDS))
    if unknown:
        raise ValueError(f"save_pretrained: unknown card fields {unknown}; allowed are {list(CARD_FIELDS)}")
    for name in ("tags", "datasets"):
        _string_list(card_fields, name)
    metrics = card_fields.get("metrics")
    if metrics is not None and not isinstance(metrics, str):
        raise ValueError(f"card field 'metrics' must be a markdown string of measured results, got {metrics!r}")


def build_model_card(config: Mapping[str, Any], **card_fields: Any) -> ModelCard:
    """The model card for a saved ``config.json`` dict; ``card_fields`` as in ``save_pretrained``."""
    check_card_fields(card_fields)
    base = config["base"]
    library = base["library"]
    pipeline_tag = card_fields.get("pipeline_tag") or TASK_TAG.get(library)
    tags = ["arma", "arma-plugin", LIBRARY_TAG.get(library), pipeline_tag]
    card_data = ModelCardData(
        library_name="arma-plugin",
        license=card_fields.get("license") or "other",
        tags=list(dict.fromkeys(t for t in tags + _string_list(card_fields, "tags") if t)),
        base_model=card_fields.get("base_model") or None,
        datasets=_string_list(card_fields, "datasets") or None,
        pipeline_tag=pipeline_tag,
    )
    conversion = config["conversion"] or {}
    arma_config = config["arma_config"] or {}
    repo_id = card_fields["repo_id"]
    template = resources.files("arma_plugin").joinpath("model_cards", CARD_TEMPLATE).read_text("utf-8")
    return ModelCard.from_template(
        card_data, template_str=template,
        title=f"{'ARMA ' if conversion else ''}{base['architecture'].rpartition(':')[2]}: "
              f"{Path(str(repo_id)).name}",
        repo_id=repo_id,
        base_description=_describe_base(base),
        armafied=bool(conversion),
        arma_config_rows=[(k, repr(v).replace("|", "\\|")) for k, v in arma_config.items()],
        converted=conversion.get("converted"),
        skipped={SkipReason.parse(reason).explanation: n
                 for reason, n in conversion.get("skipped", {}).items()},
        ar_params_added=conversion.get("ar_params_added"),
        nonlocal_inserted=conversion.get("nonlocal_inserted"),
        metrics=card_fields.get("metrics"),
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
