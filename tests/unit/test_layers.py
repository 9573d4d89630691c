"""The house rules of imports: cli -> core -> kernels (the API, qdgap.api and qdgap.ase, beside cli), rooms inside core in one order, no cycles.

An AST walk over every module, function-local imports included (a cycle hidden
inside a function is still a cycle). ``core`` is built of rooms (subpackages,
plus the plain module ``config``); a module may import from its own room or
from rooms in rows below its own. ``qdgap.testing`` (synthetic data, fault
points) sits beside core: its fault points import nothing from qdgap, so any
room may call them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qdgap"

# Rows of rooms, bottom to top (README, Development).
ROWS: tuple[tuple[str, ...], ...] = (
    ("common",),
    ("data", "config"),
    ("graphs", "model"),
    ("store",),
    ("deploy",),
    ("train",),
    ("analysis", "sim", "interop"),
    ("workflow",),
    ("report",),
    ("pipeline",),
)
ROW_OF = {room: row for row, rooms in enumerate(ROWS) for room in rooms}
# A plain module in core besides the rooms' packages; more than a handful means a room is missing.
PLAIN_CORE_MODULES = {"qdgap.core.config"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every qdgap import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qdgap":
            names = [a.name for a in node.names]
            # `from qdgap.core.store import runs`: the names are modules
            modules = [n for n in names if _is_module(f"{node.module}.{n}")]
            out += [(f"{node.module}.{n}", [], node.lineno) for n in modules]
            if len(modules) < len(names):
                out.append((node.module, [n for n in names if n not in modules], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "qdgap"]
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = {m: _imports(p) for m, p in MODULES.items()}


def _room(module: str) -> str | None:
    """The room of a core module (``qdgap.core.data.splits`` -> ``data``; ``qdgap.core.config`` -> ``config``)."""
    parts = module.split(".")
    return parts[2] if module.startswith("qdgap.core.") else None


PLACE = {m: (ROW_OF.get(_room(m), -1), _room(m)) for m in MODULES if _room(m)}


def test_layers_every_core_module_has_a_room():
    unplaced = sorted(m for m, (row, _) in PLACE.items() if row < 0)
    assert not unplaced, f"core modules outside every room of ROWS: {unplaced}"
    plain = {
        m for m, p in MODULES.items() if m.startswith("qdgap.core.") and m.count(".") == 2 and p.name != "__init__.py"
    }
    assert plain <= PLAIN_CORE_MODULES, (
        f"plain modules in qdgap/core (give them a room): {sorted(plain - PLAIN_CORE_MODULES)}"
    )


def test_layers_testing_faults_import_nothing_and_core_only_faults():
    assert not EDGES["qdgap.testing.faults"], "fault points must import nothing from qdgap (every room calls them)"
    bad = [
        f"{m}:{line} -> {target}"
        for m, edges in EDGES.items()
        if m.startswith(("qdgap.core", "qdgap.kernels"))
        for target, _, line in edges
        if target.startswith("qdgap.testing") and target != "qdgap.testing.faults"
    ]
    assert not bad, "production code imports test scaffolding:\n" + "\n".join(bad)


def test_layers_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines (split them by concern): {long}"


def test_layers_one_way_between_packages():
    bad = []
    for m, edges in EDGES.items():
        for target, _, line in edges:
            if m.startswith("qdgap.kernels") and target.startswith(("qdgap.core", "qdgap.cli")):
                bad.append(f"{m}:{line} -> {target} (kernels import neither core nor cli)")
            if m.startswith("qdgap.core") and target.startswith("qdgap.cli"):
                bad.append(f"{m}:{line} -> {target} (core never imports cli)")
    assert not bad, "\n".join(bad)


def test_layers_api_sits_above_core_beside_cli():
    """The Python API (``qdgap.api``, ``qdgap.ase``) calls core as the CLI does: neither core, kernels nor
    the CLI import it, and it imports no CLI module."""
    api = ("qdgap.api", "qdgap.ase")
    bad = []
    for m, edges in EDGES.items():
        for target, _, line in edges:
            if m.startswith(("qdgap.core", "qdgap.kernels", "qdgap.cli")) and target.startswith(api):
                bad.append(f"{m}:{line} -> {target} (only users import the API)")
            if m in api and target.startswith("qdgap.cli"):
                bad.append(f"{m}:{line} -> {target} (the API never imports the CLI)")
    assert not bad, "\n".join(bad)


def test_layers_core_rooms_in_order():
    bad = []
    for m, edges in EDGES.items():
        if m not in PLACE:
            continue
        row, room = PLACE[m]
        for target, _, line in edges:
            if target in PLACE and target != m:
                t_row, t_room = PLACE[target]
                if t_room != room and t_row >= row:
                    bad.append(f"{m}:{line} ({room}, row {row}) -> {target} ({t_room}, row {t_row})")
    assert not bad, "imports against the room order:\n" + "\n".join(bad)


def test_layers_no_import_cycles():
    graph = {m: {t for t, _, _ in edges if t in MODULES and t != m} for m, edges in EDGES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(t) :], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_cli_modules_share_no_private_names():
    bad = [
        f"{m}:{line} imports {name} from {target}"
        for m, edges in EDGES.items()
        if m.startswith("qdgap.cli")
        for target, names, line in edges
        if target.startswith("qdgap.cli") and target != m
        for name in names
        if name.startswith("_")
    ]
    assert not bad, "\n".join(bad)
