"""What a checkpoint may make the loader do: no weights but its own, no half saves, and only
CheckpointErrors for bad content (its model factory: test_hub_factory.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch

import arma_plugin.hub.files
from arma_plugin import (CheckpointError, CheckpointMismatchError, CorruptCheckpointError, armafy,
                         from_pretrained, save_pretrained)
from arma_plugin.hub.files import LOCK_NAME
from hub_models import edit_config, states_equal, tiny_checkpoint, trained_arma  # noqa: F401

# --------------------------------------------------------------------------- nothing read but the checkpoint


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to download fails (so a test that loads proves nothing was fetched)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def foreign_weights(tmp_path_factory) -> Path:
    """A loadable state dict outside the checkpoint: what a hostile config points to."""
    path = tmp_path_factory.mktemp("foreign") / "weights.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    return path


def _saved(name: str, directory: Path) -> tuple[torch.nn.Module, Path]:
    """A saved model of ``MODELS``, or an armafied SMP ``TimmUniversalEncoder`` saved as a factory
    (its ``pretrained`` defaults to True)."""
    if name != "factory-timm-universal":
        model, save_kwargs, _ = trained_arma(name)
        return model, save_pretrained(model, directory, **save_kwargs)
    from segmentation_models_pytorch.encoders.timm_universal import TimmUniversalEncoder
    torch.manual_seed(0)
    model = armafy(TimmUniversalEncoder("test_resnet", pretrained=False, depth=3)).eval()
    path = "segmentation_models_pytorch.encoders.timm_universal:TimmUniversalEncoder"
    return model, save_pretrained(model, directory, model_factory=path,
                                  model_kwargs={"name": "test_resnet", "depth": 3})


def _args(update):
    return lambda c: c["base"]["model_args"].update(update)


# (model, edit of config.json given the foreign file, the refusal's message)
REFUSED_WEIGHT_SOURCES = {
    "timm checkpoint_path": ("timm-test_resnet", lambda f: _args({"checkpoint_path": str(f)}),
                             r"model_args \['checkpoint_path'\]"),
    "timm pretrained_cfg_overlay file": ("timm-test_resnet",
                                         lambda f: _args({"pretrained_cfg_overlay": {"file": str(f)}}),
                                         r"model_args \['pretrained_cfg_overlay'\]"),
    "timm pretrained_cfg_overlay hf_hub_id": (
        "timm-test_resnet", lambda f: _args({"pretrained_cfg_overlay": {"hf_hub_id": "timm/resnet18.a1_in1k"}}),
        r"model_args \['pretrained_cfg_overlay'\]"),
    "timm cache_dir": ("timm-test_resnet", lambda f: _args({"cache_dir": str(f.parent)}),
                       r"model_args \['cache_dir'\]"),
    "timm hf-hub architecture": ("timm-test_resnet",
                                 lambda f: lambda c: c["base"].update(architecture="hf-hub:timm/resnet18.a1_in1k"),
                                 "architecture 'hf-hub:timm/resnet18.a1_in1k' names a model source"),
    "timm local-dir architecture": ("timm-test_resnet",
                                    lambda f: lambda c: c["base"].update(architecture=f"local-dir:{f.parent}"),
                                    "architecture 'local-dir:.*' names a model source"),
    "smp tu-hf-hub encoder": ("smp-unet", lambda f: _args({"encoder_name": "tu-hf-hub:timm/resnet18.a1_in1k"}),
                              r"model_args \['encoder_name'\]"),
    "smp tu- encoder checkpoint_path": ("smp-unet", lambda f: _args({"encoder_name": "tu-test_resnet",
                                                                     "checkpoint_path": str(f)}),
                                        r"model_args \['checkpoint_path'\]"),
    "smp nested aux_params": ("smp-unet", lambda f: _args({"aux_params": {"classes": 2, "extra": [
        {"pretrained_cfg_overlay": {"file": str(f)}}]}}),
        r"model_args \['aux_params.extra\[0\].pretrained_cfg_overlay'\]"),
    "factory nested overlay": ("factory-timm-universal",
                               lambda f: _args({"pretrained_cfg_overlay": {"hf_hub_id": "timm/resnet18.a1_in1k"}}),
                               r"model_args \['pretrained_cfg_overlay'\]"),
    "factory hf_hub name": ("factory-timm-universal", lambda f: _args({"name": "hf_hub:timm/resnet18.a1_in1k"}),
                            r"model_args \['name'\]"),
}


@pytest.mark.parametrize("case", list(REFUSED_WEIGHT_SOURCES))
def test_weight_sources_in_the_config_are_refused(case, foreign_weights, offline, tmp_path):
    name, edit, message = REFUSED_WEIGHT_SOURCES[case]
    _, directory = _saved(name, tmp_path / "m")
    edit_config(directory, edit(foreign_weights))
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        from_pretrained(directory)
    assert info.value.path == str(directory / "config.json")


# Pretrained switches set on at the top level of the file, or left at a constructor default of
# True, are forced off: the load succeeds offline, so nothing was fetched, and equals the model.
FORCED_OFF = {
    "timm pretrained=True": ("timm-test_resnet", _args({"pretrained": True})),
    "smp encoder_weights=imagenet": ("smp-unet", _args({"encoder_weights": "imagenet"})),
    "factory pretrained left at its default True": ("factory-timm-universal", lambda c: None),
    "factory pretrained=True": ("factory-timm-universal", _args({"pretrained": True})),
}


@pytest.mark.parametrize("case", list(FORCED_OFF))
def test_pretrained_switches_are_forced_off(case, offline, tmp_path):
    name, edit = FORCED_OFF[case]
    model, directory = _saved(name, tmp_path / "m")
    edit_config(directory, edit)
    assert states_equal(from_pretrained(directory), model)


def test_nested_pretrained_switch_is_refused(offline, tmp_path):
    _, directory = _saved("smp-unet", tmp_path / "m")
    edit_config(directory, _args({"aux_params": {"classes": 2, "pretrained": True}}))
    with pytest.raises(CorruptCheckpointError, match=r"model_args \['aux_params.pretrained'\]"):
        from_pretrained(directory)


@pytest.mark.parametrize("overrides", [{"pretrained_cfg_overlay": {"file": "w.pth"}},
                                       {"encoder": {"nested": [{"checkpoint_path": "w.pth"}]}},
                                       {"encoder_name": "tu-hf-hub:timm/resnet18.a1_in1k"},
                                       {"encoder_weights": "imagenet"}])
def test_weight_sources_in_overrides_are_refused(overrides, tmp_path):
    model, save_kwargs, _ = trained_arma("smp-unet")
    directory = save_pretrained(model, tmp_path / "m", **save_kwargs)
    with pytest.raises(ValueError, match="would load base weights") as info:
        from_pretrained(directory, **overrides)
    assert not isinstance(info.value, CheckpointError), "overrides are the caller's, not the file's"


# --------------------------------------------------------------------------- atomic save


@pytest.mark.parametrize("published, outcome", [(0, "old"), (1, "refused"), (2, "new"), (3, "new")])
def test_interrupted_save_loads_old_or_new_or_fails(published, outcome, tmp_path, monkeypatch):
    """Crash after ``published`` of the three renames (weights, config, card): never a mix."""
    old, save_kwargs, x = trained_arma("factory-tinynet")
    directory = save_pretrained(old, tmp_path / "m", **save_kwargs)
    new = from_pretrained(directory)
    with torch.no_grad():
        new.head.weight.add_(1.0)
    real_replace = arma_plugin.hub.files.os.replace
    calls = []

    def crashing_replace(src, dst):
        if len(calls) == published:
            raise KeyboardInterrupt("simulated crash")
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(arma_plugin.hub.files.os, "replace", crashing_replace)
    if published < 3:
        with pytest.raises(KeyboardInterrupt):
            save_pretrained(new, directory, **save_kwargs)
    else:
        save_pretrained(new, directory, **save_kwargs)
    monkeypatch.undo()

    assert sorted(p.name for p in directory.iterdir()) == [LOCK_NAME, "README.md", "config.json",
                                                           "model.safetensors"]
    if outcome == "refused":
        with pytest.raises(CorruptCheckpointError, match="model.safetensors: comes from another save"):
            from_pretrained(directory)
    else:
        assert states_equal(from_pretrained(directory), old if outcome == "old" else new)


def test_save_keeps_other_files_of_the_directory(tmp_path):
    model, save_kwargs, _ = trained_arma("factory-tinynet")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    save_pretrained(model, tmp_path / "m", model_card=False, **save_kwargs)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [LOCK_NAME, "config.json", "model.safetensors",
                                                                  "notes.txt"]


# --------------------------------------------------------------------------- content errors


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_config_is_corrupt(depth, tmp_path):
    model, save_kwargs, _ = trained_arma("factory-tinynet")
    directory = save_pretrained(model, tmp_path / "m", **save_kwargs)
    text = (directory / "config.json").read_text()
    (directory / "config.json").write_text(text.replace('"model_args": {', '"deep": ' + "[" * depth + "]" * depth
                                                        + ', "model_args": {', 1))
    with pytest.raises(CorruptCheckpointError, match="config.json: is nested deeper than 32 levels"):
        from_pretrained(directory)


def test_target_modules_matching_nothing_is_a_mismatch(tmp_path):
    model, save_kwargs, _ = trained_arma("factory-tinynet")
    directory = save_pretrained(model, tmp_path / "m", **save_kwargs)
    edit_config(directory, lambda c: c["arma_config"].update(target_modules=["no_such_conv"]))
    with pytest.raises(CheckpointMismatchError, match="'arma_config' does not fit.*no_such_conv") as info:
        from_pretrained(directory)
    assert info.value.path == str(directory / "config.json")


FIELDS = [("arma_plugin_format",), ("save_id",), ("base",), ("base", "library"), ("base", "architecture"),
          ("base", "model_args"), ("base", "pretrained_cfg"), ("base", "model_args", "num_classes"),
          ("base", "model_args", "drop_rate"), ("base", "model_args", "channels"),
          ("base", "model_args", "cardinality"), ("arma_config",), ("arma_config", "ar_kernel_size"),
          ("arma_config", "target_modules"), ("arma_config", "boundary")]
JUNK = [None, True, -1, 1e308, "(", [], {}, [[{}]]]


@pytest.mark.parametrize("field", FIELDS, ids=".".join)
def test_any_junk_field_loads_or_raises_a_checkpoint_error(field, tiny_checkpoint, tmp_path):
    """The contract: whatever a config.json holds, from_pretrained raises only CheckpointErrors, and
    what loads holds the saved weights (and computes what the saved model does)."""
    saved, _, x = trained_arma("timm-test_resnet")
    for value in JUNK:
        directory = tmp_path / f"{value!r}"
        shutil.copytree(tiny_checkpoint, directory)

        def put(config, keys=field, value=value):
            for key in keys[:-1]:
                config = config[key]
            config[keys[-1]] = value
        edit_config(directory, put)
        try:
            loaded = from_pretrained(directory)
        except CheckpointError:
            continue
        assert states_equal(loaded, saved), f"{field}={value!r} loaded other weights"
        if field[:2] == ("base", "model_args"):
            # a constructor may accept a value its forward refuses (timm's drop_rate=-1); the
            # loader cannot judge that without running the model
            continue
        with torch.no_grad():
            assert torch.equal(loaded(x), saved(x)), f"{field}={value!r} loaded another computation"
