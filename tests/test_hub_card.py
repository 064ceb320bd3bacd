"""The model card save_pretrained writes: front-matter the Hub reads, and a load line that works."""
from __future__ import annotations

import re

import pytest
import torch
import yaml

from arma_plugin import save_pretrained
from hub_models import tiny_checkpoint, trained_arma  # noqa: F401


def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, "the card must start with YAML front-matter between --- lines"
    return yaml.safe_load(match.group(1)), match.group(2)


@pytest.mark.parametrize("name, library_tag, task", [("timm-test_resnet", "timm", "image-classification"),
                                                     ("smp-unet", "segmentation-models-pytorch",
                                                      "image-segmentation"),
                                                     ("factory-tinynet", None, None)])
def test_model_card_front_matter_and_load_snippet(name, library_tag, task, tmp_path):
    model, save_kwargs, x = trained_arma(name)
    metrics = "| split | top-1 |\n|---|---|\n| val | 0.123 |"
    directory = save_pretrained(model, tmp_path / name, **save_kwargs, metrics=metrics,
                                license="mit", base_model="timm/resnet18.a1_in1k", tags=["demo"])
    front, body = split_card((directory / "README.md").read_text())

    assert front["library_name"] == "arma-plugin" and front["license"] == "mit"
    assert front["base_model"] == "timm/resnet18.a1_in1k"
    assert {"arma", "demo"} <= set(front["tags"])
    assert (library_tag in front["tags"]) if library_tag else not {"timm", "segmentation-models-pytorch"} & set(front["tags"])
    assert front.get("pipeline_tag") == task
    assert metrics in body
    assert f"| convolutions converted | {model.arma_report.converted} |" in body
    assert f"| AR parameters added | {model.arma_report.ar_params_added} |" in body

    snippet = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    namespace: dict = {}
    exec(snippet, namespace)
    with torch.no_grad():
        assert torch.equal(namespace["model"](x), model(x))


def test_model_card_without_license_or_metrics_says_so(tiny_checkpoint):
    front, body = split_card((tiny_checkpoint / "README.md").read_text())
    assert front["license"] == "other" and "base_model" not in front
    assert "No evaluation results were supplied" in body and "did not state a license" in body


