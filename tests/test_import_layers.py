"""The import graph runs one way: every module sits in a layer, imports only from
its own layer or below, and no modules import each other in a circle.

Imports under `if TYPE_CHECKING:` are for annotations only and never run, so they
are left out (layouts.py names the Playbook type that playbook.py validates with it).
Imports inside functions count: they run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "sparkctl"

# Lowest first. A prefix names a module or a package (every module under it).
LAYERS: tuple[tuple[str, ...], ...] = (
    # what every layer may use; the node-side agent modules are standard library only
    ("sparkctl", "sparkctl.__init__", "sparkctl.errors", "sparkctl.files", "sparkctl.logtext", "sparkctl.jsontext",
     "sparkctl.argtypes", "sparkctl.plotting", "sparkctl.progress", "sparkctl.netplan", "sparkctl.completion",
     "sparkctl.strictyaml", "sparkctl.validation", "sparkctl.findings", "sparkctl.agent.protocol",
     "sparkctl.agent.node_", "sparkctl.agent.ray_view", "sparkctl.agent.torch_check", "sparkctl.agent.vllm_probe",
     "sparkctl.agent.__init__"),
    # the inputs, and the transport to the nodes
    ("sparkctl.inventory", "sparkctl.layouts", "sparkctl.playbook", "sparkctl.render", "sparkctl.remote",
     "sparkctl.state", "sparkctl.artefact"),
    # the typed client of the node agent
    ("sparkctl.agent.client",),
    ("sparkctl.lifecycle", "sparkctl.bench", "sparkctl.jobs"),
    ("sparkctl.serve", "sparkctl.checks", "sparkctl.perf"),
    ("sparkctl.backends", "sparkctl.observe", "sparkctl.sweep"),
    ("sparkctl.probes", "sparkctl.report"),
    # the command verbs
    ("sparkctl.ops",),
    ("sparkctl.init",),
    ("sparkctl.cli", "sparkctl.__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of the longest matching prefix (`sparkctl.agent.node_` matches node_agent, node_facts...)."""
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".") or (prefix.endswith("_") and module.startswith(prefix))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return best[1] if best else None


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(path: Path) -> set[str]:
    """The sparkctl modules `path` imports when it runs (`from a import b` counts a.b when b is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "sparkctl":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _is_module(sub) else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "sparkctl")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): runtime_imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if layer_of(m) is None] == [], "add new modules to LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if (layer_of(target) or 0) > (layer_of(module) or 0)]
    assert upward == []


def test_no_circular_imports():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_circles(graph, expected):
    assert cycles(graph) == expected


def test_the_layer_check_sees_an_upward_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sparkctl.ops.up import up\n"
                      "def f():\n    from sparkctl.cli import main\n")
    assert runtime_imports(source) == {"sparkctl.cli"}  # the function-level import runs, the typing one never does
    assert layer_of("sparkctl.cli") > layer_of("sparkctl.agent.node_agent")  # type: ignore[operator]
