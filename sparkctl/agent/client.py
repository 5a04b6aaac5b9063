"""Controller side of the node agent: the typed client every command uses to
talk to the nodes.

The agent's source and one request travel on stdin to `python3 -c BOOTSTRAP`
(node_bootstrap.py's code); values never travel in argv (BOOTSTRAP is the same
for every call; environment values and secrets are in the request). Requests and replies are the frozen types of
sparkctl.agent.protocol, checked on both sides.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any, TypeVar

from sparkctl.agent import protocol
from sparkctl.agent.protocol import ProtocolError, Request
from sparkctl.errors import OperationFailed, SparkctlError
from sparkctl.inventory import Inventory, Node
from sparkctl.remote.base import Runner
from sparkctl.remote.result import CommandTimeout
from sparkctl.remote.session import NodeSession, Outcome, fan_out

R = TypeVar("R")

RESULT_MARKER = "SPARKCTL-AGENT-RESULT "

# Node-side modules (standard library only) by their name in the package; they
# keep that name on the node, so they import each other as they do here.
NODE_MODULES = {
    "sparkctl.agent.protocol": "protocol.py",
    "sparkctl.agent.node_proc": "node_proc.py",
    "sparkctl.agent.node_output": "node_output.py",
    "sparkctl.agent.node_facts": "node_facts.py",
    "sparkctl.agent.vllm_probe": "vllm_probe.py",
    "sparkctl.agent.node_ray": "node_ray.py",
    "sparkctl.agent.node_waiter": "node_waiter.py",
    "sparkctl.agent.ray_view": "ray_view.py",
    "sparkctl.agent.torch_check": "torch_check.py",
    "sparkctl.agent.node_telemetry": "node_telemetry.py",
    "sparkctl.agent.node_agent": "node_agent.py",
}
BASE_MODULES = ("sparkctl.agent.protocol", "sparkctl.agent.node_proc", "sparkctl.agent.node_output")
AGENT_MODULE = "sparkctl.agent.node_agent"
# Operations that need more than the base modules (the launch waiter runs in a
# process of its own, from the source the agent was sent).
EXTRA_MODULES = {
    "facts": ("sparkctl.agent.vllm_probe", "sparkctl.agent.node_facts"),
    "host_scan": ("sparkctl.agent.node_ray",),
    "ray_group_stop": ("sparkctl.agent.node_ray",),
    "launch": ("sparkctl.agent.node_waiter",),
    # node_facts for its nvidia-smi parser, when NVML is missing
    "telemetry": ("sparkctl.agent.vllm_probe", "sparkctl.agent.node_facts", "sparkctl.agent.node_telemetry"),
}



@functools.cache
def bootstrap_program() -> str:
    """node_bootstrap.py as the one `-c` argument that receives the other modules.
    Docstrings and comments are left out: they would only lengthen every agent
    call's command line (what `ps` on the node shows)."""
    tree = ast.parse(resources.files("sparkctl.agent").joinpath("node_bootstrap.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.FunctionDef)) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


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


def request_stdin(request: Request[Any], *, cache_dir: str | None = None) -> bytes:
    """What the bootstrap reads: the node-side modules, the request, and where the
    node may cache compiled modules (None: nowhere), one JSON line."""
    extra = EXTRA_MODULES.get(request.OP, ())
    program = getattr(request, "program", None)
    if program is not None:
        extra = (*extra, program)
    message = {"mods": _modules(extra), "req": protocol.encode_request(request), "cache": cache_dir}
    return (json.dumps(message) + "\n").encode()


def call(runner: Runner, node: Node, request: Request[R], *, timeout_s: float = 60.0) -> R:
    """Run one agent operation on a node and return its typed reply (raising AgentError on failure)."""
    stdin = request_stdin(request, cache_dir=f"{node.workdir.rstrip('/')}/agent-cache")
    try:
        result = runner.run([node.python, "-c", bootstrap_program()], stdin=stdin, timeout_s=timeout_s)
    except CommandTimeout as exc:
        # name the operation, not the interpreter that ran it: usually the node or its link went quiet
        raise CommandTimeout(node.name, exc.argv, exc.timeout_s,
                             what=f"the node agent's `{request.OP}` (no answer: the node or its link may be down)") from None
    message = _parse_reply(result.text())
    if message is None:
        raise AgentError(node.name, _no_reply_message(node, result.returncode, result.error_text()),
                         hint=_no_reply_hint(node, result.returncode, result.error_text()))
    return decode_reply(node.name, request, message)


def decode_reply(node: str, request: Request[R], message: Any) -> R:
    """The reply to request, checked against its type; agent failures become AgentError."""
    if not isinstance(message, dict) or message.get("v", 1) != protocol.PROTOCOL_VERSION:
        got = message.get("v", 1) if isinstance(message, dict) else None  # version 1 had no "v"
        raise AgentError(node, f"the node agent speaks protocol {got!r}, this sparkctl speaks "
                               f"{protocol.PROTOCOL_VERSION}", kind="protocol-version",
                         hint="use the same sparkctl version on the controller and wherever the agent comes from")
    if not message.get("ok"):
        kind = message.get("kind")
        hint = ("use the same sparkctl version on the controller and wherever the agent comes from"
                if kind == "protocol-version" else None)
        raise AgentError(node, f"{request.OP} failed: {message.get('error', 'unknown error')}", kind=kind, hint=hint)
    try:
        reply: R = protocol.from_wire(request.REPLY, message.get("reply"), f"{request.OP} reply")
    except ProtocolError as exc:
        raise AgentError(node, f"the node agent's reply does not match the protocol: {exc}",
                         kind="bad-reply") from None
    return reply


class AgentClient:
    """Typed agent calls on one node or on all of them, over a NodeSession."""

    def __init__(self, inventory: Inventory, session: NodeSession):
        self.inventory = inventory
        self.session = session

    def call(self, node: Node, request: Request[R], *, timeout_s: float = 60.0) -> R:
        return call(self.session.runner(node), node, request, timeout_s=timeout_s)

    def call_all(
        self,
        request: Callable[[Node], Request[R]],
        *,
        nodes: Iterable[Node] | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Outcome[R]]:
        """One request per node, all at once; every node's outcome is returned.

        Node failures (SparkctlError: unreachable, agent errors, timeouts) are
        outcomes; anything else is a bug and is raised, not reported per node."""
        targets = list(nodes) if nodes is not None else list(self.inventory.nodes)
        outcomes = fan_out(targets, lambda node: self.call(node, request(node), timeout_s=timeout_s))
        for outcome in outcomes.values():
            if outcome.error is not None and not isinstance(outcome.error, SparkctlError):
                raise outcome.error
        return outcomes


@contextlib.contextmanager
def connect(inventory: Inventory) -> Iterator[AgentClient]:
    """An agent client over one runner per node (SSH or local), closed on exit."""
    with NodeSession(inventory) as session:
        yield AgentClient(inventory, session)


Connect = Callable[[Inventory], contextlib.AbstractContextManager[AgentClient]]


def _parse_reply(stdout: str) -> Any:
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
