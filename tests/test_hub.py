"""Checkpoints: save_pretrained -> from_pretrained, the Hub cache, push_to_hub, bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn

import arma_plugin.hub as hub
import arma_plugin.hub.files
import arma_plugin.hub.pretrained
from arma_plugin import ARMAConfig, armafy, from_pretrained, push_to_hub, save_pretrained
from arma_plugin.hub import (CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError,
                             IncompatibleCheckpointError, UnknownArchitectureError,
                             UnsafeCheckpointError)
from arma_plugin.hub.files import LOCK_NAME
from hub_models import (MODELS, TINY, FakeHfApi, TinyNet, copy_of, edit_config, rewrite_weights,  # noqa: F401
                        states_equal, tiny_checkpoint, trained_arma)


@pytest.mark.parametrize("name", ["timm-resnet18", "smp-unet", "factory-tinynet", "factory-tied"])
def test_round_trip_is_bit_exact(name, tmp_path):
    model, save_kwargs, x = trained_arma(name)
    directory = save_pretrained(model, tmp_path / name, **save_kwargs)
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_NAME, "README.md", "config.json", "model.safetensors"]

    loaded = from_pretrained(directory)

    assert type(loaded) is type(model) and not loaded.training
    assert states_equal(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.arma_config == model.arma_config


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    model, save_kwargs, _ = trained_arma("factory-tied")
    directory = save_pretrained(model, tmp_path / "tied", **save_kwargs)
    from safetensors import safe_open
    with safe_open(directory / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    assert len({"mix1.weight", "mix2.weight"} & stored) == 1
    loaded = from_pretrained(directory)
    assert loaded.mix2.weight is loaded.mix1.weight
    assert torch.equal(loaded.mix1.weight, model.mix1.weight)


def test_timm_pretrained_cfg_and_args_survive(tmp_path):
    model = armafy(timm.create_model("test_resnet", pretrained=False, num_classes=4, in_chans=1))
    loaded = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert (loaded.num_classes, loaded.conv1[0].in_channels) == (4, 1)
    assert tuple(loaded.pretrained_cfg["mean"]) == tuple(model.pretrained_cfg["mean"])


@pytest.mark.parametrize("name, head_arg, size, out_dim", [("timm-test_resnet", "num_classes", 7, -1),
                                                           ("timm-test_resnet", "num_classes", 0, -1),
                                                           ("smp-unet", "classes", 7, 1)])
def test_head_override_reheads_and_keeps_the_rest(name, head_arg, size, out_dim, tmp_path):
    model, save_kwargs, x = trained_arma(name)
    directory = save_pretrained(model, tmp_path / name, **save_kwargs)

    loaded = from_pretrained(directory, **{head_arg: size})

    with torch.no_grad():  # timm's num_classes=0 drops the classifier: the output is the features
        assert loaded(x).shape[out_dim] == (size or loaded.num_features)
    head = "fc." if name.startswith("timm") else "segmentation_head."
    saved = model.state_dict()
    kept = {k: v for k, v in loaded.state_dict().items() if not k.startswith(head)}
    assert kept and all(torch.equal(v, saved[k]) for k, v in kept.items())


def test_fake_hub_cache_offline(tiny_checkpoint, tmp_path, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--arma-tiny"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    expected = from_pretrained(tiny_checkpoint)
    requested = []

    def recording_download(repo_id, filename, **kwargs):
        requested.append((filename, kwargs["revision"]))
        return huggingface_hub.hf_hub_download(repo_id, filename, **kwargs)

    monkeypatch.setattr(arma_plugin.hub.files, "hf_hub_download", recording_download)

    for rev in (None, revision):
        requested.clear()
        loaded = from_pretrained("someone/arma-tiny", cache_dir=tmp_path / "cache", revision=rev)
        assert states_equal(loaded, expected)
        # the weights are fetched from the commit config.json resolved to
        assert requested == [("config.json", rev), ("model.safetensors", revision)]
    with pytest.raises(CheckpointNotFoundError, match="someone/not-cached/config.json"):
        from_pretrained("someone/not-cached", cache_dir=tmp_path / "cache")
    (repo / "snapshots" / revision / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="arma-tiny/model.safetensors.*reads only model.safetensors"):
        from_pretrained("someone/arma-tiny", cache_dir=tmp_path / "cache")


def test_push_to_hub_uploads_the_three_files(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(arma_plugin.hub.pretrained, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    model = from_pretrained(tiny_checkpoint)

    result = push_to_hub(model, "arma-tiny", private=True, token="hf_test", commit_message="first")

    assert result == "commit-info"
    (create, *rest), (upload, repo_id, repo_type, message, files) = FakeHfApi.calls
    assert create == "create_repo" and rest == ["arma-tiny", "model", True, True, "hf_test"]
    assert (upload, repo_id, repo_type, message) == ("upload_folder", "someone/arma-tiny", "model", "first")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert 'from_pretrained("someone/arma-tiny")' in files["README.md"].decode()
    # what went up is loadable and equals the model
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reloaded = from_pretrained(tmp_path)
    assert states_equal(reloaded, model)


def test_plain_timm_and_smp_directories_are_armafied_with_armafy_base(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    timm.models.save_for_hf(base, tmp_path / "timm", safe_serialization=True)
    unet = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, classes=2,
                    decoder_channels=(32, 16, 8)).eval()
    unet.save_pretrained(tmp_path / "smp")
    x = torch.randn(2, 3, 32, 32)

    for original, directory in ((base, tmp_path / "timm"), (unet, tmp_path / "smp")):
        model = from_pretrained(directory, armafy_base=True, arma_config=ARMAConfig(ar_kernel_size=5))
        assert model.arma_config.ar_kernel_size == 5 and model.arma_report.converted > 0
        with torch.no_grad():
            # alpha = 0 makes the AR solve the identity up to the solver's float32 round-off
            torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)
        with pytest.raises(IncompatibleCheckpointError, match="armafy_base=True"):
            from_pretrained(directory)


def test_timm_pickle_directory_is_refused(tmp_path):
    timm.models.save_for_hf(timm.create_model("test_resnet", pretrained=False), tmp_path)  # .bin only
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin.*arbitrary code"):
        from_pretrained(tmp_path, armafy_base=True)
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        from_pretrained(tmp_path / "pytorch_model.bin")


def truncate(d: Path) -> None:
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble_header(d: Path) -> None:
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


BAD_INPUTS = {
    "missing config": (lambda d: (d / "config.json").unlink(), CheckpointNotFoundError, "config.json: missing"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), CheckpointNotFoundError,
                        "model.safetensors: missing"),
    "pickle instead of weights": (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
                                  UnsafeCheckpointError, "pytorch_model.bin: pickle checkpoints are refused"),
    "newer format": (lambda d: edit_config(d, lambda c: c.update(arma_plugin_format=hub.FORMAT_VERSION + 1)),
                     IncompatibleCheckpointError, "config.json: format version .* upgrade arma-plugin"),
    "not json": (lambda d: (d / "config.json").write_text("{not json"), CorruptCheckpointError,
                 "config.json: is not valid JSON"),
    "not an arma config": (lambda d: (d / "config.json").write_text("{}"), IncompatibleCheckpointError,
                           "config.json: is not an arma-plugin config"),
    "truncated weights": (truncate, CorruptCheckpointError, "model.safetensors: is not a readable safetensors"),
    "corrupt header": (scramble_header, CorruptCheckpointError, "model.safetensors: is not a readable"),
    "num_classes differs": (lambda d: edit_config(d, lambda c: c["base"]["model_args"].update(num_classes=9)),
                            CheckpointMismatchError, r"model.safetensors: 2 tensor.*fc.weight.*num_classes=\.\.\."),
    "unknown architecture": (lambda d: edit_config(d, lambda c: c["base"].update(architecture="no_such_net")),
                             UnknownArchitectureError, "config.json: timm .* has no model 'no_such_net'"),
    "unknown library": (lambda d: edit_config(d, lambda c: c["base"].update(library="keras")),
                        UnknownArchitectureError, "config.json: unknown base library 'keras'"),
    # a Hub config.json names what gets called: only nn.Module classes are
    "factory is a function": (lambda d: edit_config(d, lambda c: c["base"].update(
        library="factory", architecture="os:system", model_args={"command": "true"})),
        UnknownArchitectureError, "config.json: model factory 'os:system' is not an nn.Module subclass"),
    "weight-loading model arg": (lambda d: edit_config(d, lambda c: c["base"]["model_args"].update(
        checkpoint_path="/tmp/x.pth")), CorruptCheckpointError, r"config.json: model_args \['checkpoint_path'\] would load"),
    "extra weight": (lambda d: _add_tensor(d, "stray.weight"), CheckpointMismatchError,
                     r"unexpected \['stray.weight'\]"),
    "config without save id": (lambda d: edit_config(d, lambda c: c.pop("save_id")), CorruptCheckpointError,
                               "config.json: missing the 'save_id' field"),
    "weights without save id": (lambda d: rewrite_weights(d, lambda t: None, keep_metadata=False),
                                CorruptCheckpointError, "model.safetensors: has no save id"),
}


def _add_tensor(d: Path, name: str) -> None:
    rewrite_weights(d, lambda tensors: tensors.update({name: torch.zeros(1)}))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_the_file(case, tiny_checkpoint, tmp_path):
    damage, error, message = BAD_INPUTS[case]
    directory = copy_of(tiny_checkpoint, tmp_path)
    damage(directory)
    with pytest.raises(error, match=message) as info:
        from_pretrained(directory)
    assert isinstance(info.value, hub.CheckpointError) and str(directory) in info.value.path


def test_strict_false_loads_despite_an_extra_key(tiny_checkpoint, tmp_path):
    directory = copy_of(tiny_checkpoint, tmp_path)
    _add_tensor(directory, "stray.weight")
    loaded = from_pretrained(directory, strict=False)
    expected = from_pretrained(tiny_checkpoint)
    assert states_equal(loaded, expected)


@pytest.mark.parametrize("overrides, message", [({"pretrained": True}, r"\['pretrained'\] would load base weights"),
                                                ({"no_such_arg": 1}, "overrides {'no_such_arg': 1} rejected")])
def test_bad_overrides_are_refused(overrides, message, tiny_checkpoint):
    with pytest.raises(ValueError, match=message):
        from_pretrained(tiny_checkpoint, **overrides)
    with pytest.raises(ValueError, match="only used with armafy_base=True"):
        from_pretrained(tiny_checkpoint, arma_config=ARMAConfig())


def test_save_refuses_what_it_cannot_rebuild(tmp_path):
    with pytest.raises(ValueError, match="pass model_factory='package.module:Class'"):
        save_pretrained(armafy(TinyNet()), tmp_path)
    with pytest.raises(ValueError, match="holds ARMA layers but no 'arma_config'"):
        stripped = armafy(timm.create_model("test_resnet", pretrained=False))
        del stripped.arma_config, stripped.arma_report
        save_pretrained(stripped, tmp_path)
    with pytest.raises(ValueError, match="does not build this model"):
        save_pretrained(armafy(TinyNet()), tmp_path, model_factory="torch.nn:Conv2d")
    with pytest.raises(ValueError, match=r"unknown card fields \['metric'\]"):
        save_pretrained(armafy(TinyNet()), tmp_path, model_factory=TINY, metric="0.9")
    with pytest.raises(ValueError, match="card field 'datasets' must be a list of strings"):
        save_pretrained(armafy(TinyNet()), tmp_path / "not-written", model_factory=TINY, datasets="isic")
    assert not (tmp_path / "not-written").exists(), "a refused card must not leave files behind"
    with pytest.raises(ValueError, match="mode='module'"):
        save_pretrained(armafy(TinyNet(), mode="graph"), tmp_path, model_factory=TINY)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_pretrained(armafy(TinyNet()), tmp_path, model_factory=TINY, model_kwargs={"act": nn.ReLU})


@pytest.mark.parametrize("name", ["timm-test_resnet", "smp-unet", "factory-tinynet"])
def test_unconverted_model_round_trips_as_the_plain_base(name, tmp_path):
    build, save_kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    directory = save_pretrained(model, tmp_path / name, **save_kwargs)

    loaded = from_pretrained(directory)

    assert type(loaded) is type(model) and not hasattr(loaded, "arma_config")
    assert states_equal(loaded, model)
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    card = (directory / "README.md").read_text()
    assert "without ARMA layers" in card and "## Conversion" not in card


@pytest.mark.parametrize("source", ["./missing", "/no/such/arma/dir", "~/no-such-arma-dir", "out/runs/missing",
                                    Path("missing"), "..\\missing"])
def test_a_local_looking_path_is_never_sent_to_the_hub(source, monkeypatch, caplog):
    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")
    monkeypatch.setattr(arma_plugin.hub.files, "hf_hub_download", no_hub)
    with pytest.raises(CheckpointNotFoundError, match="no such local directory") as info:
        from_pretrained(source)
    assert info.value.path == str(Path(source).expanduser()) and not caplog.records


def test_a_compiled_model_saves_as_the_model_it_wraps(tmp_path):
    from safetensors import safe_open
    model, save_kwargs, x = trained_arma("factory-tinynet")
    directory = save_pretrained(torch.compile(model), tmp_path / "m", **save_kwargs)
    with safe_open(directory / "model.safetensors", "pt") as f:
        assert f.keys() and not [k for k in f.keys() if "_orig_mod" in k]
    assert states_equal(from_pretrained(directory), model)
