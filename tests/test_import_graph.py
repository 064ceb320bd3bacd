"""The shape of the code: imports run one way without cycles, and modules and functions stay small.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function
counts like one at the top of a file.

Levels, from the bottom (docs: layers <- convert <- hub <- front ends). A module may import
modules of its own level and of the levels its level lists; a module no level names (the
root package, the command line and its helpers, benchmarks, plots) is a front end and may
import anything, but nothing below may import it.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "arma_plugin"

FRONT_END = "front end"
# level -> (module name prefixes, levels it may import besides itself)
LEVELS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "foundation": (("arma_plugin.validation", "arma_plugin.table", "arma_plugin.version"), ()),
    # nn building blocks and their solvers; no knowledge of timm/SMP
    "layers": (("arma_plugin.layers",), ("foundation",)),
    # the slow, obviously-correct solvers the fast ones are tested against
    "reference": (("arma_plugin.reference",), ("foundation", "layers")),
    # models built from scratch (ConvLSTM / ARMA-LSTM of the paper's Table 3)
    "models": (("arma_plugin.models",), ("foundation", "layers")),
    # effective receptive field of layers and models (paper Def. 2, Thm 3)
    "erf": (("arma_plugin.erf",), ("foundation", "layers")),
    # evaluation only: needs nothing of the ARMA code
    "metrics": (("arma_plugin.metrics",), ("foundation",)),
    # export may solve with the reference's plain tensor ops where a runtime has no custom op
    "convert": (("arma_plugin.convert",), ("foundation", "layers", "reference")),
    "hub": (("arma_plugin.hub",), ("foundation", "layers", "reference", "convert")),
}
# third-party packages a level must not import (layers are plain torch building blocks)
FORBIDDEN_THIRD_PARTY = {"layers": ("timm", "segmentation_models_pytorch")}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# compiled kernels are exempt from the function length: splitting one costs a launch or a
# register round trip, and neither Triton nor numba can call a Python closure
KERNEL_DECORATORS = ("jit", "njit")
SIZE_CHECKED_FOLDERS = ("arma_plugin", "recipes", "scripts", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((REPO / PACKAGE).rglob("*.py"))}


def imported_names(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` for every import statement in the file, relative ones made absolute
    (``import a.b`` gives ``("a.b", ())``, ``from a import b, c`` gives ``("a", ("b", "c"))``)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((target, tuple(alias.name for alias in node.names)))
    return found


def internal_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules the file imports: ``from p import m`` names the module ``p.m``
    when there is one, else ``p`` itself."""
    out = set()
    for target, names in imported_names(path):
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            continue
        submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
        out |= submodules if submodules and len(submodules) == len(names) else submodules | {target}
    return out & set(modules)


def level_of(module: str) -> str:
    for level, (prefixes, _) in LEVELS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return FRONT_END


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: internal_imports(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_parser_sees_relative_lazy_and_package_imports(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .sub import thing\n__version__ = '1'\n")
    (package / "low.py").write_text("import os\n")
    (package / "sub" / "__init__.py").write_text("from .inner import thing\n")
    (package / "sub" / "inner.py").write_text(
        "from .. import low\nfrom ..low import os\n\ndef f():\n    from .. import __version__\n    import arma_plugin.low\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert import_graph() == {
        "arma_plugin": {"arma_plugin.sub"}, "arma_plugin.low": set(), "arma_plugin.sub": {"arma_plugin.sub.inner"},
        "arma_plugin.sub.inner": {"arma_plugin.low", "arma_plugin"}}
    assert cycles(import_graph()) == [["arma_plugin", "arma_plugin.sub", "arma_plugin.sub.inner"]]


def test_cycle_finder_on_known_graphs() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}) == [["c", "d"], ["a", "b"]]


def test_every_level_names_existing_modules() -> None:
    """Every prefix in :data:`LEVELS` names a real module, so a rename cannot silently move a
    whole level to the front ends."""
    modules = package_modules()
    prefixes = [p for prefixes, _ in LEVELS.values() for p in prefixes]
    assert [p for p in prefixes if p not in modules] == []


def test_no_import_cycles_between_modules() -> None:
    found = cycles(import_graph())
    assert not found, "modules that import each other in a cycle: " + "; ".join(", ".join(c) for c in found)


def test_imports_run_one_way() -> None:
    upward = []
    for module, imports in import_graph().items():
        level = level_of(module)
        if level == FRONT_END:
            continue
        allowed = {level, *LEVELS[level][1]}
        upward += [f"{module} ({level}) imports {dep} ({level_of(dep)}); {level} may import only {sorted(allowed)}"
                   for dep in sorted(imports) if level_of(dep) not in allowed]
    assert not upward, "\n".join(upward)


def test_layers_know_nothing_of_timm_or_smp() -> None:
    found = []
    for module, path in package_modules().items():
        forbidden = FORBIDDEN_THIRD_PARTY.get(level_of(module), ())
        found += [f"{module} imports {target}" for target, _ in imported_names(path)
                  if target.split(".")[0] in forbidden]
    assert not found, "\n".join(found)


def is_kernel(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in function.decorator_list:
        called = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(called).rsplit(".", 1)[-1] in KERNEL_DECORATORS:
            return True
    return False


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", SIZE_CHECKED_FOLDERS)
def test_no_module_over_the_line_limit(folder: str) -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in python_files(folder)}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("folder", SIZE_CHECKED_FOLDERS)
def test_no_function_over_the_line_limit_except_kernels(folder: str) -> None:
    long = {}
    for path in python_files(folder):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_kernel(node):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert long == {}


def test_kernel_exemption_covers_only_compiled_kernels() -> None:
    source = ("@triton.jit\ndef a(): pass\n@numba.njit(parallel=True)\ndef b(): pass\n"
              "@jit\ndef c(): pass\n@functools.cache\ndef d(): pass\ndef e(): pass\n")
    functions = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in functions if is_kernel(f)] == ["a", "b", "c"]
