"""The model class named by a ``factory`` checkpoint, found without running the checkpoint's code.

A ``config.json`` names the class to rebuild as ``"package.module:Class"``. Importing a module
runs it (``pygments.__main__`` runs a command line, ``PIL.__main__`` prints a report), so no
module is imported *because a checkpoint names it* unless its code is already trusted, the way
``transformers`` refuses repository code unless ``trust_remote_code=True``. The rule, checked
for the module and every package above it before anything is imported:

* a module already imported in this process is used as it is (importing it runs nothing);
* otherwise its top-level package must be one the project trusts (:data:`TRUSTED_PACKAGES`:
  arma-plugin itself and the model libraries it builds on) and must not be found in the current
  directory (a file there would shadow the installed package), or one the caller names in
  ``trust_factories``; any other installed package, the standard library included, is refused;
* a ``__main__`` module (a package's command line) is never imported;
* in every case, nothing is imported from the checkpoint's own directory or the Hub cache.

Only then is the module imported, and the object it names must be an ``nn.Module`` subclass:
a class constructor is the only thing a checkpoint may call. Whatever the import raises,
``SystemExit`` included, becomes a :class:`~arma_plugin.hub.CheckpointError`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch.nn as nn

from .errors import UnknownArchitectureError, UnsafeCheckpointError

__all__ = ["TRUSTED_PACKAGES", "ImportPolicy", "import_path", "resolve_factory"]

TRUSTED_PACKAGES = frozenset({"arma_plugin", "timm", "segmentation_models_pytorch", "torchvision"})
"""Top-level packages whose modules a checkpoint's factory may be imported from (module docstring)."""

_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def import_path(cls: type) -> str:
    """``"package.module:Class"`` for a class, as ``save_pretrained`` records it."""
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass(frozen=True)
class ImportPolicy:
    """Which modules a checkpoint's factory may be imported from (see the module docstring).

    ``trusted``: top-level package names the caller vouches for (``trust_factories``);
    ``untrusted_dirs``: the checkpoint's directory and the Hub cache, never imported from.
    """

    trusted: frozenset[str] = frozenset()
    untrusted_dirs: tuple[Path, ...] = ()

    @classmethod
    def for_checkpoint(cls, checkpoint_dir: str | os.PathLike, hub_cache: str | os.PathLike,
                       trusted: Iterable[str]) -> "ImportPolicy":
        return cls(frozenset(trusted), (Path(checkpoint_dir).resolve(), Path(hub_cache).resolve()))

    def check(self, module_name: str, where: str | os.PathLike) -> None:
        """Raise :class:`UnsafeCheckpointError` unless importing ``module_name`` is allowed.

        ``find_spec`` locates a module without running it (it imports the parent packages,
        which the previous iterations allowed).
        """
        parts = module_name.split(".")
        top = parts[0]
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name in sys.modules:
                continue
            if parts[depth - 1] == "__main__":
                raise UnsafeCheckpointError(where, f"model factory module {module_name!r} is a command-line "
                                                   "entry point; it is never imported for a checkpoint")
            spec = _find_spec(name, where)
            for location in _locations(spec):
                if any(location.is_relative_to(d) for d in self.untrusted_dirs):
                    raise UnsafeCheckpointError(where, f"model factory module {name!r} is found in "
                                                       f"{location}, inside the checkpoint or the Hub "
                                                       "cache; code is never imported from there")
            if top not in self.trusted and top not in TRUSTED_PACKAGES:
                raise UnsafeCheckpointError(where, f"model factory module {module_name!r} is not imported "
                                                   f"yet and {top!r} is not a package arma-plugin trusts "
                                                   f"({', '.join(sorted(TRUSTED_PACKAGES))}); "
                                                   f"{_trust_hint(top)}")
            if top in self.trusted:
                continue
            # a top-level module, or one inside a namespace package (whose portions are gathered
            # from every sys.path entry), may come from the cwd; a regular package's submodules
            # come from the package's own, already allowed, directory
            parent = sys.modules.get(name.rpartition(".")[0])
            if depth == 1 or getattr(parent, "__file__", None) is None:
                self._check_not_in_cwd(top, name, spec, where)

    @staticmethod
    def _check_not_in_cwd(top: str, name: str, spec: Any, where: str | os.PathLike) -> None:
        cwd = Path.cwd().resolve()
        if any(p.parent == cwd or p.is_relative_to(cwd / top) for p in _locations(spec)):
            raise UnsafeCheckpointError(where, f"model factory module {name!r} would be imported from "
                                               f"the current directory {cwd}, not from the installed "
                                               f"package; {_trust_hint(top)}")


def _find_spec(name: str, where: str | os.PathLike) -> Any:
    """The module's spec, located without running it (only its allowed parents run)."""
    try:
        spec = importlib.util.find_spec(name)
    except (Exception, SystemExit) as err:  # a parent's import raising anything is the file's fault
        raise UnknownArchitectureError(where, f"cannot find model factory module {name!r}: "
                                              f"{type(err).__name__}: {err}") from err
    if spec is None:
        raise UnknownArchitectureError(where, f"cannot find model factory module {name!r}")
    return spec


def _trust_hint(top: str) -> str:
    return (f"if you trust it, pass trust_factories=({top!r},) to from_pretrained, or import {top} "
            "yourself first")


def _locations(spec: Any) -> list[Path]:
    """The file and package directories a module would be loaded from (none for built-ins)."""
    locations = [spec.origin] if spec.has_location and spec.origin else []
    locations += list(spec.submodule_search_locations or [])
    return [Path(p).resolve() for p in locations]


def resolve_factory(path: Any, where: str | os.PathLike, policy: ImportPolicy | None) -> type:
    """The ``nn.Module`` subclass named by ``"package.module:Class"``.

    ``policy=None`` imports freely: for ``save_pretrained``, where the caller names the class.
    """
    module_name, sep, qualname = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not (sep and _DOTTED_NAME.fullmatch(module_name) and _DOTTED_NAME.fullmatch(qualname)):
        raise UnknownArchitectureError(where, f"model factory {path!r} must look like "
                                              "'package.module:Class' (dotted Python names)")
    if policy is not None:
        policy.check(module_name, where)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as err:  # whatever the module's code raises, exiting included
        raise UnknownArchitectureError(where, f"cannot import model factory {path!r}: "
                                              f"{type(err).__name__}: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UnknownArchitectureError(where, f"model factory {path!r} is not an nn.Module subclass; "
                                              "only model classes are called when loading")
    return obj
