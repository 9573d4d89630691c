"""The house rules of imports: cli -> core -> kernels, rooms inside core in one order, no cycles.

An AST walk over every module, function-local imports included (a cycle hidden
inside a function is still a cycle). ``core`` is flat today; each module is
assigned to the room (and row) of DESIGN.md's layout it belongs to, and a
module may import only from its own room or from rows below its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qdgap"

# Rows, bottom to top; a module imports from its own room or from rows below.
ROWS: tuple[dict[str, tuple[str, ...]], ...] = (
    {"common": ("errors", "faults", "files", "schema", "metrics", "logs", "runtime", "labels", "buildinfo")},
    {"data": ("data", "importers", "splits", "synthetic"), "config": ("config",)},
    {"graphs": ("graphs",), "model": ("model",)},
    {"store": ("runs", "results", "layout")},
    {"deploy": ("checkpoint", "export", "ensemble_forward")},
    {"train": ("train",)},
    {
        "analysis": ("predict", "fna", "importance", "calibration", "select", "comparison", "parts"),
        "sim": ("qd", "md"),
        "interop": ("upstream",),
    },
    {"workflow": ("ensemble", "slurm", "finetune", "transfer", "label", "part_array")},
    {
        "report": (
            "report",
            "report_page",
            "report_ensemble",
            "report_fna",
            "report_transfer",
            "figures",
            "figures_base",
            "figures_training",
            "figures_gap",
            "figures_importance",
            "figures_uncertainty",
        )
    },
)
PLACE = {f"qdgap.core.{m}": (row, room) for row, rooms in enumerate(ROWS) for room, mods in rooms.items() for m in mods}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every qdgap import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qdgap":
            names = [a.name for a in node.names]
            if node.module.count(".") == 1:  # `from qdgap.core import runs`: the names are modules
                out += [(f"{node.module}.{n}", [], node.lineno) for n in names]
            else:
                out.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "qdgap"]
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = {m: _imports(p) for m, p in MODULES.items()}


def test_layers_every_core_module_has_a_room():
    core = {m for m in MODULES if m.startswith("qdgap.core.")}
    assert core == set(PLACE), f"unplaced: {sorted(core - set(PLACE))}; gone: {sorted(set(PLACE) - core)}"


def test_layers_one_way_between_packages():
    bad = []
    for m, edges in EDGES.items():
        for target, _, line in edges:
            if m.startswith("qdgap.kernels") and target.startswith(("qdgap.core", "qdgap.cli")):
                bad.append(f"{m}:{line} -> {target} (kernels import neither core nor cli)")
            if m.startswith("qdgap.core") and target.startswith("qdgap.cli"):
                bad.append(f"{m}:{line} -> {target} (core never imports cli)")
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
