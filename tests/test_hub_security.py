"""What a checkpoint may make the loader do: no code of its own, no weights but its own, no half
saves, and only CheckpointErrors for bad content."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import timm
import torch

import arma_plugin.hub.files
from arma_plugin.hub import factory
from arma_plugin.hub.files import LOCK_NAME
from arma_plugin import (CheckpointError, CheckpointMismatchError, CorruptCheckpointError,
                         UnknownArchitectureError, UnsafeCheckpointError, armafy, from_pretrained,
                         save_pretrained)
from hub_models import TINY, edit_config, states_equal, tiny_checkpoint, trained_arma  # noqa: F401

# --------------------------------------------------------------------------- factories run no code


@pytest.fixture
def payload_checkpoint(tmp_path, monkeypatch):
    """``make(folder, module)``: a TinyNet checkpoint in ``tmp_path/ckpt`` whose factory is
    ``<module>:Model``, and ``folder/<module as a path>.py`` that writes ``marker`` when imported
    (in a namespace package if the module is dotted)."""
    model, save_kwargs, _ = trained_arma("factory-tinynet")
    checkpoint = save_pretrained(model, tmp_path / "ckpt", **save_kwargs)
    marker = tmp_path / "marker"
    names = []

    def make(folder: Path, module: str = "payload", last_line: str = "") -> Path:
        edit_config(checkpoint, lambda c: c["base"].update(architecture=f"{module}:Model"))
        source = folder.joinpath(*module.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            f"from {TINY.partition(':')[0]} import TinyNet as Model\n{last_line}\n")
        importlib.invalidate_caches()
        names.extend(module.split(".")[:i + 1] for i in range(module.count(".") + 1))
        return checkpoint

    yield make, checkpoint, marker
    for parts in names:
        sys.modules.pop(".".join(parts), None)


def _cwd_on_path(monkeypatch, folder: Path) -> None:
    """The situation of a REPL, a notebook or ``python -c``: '' (the cwd) first on sys.path."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", ["", *sys.path])


def _not_imported_installed_package() -> str:
    """A top-level package of an installed distribution that this process has not imported."""
    return next(name for name in sorted(importlib.metadata.packages_distributions())
                if name.isidentifier() and not name.startswith("_") and name not in sys.modules
                and importlib.util.find_spec(name) is not None)


def _setup_checkpoint_is_cwd(make, checkpoint, tmp_path, monkeypatch):
    make(checkpoint)
    _cwd_on_path(monkeypatch, checkpoint)
    return checkpoint


def _setup_checkpoint_on_sys_path(make, checkpoint, tmp_path, monkeypatch):
    make(checkpoint)
    monkeypatch.syspath_prepend(str(checkpoint))
    return checkpoint


def _setup_hub_cache_on_sys_path(make, checkpoint, tmp_path, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--payload"
    snapshot = repo / "snapshots" / revision
    make(checkpoint)
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.syspath_prepend(str(snapshot))
    return "someone/payload"


def _setup_cwd_not_installed(make, checkpoint, tmp_path, monkeypatch):
    make(tmp_path / "work")
    _cwd_on_path(monkeypatch, tmp_path / "work")
    return checkpoint


def _trust_as_the_project_does(monkeypatch, package: str) -> None:
    monkeypatch.setattr(factory, "TRUSTED_PACKAGES", factory.TRUSTED_PACKAGES | {package})


def _setup_installed_not_trusted(make, checkpoint, tmp_path, monkeypatch):
    make(tmp_path / "lib", _not_imported_installed_package())
    return checkpoint


def _setup_cwd_shadows_trusted(make, checkpoint, tmp_path, monkeypatch):
    package = _not_imported_installed_package()
    _trust_as_the_project_does(monkeypatch, package)
    make(tmp_path / "work", package)
    _cwd_on_path(monkeypatch, tmp_path / "work")
    return checkpoint


def _setup_cwd_portion_of_a_namespace_package(make, checkpoint, tmp_path, monkeypatch):
    """A trusted namespace package ``nspkg``, already imported; the cwd holds ``nspkg/payload.py``."""
    (tmp_path / "site" / "nspkg").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _trust_as_the_project_does(monkeypatch, "nspkg")
    make(tmp_path / "work", "nspkg.payload")
    _cwd_on_path(monkeypatch, tmp_path / "work")
    importlib.import_module("nspkg")
    return checkpoint


def _setup_other_folder_not_installed(make, checkpoint, tmp_path, monkeypatch):
    make(tmp_path / "lib")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    return checkpoint


REFUSED_FACTORY_MODULES = {
    "checkpoint folder is the cwd": (_setup_checkpoint_is_cwd, "inside the checkpoint or the Hub cache"),
    "checkpoint folder on sys.path": (_setup_checkpoint_on_sys_path, "inside the checkpoint or the Hub cache"),
    "Hub cache snapshot on sys.path": (_setup_hub_cache_on_sys_path, "inside the checkpoint or the Hub cache"),
    "cwd, not installed": (_setup_cwd_not_installed, "is not a package arma-plugin trusts"),
    "installed, not trusted": (_setup_installed_not_trusted, "is not a package arma-plugin trusts"),
    "cwd shadows a trusted package": (_setup_cwd_shadows_trusted, "from the current directory"),
    "cwd portion of a namespace package": (_setup_cwd_portion_of_a_namespace_package,
                                           "'nspkg.payload' would be imported from the current directory"),
    "other folder, not installed": (_setup_other_folder_not_installed, "is not a package arma-plugin trusts"),
}


@pytest.mark.parametrize("case", list(REFUSED_FACTORY_MODULES))
def test_factory_module_outside_installed_packages_is_not_imported(case, payload_checkpoint, tmp_path,
                                                                   monkeypatch):
    make, checkpoint, marker = payload_checkpoint
    setup, message = REFUSED_FACTORY_MODULES[case]
    source = setup(make, checkpoint, tmp_path, monkeypatch)
    module = json.loads((checkpoint / "config.json").read_text())["base"]["architecture"].partition(":")[0]

    with pytest.raises(UnsafeCheckpointError, match=message) as info:
        from_pretrained(source, cache_dir=tmp_path / "cache")

    assert not marker.exists() and module not in sys.modules, "the module must not have been imported"
    assert info.value.path.endswith("config.json")


def test_factory_module_trusted_by_the_caller_or_the_project_is_imported(payload_checkpoint, tmp_path,
                                                                         monkeypatch):
    make, checkpoint, marker = payload_checkpoint
    make(tmp_path / "work")
    _cwd_on_path(monkeypatch, tmp_path / "work")
    expected, _, _ = trained_arma("factory-tinynet")

    loaded = from_pretrained(checkpoint, trust_factories=["payload"])

    assert marker.exists() and states_equal(loaded, expected)
    # trusted by the project and not found in the cwd: imported without trust_factories
    sys.modules.pop("payload")
    marker.unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "work"), *sys.path[1:]])
    _trust_as_the_project_does(monkeypatch, "payload")
    assert states_equal(from_pretrained(checkpoint), expected) and marker.exists()


