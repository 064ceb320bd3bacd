"""What a checkpoint's model factory may make the loader import and run: only trusted code,
and whatever that raises comes back as a CheckpointError."""
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

from arma_plugin import (CorruptCheckpointError, UnknownArchitectureError, UnsafeCheckpointError, from_pretrained,
                         save_pretrained)
from arma_plugin.hub import factory
from hub_models import TINY, edit_config, states_equal, trained_arma

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
