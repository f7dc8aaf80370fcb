"""The rooms of `consumer/`: the data path imports neither the tools nor the sandbox; no cycles.

Every import counts, including those under TYPE_CHECKING and inside functions: a room that needs
another only for a type still cannot be read, tested or shipped without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"

# room -> the rooms it may import (besides itself and the top-level `consumer` package)
ALLOWED = {
    "core": set(),
    "sandbox": {"core"},
    "ops": {"core", "sandbox", "producer"},
    "producer": {"core"},
    "__main__": {"ops"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "consumer":
                found |= {f"consumer.{alias.name}" for alias in node.names}
            elif node.module.startswith("consumer."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("consumer.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from consumer.core import worker` names the module consumer.core.worker
        targets = {t if t in modules else t.rpartition(".")[0] for t in _imports(path)}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_rooms_are_where_the_layout_says() -> None:
    rooms = {_room(m) for m in _graph()} - {""}
    assert rooms == set(ALLOWED)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_a_room_imports_only_what_it_may(room: str) -> None:
    crossings = sorted(
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if _room(module) == room
        for target in targets
        if _room(target) not in ALLOWED[room] | {room, ""}
    )
    assert crossings == []


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
