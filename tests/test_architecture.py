"""The project's shape, read from its source: imports flow one way (../shared/DESIGN.md and the
rules inside ``model/``), no module imports itself back through others, and no ``model/``
module outgrows one concept (~500 lines). Imports inside functions count too: a lazy import
is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("grid_store", "model", "nerf_training", "nerfmae", "nerfmae_common", "pipeline",
            "flows")  # fmt: skip
ENTRY_MODULES = {"model.pretrain", "model.finetune"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            names = [n for n in names if n in modules] or [node.module]
            names = names[:1] if names[0] == node.module else names
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


GRAPH = {name: _imports(path, _modules()) - {name} for name, path in _modules().items()}


def _reach(start: str, rule) -> list[str]:
    return sorted(m for m in GRAPH[start] if rule(m))


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles[:3]


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_flow_one_way(name):
    package = name.split(".")[0]
    forbidden = {
        "nerfmae_common": ("grid_store", "model", "nerf_training", "nerfmae", "pipeline",
                           "flows"),  # fmt: skip
        "nerf_training": ("grid_store", "model", "nerfmae", "pipeline", "flows"),
        "grid_store": ("model", "nerf_training", "nerfmae", "pipeline", "flows"),
        "model": ("nerf_training", "nerfmae", "pipeline", "flows"),
        "pipeline": ("model", "nerfmae", "flows"),
        "flows": ("nerfmae",),
    }.get(package, ())
    assert not _reach(name, lambda m: m.split(".")[0] in forbidden)
    if name.startswith("model.networks"):  # pure modules: torch and each other only
        assert not _reach(name, lambda m: not m.startswith("model.networks"))
    if name.startswith("model.training"):  # the engine never knows a task
        assert not _reach(name, lambda m: m.startswith("model.tasks"))
    if name.startswith("model.") and name not in ENTRY_MODULES:
        assert not _reach(name, lambda m: m in ENTRY_MODULES)
    if name.startswith("model.detection"):  # box machinery: no tasks, metrics or pictures
        above = ("model.tasks", "model.training", "model.pictures", "model.metrics")
        assert not _reach(name, lambda m: m.startswith(above))


def test_model_modules_hold_one_concept_each():
    lines = {name: len(path.read_text().splitlines()) for name, path in _modules().items()
             if name.startswith("model")}  # fmt: skip
    assert not {name: n for name, n in lines.items() if n > 500}


def test_the_graph_sees_imports_inside_functions():
    # model.tasks imports the trainer only inside train(): the graph must still see it
    assert "model.training.trainer" in GRAPH["model.tasks"]
    assert "model.tasks.base" in GRAPH["model.tasks.semantics"]
