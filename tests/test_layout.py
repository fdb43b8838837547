"""The shape of the code: data flows one way (models imports nothing of ours, prep never
imports train), no module of train/ imports train/main.py (the run) or takes part in an import
cycle, and no function in train/ is longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "prep", "train")
MAX_FUNCTION_LINES = 65  # about 60: one screen, docstring included


def modules(package: str) -> dict[str, ast.Module]:
    return {
        f"{package}.{path.stem}": ast.parse(path.read_text())
        for path in sorted((ROOT / package).glob("*.py"))
    }


def runtime_nodes(tree: ast.AST):
    """Every node, less the `if TYPE_CHECKING:` blocks (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def our_imports(tree: ast.Module) -> set[str]:
    """The modules of this project that a module imports when it runs, anywhere in it."""
    found = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from train import checkpoint` imports the module train.checkpoint
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    everything = {name: tree for p in PACKAGES for name, tree in modules(p).items()}
    return {name: our_imports(tree) & set(everything) for name, tree in everything.items()}


def test_data_flows_one_way():
    for name, imported in graph().items():
        if name.startswith("models."):
            assert all(i.startswith("models") for i in imported), (name, imported)
        if name.startswith("prep."):
            assert not any(i.startswith("train") for i in imported), (name, imported)


def test_only_train_main_imports_the_run():
    importers = [name for name, imported in graph().items() if "train.main" in imported]
    assert importers == ["train.__main__"]


def test_there_are_no_import_cycles():
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(name) :] + [name])}")
        if name in done:
            return
        for other in edges[name]:
            visit(other, [*path, name])
        done.add(name)

    for name in edges:
        visit(name, [])


def test_no_function_in_train_is_longer_than_a_screen():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in modules("train").items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"split these where their steps are: {long}"