# modules whose import runs a command line, prints, or belongs to a package nobody trusted
UNTRUSTED_MODULES = ["pygments.__main__", "PIL.__main__", "this", "json.tool", "unittest.__main__",
                     "timm.__main__"]


@pytest.mark.parametrize("module", UNTRUSTED_MODULES)
def test_a_checkpoint_never_imports_an_untrusted_module(module, tmp_path, capsys):
    from arma_plugin.cli import main

    model, save_kwargs, _ = trained_arma("factory-tinynet")
    directory = save_pretrained(model, tmp_path / "m", **save_kwargs)
    edit_config(directory, lambda c: c["base"].update(architecture=f"{module}:Model"))
    capsys.readouterr()

    with pytest.raises(UnsafeCheckpointError, match="never imported|not a package arma-plugin trusts"):
        from_pretrained(directory)
    assert main(["inspect", str(directory)]) == 2

    assert module not in sys.modules
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and module in err
    if module.endswith("__main__"):  # trusting a package does not extend to its command line
        with pytest.raises(UnsafeCheckpointError, match="command-line entry point"):
            from_pretrained(directory, trust_factories=[module.partition(".")[0]])


@pytest.mark.parametrize("last_line, error", [("raise SystemExit(3)", "SystemExit: 3"),
                                              ("import sys; sys.exit('bye')", "SystemExit: bye"),
                                              ("raise RuntimeError('boom')", "RuntimeError: boom"),
                                              ("Model = len", "not an nn.Module subclass")])
def test_whatever_a_trusted_factory_raises_is_a_checkpoint_error(last_line, error, payload_checkpoint,
                                                                 tmp_path, monkeypatch):
    make, checkpoint, marker = payload_checkpoint
    make(tmp_path / "lib", last_line=last_line)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    with pytest.raises(UnknownArchitectureError, match=error):
        from_pretrained(checkpoint, trust_factories=["payload"])
    assert marker.exists(), "trusted: the module was imported"


def test_trust_never_extends_to_the_checkpoint_folder(payload_checkpoint, tmp_path, monkeypatch):
    make, checkpoint, marker = payload_checkpoint
    _setup_checkpoint_is_cwd(make, checkpoint, tmp_path, monkeypatch)
    with pytest.raises(UnsafeCheckpointError, match="inside the checkpoint"):
        from_pretrained(checkpoint, trust_factories=["payload"])
    assert not marker.exists()
    for bad in ("payload", 5, [5]):
        with pytest.raises(ValueError, match="trust_factories must be a list of package names"):
            from_pretrained(checkpoint, trust_factories=bad)


@pytest.mark.parametrize("architecture", ["..x:Y", "x:", ":Y", "x", "a..b:C", "a:1b", "a b:C", "os:path..join",
                                          "os.path:", 5])
def test_malformed_factory_path_is_a_checkpoint_error(architecture, tmp_path):
    model, save_kwargs, _ = trained_arma("factory-tinynet")
    directory = save_pretrained(model, tmp_path / "m", **save_kwargs)
    edit_config(directory, lambda c: c["base"].update(architecture=architecture))
    error = CorruptCheckpointError if architecture == 5 else UnknownArchitectureError
    with pytest.raises(error, match="architecture|must look like 'package.module:Class'") as info:
        from_pretrained(directory)
    assert info.value.path == str(directory / "config.json")


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
    """The contract: whatever a config.json holds, from_pretrained raises only CheckpointErrors."""
    for value in JUNK:
        directory = tmp_path / f"{value!r}"
        shutil.copytree(tiny_checkpoint, directory)

        def put(config, keys=field, value=value):
            for key in keys[:-1]:
                config = config[key]
            config[keys[-1]] = value
        edit_config(directory, put)
        try:
            from_pretrained(directory)
        except CheckpointError:
            pass



def test_cli_loads_a_factory_from_the_cwd_only_when_trusted(payload_checkpoint, tmp_path, monkeypatch, capsys):
    from arma_plugin.cli import main

    make, checkpoint, marker = payload_checkpoint
    make(tmp_path / "work")
    _cwd_on_path(monkeypatch, tmp_path / "work")
    assert main(["inspect", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "'payload'" in err and len(err.strip().splitlines()) == 1 and not marker.exists()
    assert main(["inspect", str(checkpoint), "--trust-factories", "payload"]) == 0
    assert "model: hub_models.TinyNet" in capsys.readouterr().out and marker.exists()  # payload re-exports TinyNet
