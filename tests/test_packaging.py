"""How the project is installed and entered: DALI is an extra (one per CUDA major version),
the constraints file pins what the tests ran with and `make install` uses both, every command
that needs DALI says in one line how to install it when it is missing, and `make` alone lists
the targets without installing or writing anything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED = (
    "torch", "torchvision", "nvidia-dali-cuda120", "nvidia-dali-cuda130", "numpy", "pillow",
    "scipy", "tensorboard", "webdataset", "safetensors", "onnx", "onnxscript", "onnxruntime",
)  # fmt: skip


def test_dali_is_an_extra_and_the_constraints_pin_every_package_the_tests_use():
    project = (ROOT / "pyproject.toml").read_text()
    dependencies = project.split("dependencies = [")[1].split("]")[0]
    assert re.search(r'^cuda12 = \["nvidia-dali-cuda120', project, flags=re.MULTILINE)
    assert re.search(r'^cuda13 = \["nvidia-dali-cuda130', project, flags=re.MULTILINE)
    assert "dali" not in dependencies and '"torch>=2.5"' in dependencies  # safe_globals
    pins = dict(
        line.split("==")
        for line in (ROOT / "tests" / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert set(PINNED) <= set(pins), set(PINNED) - set(pins)
    assert pins["nvidia-dali-cuda120"] == pins["nvidia-dali-cuda130"]
    install = (ROOT / "Makefile").read_text().split(".venv/.installed:")[1].split("\n\n")[0]
    assert install.count("-c tests/constraints.txt") == 2 and '".[dev,export,$$extra]"' in install
    assert re.search(r'^export = \["onnx', project, flags=re.MULTILINE)  # the optional extra
    assert '"safetensors' in dependencies


def commands_without_dali(shards: Path, out: Path) -> dict:
    from train.bench.__main__ import main as bench
    from train.compare.__main__ import main as compare
    from train.demo import main as demo
    from train.evaluate import main as evaluate
    from train.main import main as train
    from train.predict import main as predict

    data = ["--data_dir", str(shards)]
    return {
        "python -m train": lambda: train([*data, "--out", str(out / "t"), "--batch", "8"]),
        "train.evaluate": lambda: evaluate([*data, "--weights", str(out / "w.pt")]),
        "train.compare": lambda: compare([*data, "--out", str(out / "c")]),
        "train.bench input": lambda: bench(["input", *data]),
        "train.bench train": lambda: bench(["train", *data]),
        "train.demo": lambda: demo(["--out", str(out / "d")]),
        "train.predict": lambda: predict([str(shards), "--weights", str(out / "w.pt")]),
    }


def test_every_command_that_needs_dali_says_how_to_install_it(
    tiny_shards, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now fails
    for command, run in commands_without_dali(tiny_shards, tmp_path).items():
        assert run() == 2, command
        said = capsys.readouterr()
        line = (said.err + said.out).strip()
        assert "NVIDIA DALI is not installed" in line and "[cuda13]" in line, (command, line)
        assert line.count("\n") == 0, (command, line)
    from train.main import main as train  # the plan reads no data: no DALI needed

    assert train(["--data_dir", str(tiny_shards), "--batch", "8", "--dry_run"]) == 0


def git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("argv", [["make"], ["make", "help"]])
def test_make_alone_lists_the_targets_and_changes_nothing(argv):
    before = git_status()
    shown = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    targets = re.findall(r"^  make (\S+) +\S", shown.stdout, flags=re.MULTILINE)
    phony = (ROOT / "Makefile").read_text().split(".PHONY:")[1].split("\n\n")[0]
    declared = set(phony.replace("\\", " ").split()) - {"venv"}
    assert set(targets) == declared, set(targets) ^ declared
    assert git_status() == before


def anchors(markdown: str) -> set[str]:
    """The #anchors of a page's headings, as GitHub makes them."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_is_short_and_every_link_in_it_and_in_docs_resolves():
    assert len((ROOT / "README.md").read_bytes()) <= 15_000
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    linked = set()
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.is_file(), f"{page.name} links {target}: no such file"
            if anchor:
                assert anchor in anchors(file.read_text()), f"{page.name} links {target}"
            linked.add(file)
    docs = set((ROOT / "docs").glob("*.md"))
    assert docs <= linked, f"pages no page links: {docs - linked}"
