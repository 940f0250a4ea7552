"""The project's own imports point one way. Every import statement of every module is read, top-level and
inside functions alike, and the graph of project modules they draw must have no cycle; the libraries
(model/, lora/, generation/, data/, sandbox/, evaluation/) never import the entry points, training/ or
the profiler, and training/ never imports the profiler (the profiler measures training, not the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bench", "data", "evaluation", "generation", "lora", "model", "profiler", "sandbox", "training")
ENTRY_POINTS = ("train", "evaluate", "generate")
LIBRARIES = ("model", "lora", "generation", "data", "sandbox", "evaluation")


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the top-level .py files and the packages above (tests excluded)."""
    found = {p.stem: p for p in root.glob("*.py")}
    for package in SOURCES:
        for p in sorted((root / package).rglob("*.py")):
            parts = p.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return found


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body. `from pkg import x` counts as pkg.x where
    x is a module of ours, else as pkg; relative imports resolve against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import a.b.c of ours: the longest known prefix
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search that meets a module still on its path."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_project_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert {"train", "cli", "model.gpt2", "lora.lora", "training"} <= graph.keys()  # it read the tree
    assert "model.loss" in graph["model.gpt2"]  # and the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_libraries_never_import_entry_points_training_or_the_profiler():
    graph = import_graph(ROOT)
    upstream = (*ENTRY_POINTS, "training", "profiler", "bench")
    bad = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        if m.split(".")[0] in LIBRARIES
        for t in targets
        if t.split(".")[0] in upstream
    ]
    bad += [f"{m} imports {t}" for m, ts in graph.items() if m.startswith("training") for t in ts
            if t.split(".")[0] in ("profiler", "bench", *ENTRY_POINTS)]  # fmt: skip
    assert not bad, "; ".join(bad)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    """The check itself: two modules of a small tree import each other, one of them inside a function."""
    for package in SOURCES:
        (tmp_path / package).mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "gpt2.py").write_text("from model import loss\n")
    (tmp_path / "model" / "loss.py").write_text("def f():\n    from model.gpt2 import GPT\n")
    (tmp_path / "train.py").write_text("import model.gpt2\n")
    graph = import_graph(tmp_path)
    assert graph["model.gpt2"] == {"model.loss"} and graph["model.loss"] == {"model.gpt2"}
    assert find_cycle(graph) == ["model.gpt2", "model.loss", "model.gpt2"]
    (tmp_path / "model" / "loss.py").write_text("import torch\n")
    assert find_cycle(import_graph(tmp_path)) is None


@pytest.mark.parametrize("line", ["from . import gpt2", "from .gpt2 import GPT", "from ..model import gpt2"])
def test_relative_imports_resolve_inside_their_package(tmp_path, line):
    for package in SOURCES:
        (tmp_path / package).mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "gpt2.py").write_text("")
    (tmp_path / "model" / "loss.py").write_text(line + "\n")
    assert import_graph(tmp_path)["model.loss"] == {"model.gpt2"}
