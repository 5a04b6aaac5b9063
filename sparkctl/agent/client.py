"""Controller side of the node agent: send its source and a request over stdin,
read back one JSON result. Values never travel in argv: BOOTSTRAP is a fixed
string and everything else (environment values and secrets included) is on stdin."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from sparkctl.errors import OperationFailed
from sparkctl.inventory import Node
from sparkctl.remote.base import Runner

RESULT_MARKER = "SPARKCTL-AGENT-RESULT "

# Node-side modules (standard library only) by their name in the package; they
# keep that name on the node, so they import each other as they do here.
NODE_MODULES = {
    "sparkctl.agent.node_proc": "node_proc.py",
    "sparkctl.agent.node_facts": "node_facts.py",
    "sparkctl.agent.node_agent": "node_agent.py",
}
BASE_MODULES = ("sparkctl.agent.node_proc",)
AGENT_MODULE = "sparkctl.agent.node_agent"

# Installs the shipped modules under an empty `sparkctl.agent` package (so an
# installed sparkctl of another version is never imported), dependencies first,
# the agent last, and answers the request.
BOOTSTRAP = (
    "import sys,json,types;d=json.loads(sys.stdin.readline())\n"
    "for n in ('sparkctl','sparkctl.agent'):\n"
    " m=types.ModuleType(n);m.__path__=[];sys.modules[n]=m\n"
    "for n,s in d['mods']:\n"
    " m=types.ModuleType(n);sys.modules[n]=m;p,_,c=n.rpartition('.');setattr(sys.modules[p],c,m)\n"
    " exec(compile(s,n,'exec'),m.__dict__)\n"
    "sys.modules['sparkctl.agent.node_agent'].respond(d['req'])"
)


class AgentError(OperationFailed):
    def __init__(self, node: str, message: str, *, hint: str | None = None, kind: str | None = None):
        super().__init__(f"{node}: {message}", hint=hint)
        self.node = node
        self.kind = kind


@functools.cache
def module_source(name: str) -> str:
    return resources.files("sparkctl.agent").joinpath(NODE_MODULES[name]).read_text(encoding="utf-8")


def _modules(extra: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(name, module_source(name)) for name in (*BASE_MODULES, *extra, AGENT_MODULE)]


def call_agent(
    runner: Runner,
    node: Node,
    op: str,
    *,
    timeout_s: float = 60.0,
    modules: tuple[str, ...] = (),
    **payload: Any,
) -> dict:
    """Run one agent operation on a node and return its result (raising on failure).

    `modules` names extra node-side modules (keys of NODE_MODULES) that the
    operation needs; they are shipped with the agent on stdin."""
    request = {"op": op, **payload}
    stdin = (json.dumps({"mods": _modules(modules), "req": request}) + "\n").encode()
    result = runner.run([node.python, "-c", BOOTSTRAP], stdin=stdin, timeout_s=timeout_s)
    reply = _parse_reply(result.text())
    if reply is None:
        raise AgentError(node.name, _no_reply_message(node, result.returncode, result.error_text()),
                         hint=_no_reply_hint(node, result.returncode, result.error_text()))
    if not reply.get("ok", False) and op not in {"stop"}:
        raise AgentError(node.name, f"{op} failed: {reply.get('error', 'unknown error')}", kind=reply.get("kind"))
    return reply


def _parse_reply(stdout: str) -> dict | None:
    # Login scripts may print to stdout; the result is the last marked line.
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                return json.loads(line[len(RESULT_MARKER):])
            except ValueError:
                return None
    return None


def _no_reply_message(node: Node, returncode: int, stderr: str) -> str:
    tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no output"
    if returncode == 127:
        return f"{node.python} not found on the node ({tail})"
    return f"the node agent gave no result (exit {returncode}): {tail}"


def _no_reply_hint(node: Node, returncode: int, stderr: str) -> str:
    if returncode == 127:
        return "install Python 3.8+ on the node or set nodes[].python to its interpreter"
    if "SyntaxError" in stderr:
        return f"{node.python} is too old: sparkctl's node agent needs Python 3.8 or newer (set nodes[].python)"
    return "run with --debug for the full output"
