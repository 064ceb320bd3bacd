"""The lowest versions pyproject.toml declares are versions the package can run on.

CI installs only the newest releases, and installing every floor release there is not cheap
(a second torch alone is hundreds of MB). Instead :data:`API_SINCE` lists every API the package
takes from a dependency's younger namespaces, with the oldest release known to have it (timm
and huggingface_hub: read in that release's wheel; torch: the first release that shipped the
change adding it), and the tests check both directions:
the declared floor is at least every listed release, and every use of a watched namespace in
``arma_plugin`` is listed. A new use of, say, a ``torch.library`` function fails here until it is
listed, which is the moment to look up its release and raise the floor if needed.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

REPO = Path(__file__).resolve().parents[1]

# distribution -> {API: oldest release known to have it}
API_SINCE: dict[str, dict[str, str]] = {
    "torch": {
        "torch.library.custom_op": "2.4",  # with CustomOpDef.register_fake / register_autograd
        "torch.amp.is_autocast_available": "2.4",
        "torch.compiler.is_compiling": "2.3",
        "torch.compiler.assume_constant_result": "2.1",
    },
    "timm": {
        "timm.layers.CondConv2d": "1.0.3",
        "timm.layers.get_notrace_functions": "1.0.17",
        "timm.layers.get_notrace_modules": "1.0.17",
        "timm.layers.register_notrace_module": "1.0.17",
        "timm.models.filter_pretrained_cfg": "1.0.3",
        "timm.models.get_model_args": "1.0.31",
    },
    "huggingface-hub": {
        "huggingface_hub.HfApi": "0.23",
        "huggingface_hub.hf_hub_download": "0.23",
        "huggingface_hub.ModelCard": "0.23",
        "huggingface_hub.ModelCardData": "0.23",
        "huggingface_hub.constants.HF_HUB_CACHE": "0.23",
        "huggingface_hub.utils.validate_repo_id": "0.23",
        "huggingface_hub.utils.logging": "0.23",
        "huggingface_hub.errors.HFValidationError": "0.23",
        "huggingface_hub.errors.EntryNotFoundError": "0.25",
        "huggingface_hub.errors.HfHubHTTPError": "0.25",
    },
}
# namespaces whose every use must be in API_SINCE (the longest match names the API)
WATCHED = ("torch.library", "torch.amp", "torch.compiler", "timm.layers", "timm.models", "huggingface_hub",
           "huggingface_hub.constants", "huggingface_hub.errors", "huggingface_hub.utils")


def declared_floors() -> dict[str, Version]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        lower = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        if lower:
            floors[requirement.name] = max(lower)
    return floors


def watched_api(dotted: str) -> str | None:
    """``torch.library.custom_op.register_fake`` -> ``torch.library.custom_op``; ``None`` when
    ``dotted`` is in no watched namespace or is a watched namespace itself."""
    spaces = [ns for ns in WATCHED if dotted.startswith(ns + ".")]
    if not spaces or dotted in WATCHED:
        return None
    namespace = max(spaces, key=len)
    return namespace + "." + dotted[len(namespace) + 1:].split(".")[0]


def dotted_name(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def apis_used(source: str) -> set[str]:
    """Watched APIs the source takes, from imports and from attribute chains on imported names."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    dotted = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                dotted.append(f"{node.module}.{alias.name}")
    outer = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in outer:
            name = dotted_name(node)
            if name:
                head, _, rest = name.partition(".")
                dotted.append(aliases.get(head, head) + "." + rest)
    return {api for api in map(watched_api, dotted) if api is not None}


def package_apis() -> dict[str, set[str]]:
    """API -> the package files that use it."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "arma_plugin").rglob("*.py")):
        for api in apis_used(path.read_text()):
            found.setdefault(api, set()).add(str(path.relative_to(REPO)))
    return found


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def test_the_scanner_finds_imports_aliases_and_attribute_chains() -> None:
    source = ("import torch\nimport timm.models\nfrom huggingface_hub import constants as c, HfApi\n"
              "from huggingface_hub.errors import HfHubHTTPError\nfrom huggingface_hub.utils import logging as lg\n"
              "op = torch.library.custom_op('x::y', mutates_args=())\nop.register_fake\n"
              "timm.models.get_model_args(m)\nc.HF_HUB_CACHE\nlg.get_verbosity()\ntorch.nn.Conv2d\n")
    assert apis_used(source) == {"torch.library.custom_op", "timm.models.get_model_args", "huggingface_hub.HfApi",
                                 "huggingface_hub.constants.HF_HUB_CACHE", "huggingface_hub.errors.HfHubHTTPError",
                                 "huggingface_hub.utils.logging"}


@pytest.mark.parametrize("distribution", sorted(API_SINCE))
def test_declared_floor_has_every_api_the_package_uses(distribution: str) -> None:
    floor = declared_floors()[distribution]
    too_new = {api: since for api, since in API_SINCE[distribution].items() if Version(since) > floor}
    assert too_new == {}, f"pyproject.toml declares {distribution}>={floor}"


def test_every_watched_api_the_package_uses_is_listed() -> None:
    listed = {api for apis in API_SINCE.values() for api in apis}
    assert {api: files for api, files in package_apis().items() if api not in listed} == {}


def test_every_listed_api_is_used_and_exists() -> None:
    used = package_apis()
    listed = [api for apis in API_SINCE.values() for api in apis]
    assert [api for api in listed if api not in used] == []  # a stale entry could hold a floor up
    for api in listed:
        resolve(api)

