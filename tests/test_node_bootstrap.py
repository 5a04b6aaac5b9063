"""The bootstrap that receives the node-side modules (agent/node_bootstrap.py):
a real module, run as `python3 -c` with its docstrings left out, caching the
compiled modules on the node and surviving a torn cache file."""

from __future__ import annotations

import ast
import dataclasses
import sys

from sparkctl.agent import protocol
from sparkctl.agent.client import bootstrap_program, call
from sparkctl.remote.local import LocalRunner
from tests.test_agent import make_node


def test_the_program_is_the_module_without_docstrings_and_parses_as_python_3_8():
    program = bootstrap_program()
    tree = ast.parse(program, feature_version=(3, 8))  # nodes may run an older Python than the controller
    assert ast.get_docstring(tree) is None
    assert all(ast.get_docstring(f) is None for f in ast.walk(tree) if isinstance(f, ast.FunctionDef))
    assert "def install(" in program and "#" not in program


def test_modules_are_compiled_once_into_the_cache_and_a_torn_file_is_compiled_again(tmp_path):
    node = dataclasses.replace(make_node(), python=sys.executable, workdir=str(tmp_path / "work"))
    runner = LocalRunner(node.name)
    request = protocol.ProbeRequest(commands=(), paths=())
    first = call(runner, node, request)
    cache = tmp_path / "work" / "agent-cache"
    files = sorted(cache.iterdir())
    assert {f.name.rsplit("-", 1)[0] for f in files} >= {"sparkctl.agent.node_agent", "sparkctl.agent.protocol"}
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert call(runner, node, request).hostname == first.hostname
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # read back, not written again
    agent = next(f for f in files if f.name.startswith("sparkctl.agent.node_agent-"))
    agent.write_bytes(b"\x00torn")
    assert call(runner, node, request).hostname == first.hostname
    assert agent.read_bytes() != b"\x00torn"  # compiled again and replaced whole
