"""The save and load habits of timm, SMP and plain PyTorch users, on armafied models."""
from __future__ import annotations

import copy
import json
import pickle
import shutil

import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch

import arma_plugin.hub.pretrained
from arma_plugin import ARMAConfig, CheckpointMismatchError, armafy, from_pretrained
from hub_models import (FakeHfApi, edit_config, rewrite_weights, states_equal, tiny_checkpoint,  # noqa: F401
                        trained_arma)


def _same_outputs(a, b, x) -> bool:
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_smp_models_own_save_pretrained_writes_a_checkpoint_that_loads_exactly(tmp_path):
    model, _, x = trained_arma("smp-unet")

    model.save_pretrained(tmp_path / "unet", metrics="| JS | 0.5 |")

    assert json.loads((tmp_path / "unet" / "config.json").read_text())["arma_plugin_format"] == 1
    loaded = from_pretrained(tmp_path / "unet")
    assert type(loaded) is type(model) and loaded.arma_config == model.arma_config
    assert states_equal(loaded, model) and _same_outputs(loaded, model, x)
    loaded.save_pretrained(tmp_path / "again")  # the loaded model keeps the habit
    assert states_equal(from_pretrained(tmp_path / "again"), model)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # each copy saves itself
        assert twin.save_pretrained.func is arma_plugin.hub.pretrained.save_pretrained
        assert twin.save_pretrained.args == (twin,) and twin.push_to_hub.args == (twin,)


def test_smp_models_own_push_to_hub_uploads_an_arma_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(arma_plugin.hub.pretrained, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    model, _, _ = trained_arma("smp-unet")

    model.push_to_hub("unet-arma", private=True)

    *_, (_, repo_id, _, _, files) = FakeHfApi.calls
    assert repo_id == "someone/unet-arma" and sorted(files) == ["README.md", "config.json", "model.safetensors"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert states_equal(from_pretrained(tmp_path), model)


def test_an_unconverted_smp_model_keeps_smps_own_save(tmp_path):
    unet = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8))
    unet.save_pretrained(tmp_path)
    assert "_model_class" in json.loads((tmp_path / "config.json").read_text())


def _library_saves(name, directory):
    """The armafied model saved by its library's own function (not routed): AR keys, no ARMAConfig."""
    model, _, _ = trained_arma(name)
    if name.startswith("smp"):
        type(model).save_pretrained(model, directory)  # the class's method, as SMP defines it
    else:
        timm.models.save_for_hf(model, directory, safe_serialization=True)
    return model


@pytest.mark.parametrize("name", ["smp-unet", "timm-test_resnet"])
@pytest.mark.parametrize("strict", [True, False])
def test_ar_weights_in_a_library_checkpoint_are_never_dropped(name, strict, tmp_path):
    _library_saves(name, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"holds AR weights .*ar\.alpha.*arma_plugin\.save_pretrained"):
        from_pretrained(tmp_path, armafy_base=True, strict=strict)


@pytest.mark.parametrize("key", ["layer1.0.conv1.ar.alpha", "conv1_ar.alpha", "stem_ar_2.alpha"])
def test_ar_weights_the_saved_config_has_no_layer_for_are_refused_even_when_not_strict(key, tiny_checkpoint,
                                                                                        tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "m")
    edit_config(directory, lambda c: c["arma_config"].update(exclude_modules=["layer1.0.conv1"]))
    rewrite_weights(directory, lambda t: t.update({key: torch.zeros(64, 1, 4)}))
    with pytest.raises(CheckpointMismatchError, match=f"holds AR weights .*{key}"):
        from_pretrained(directory, strict=False)


def test_a_plain_state_dict_round_trip(tmp_path):
    """What docs/checkpoints.md shows for a state dict: rebuild, armafy with the same config, load."""
    model, _, x = trained_arma("timm-test_resnet")
    safetensors.torch.save_model(model, tmp_path / "weights.safetensors")

    rebuilt = armafy(timm.create_model("test_resnet", pretrained=False, num_classes=4), model.arma_config)
    safetensors.torch.load_model(rebuilt, tmp_path / "weights.safetensors")

    assert states_equal(rebuilt.eval(), model) and _same_outputs(rebuilt, model, x)
    assert rebuilt.arma_config == ARMAConfig()
