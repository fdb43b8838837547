"""The shape of the code: data flows one way (models imports nothing of ours, prep never
imports train), train/ is grouped by tool one level deep (the trainer's building blocks flat,
the comparison tool and the benchmarks in packages of their own, the training state in its
own module), no module imports an entry point (a file that is run) or takes part in an import
cycle, only train/shards.py names the manifest, the shards are found through --data_dir in
one place, train/main.py stays within 250 lines, and no function in train/ is longer than a
screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "prep", "train")
MAX_FUNCTION_LINES = 65  # about 60: one screen, docstring included
MAX_MAIN_LINES = 250  # train/main.py, the run, top to bottom


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def modules(package: str) -> dict[str, ast.Module]:
    """Every module of a package, its subpackages' included: dotted name -> syntax tree."""
    return {
        module_name(path): ast.parse(path.read_text())
        for path in sorted((ROOT / package).rglob("*.py"))
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


def entry_points() -> set[str]:
    """The modules that are run: __main__.py, any with `if __name__ == "__main__"`, and
    train/main.py (the run, which train/__main__.py starts)."""
    found = {"train.main"}
    for package in PACKAGES:
        for name, tree in modules(package).items():
            guarded = any(
                isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
                for node in tree.body
            )
            if name.endswith(".__main__") or guarded:
                found.add(name)
    return found


def test_the_entry_points_are_found():
    assert entry_points() == {
        "train.__main__", "train.main", "train.evaluate", "train.report", "train.demo",
        "train.export", "train.predict",
        "train.compare.__main__", "train.bench.__main__", "models.__main__", "prep.__main__",
        "prep.bench",
    }  # fmt: skip


def test_train_is_grouped_by_tool_one_level_deep():
    """The trainer's building blocks and its entry points flat in train/; the comparison tool
    and the benchmarks in packages of their own; nothing deeper."""
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "train").rglob("*.py")}
    assert packages == {"train", "train/compare", "train/bench"}
    compare = {p.stem for p in (ROOT / "train" / "compare").glob("*.py")}
    tool = {"__main__", "arms", "launch", "stats", "verdicts", "tables", "plot", "report"}
    assert tool <= compare
    bench = {p.stem for p in (ROOT / "train" / "bench").glob("*.py")}
    assert {"__main__", "input", "train", "checkpoint", "common"} <= bench
    flat = {p.stem for p in (ROOT / "train").glob("*.py")}
    assert not flat & {"compare", "comparison", "comparison_report", "stats", "verdicts", "bench"}


def test_the_training_state_does_not_depend_on_the_epoch_loop():
    """Run lives in train/state.py: saving, stopping and building the model need no loop."""
    edges = graph()
    assert "train.state" in edges and "class Run" in (ROOT / "train/state.py").read_text()
    for name in ("train.state", "train.checkpoint", "train.signals", "train.model"):
        assert "train.loop" not in edges[name], name


def test_no_module_imports_an_entry_point():
    """What another module needs of an entry point lives in a building block instead. The one
    exception: train/__main__.py starts the run in train/main.py."""
    runs = entry_points()
    imports = [
        f"{name} imports {run}"
        for name, imported in graph().items()
        for run in imported & runs
        if (name, run) != ("train.__main__", "train.main")
    ]
    assert not imports, imports


def test_only_train_shards_names_the_manifest():
    naming = [
        name
        for name, tree in modules("train").items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and "manifest.json" in node.value
    ]  # fmt: skip
    assert naming == ["train.shards"]


def data_dir_reads(package: str, variable: str) -> list[tuple[str, str]]:
    """(module, function) of every read of `variable`.data_dir in the package."""
    return [
        (name, function.name)
        for name, tree in modules(package).items()
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute) and node.attr == "data_dir"
        and isinstance(node.value, ast.Name) and node.value.id == variable
    ]  # fmt: skip


def test_the_shards_are_found_through_data_dir_once():
    """--data_dir is read in one function, which opens the shards; everything after start-up
    reads the Shards it returns (after --cache: the RAM copy). The benchmarks likewise."""
    reads = data_dir_reads("train", "cfg")
    assert reads == [("train.main", "checked_shards")] * len(reads) and reads
    reads = [r for r in data_dir_reads("train", "args") if r[0].startswith("train.bench")]
    assert reads == [("train.bench.common", "bench_shards")]


def test_train_main_reads_top_to_bottom_in_at_most_250_lines():
    lines = len((ROOT / "train" / "main.py").read_text().splitlines())
    assert lines <= MAX_MAIN_LINES, f"train/main.py has {lines} lines"


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
