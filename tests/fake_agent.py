"""A fake cluster for unit tests of the lifecycle: in-memory nodes that answer the
agent protocol (the same typed requests and replies as the real agent), an HTTP
endpoint that answers like vLLM while the head's server "runs", and faults a
test can inject. No root, no vLLM, no Ray, no subprocess.

    fake = FakeCluster(inventory, served_model_name="tiny")
    up(inventory, playbook, reporter, connect=fake.connect)
    fake.ops("stop")       # which operations reached which nodes, in order

Faults:
    fake.unreachable.add("worker")            every call to the node raises NodeUnavailable
    fake.unreachable_after["worker"] = 3      ... from its 4th status call on
    fake.exits_after["head"] = 2              the head's vLLM dies at its 3rd status poll
    fake.health_after_polls = 3               /health answers 200 only from the 3rd poll of the head on
    fake.cannot_join.add("worker")            that node's `ray start` exits, unable to reach the GCS
    fake.survives_stop.add("worker")          that node's processes survive every stop
    fake.process_state["worker"] = "T"        that node's processes are stopped (SIGSTOP) ("Z": zombies)
    fake.gpus["head"] = (95.0, 18.0)          the head's GPU at 95% utilisation drawing 18 W (telemetry)
    fake.running_requests = 2                 /metrics: requests running; tokens advance at every scrape
    fake.wedged = True                        ... unless wedged: the counters stop while /health stays 200
    fake.replica_after_polls[1] = 5           replica 1 (behind the router) serves from its node's 5th poll on

Replicas: `with fake.replica_endpoints(2) as first_port:` serves one more endpoint per
node (inventory order, on consecutive ports from first_port), each answering while that
node's vLLM runs; the head's endpoint then plays the router, which answers as soon as
the head's replica does (as vllm-router does with one of its replicas healthy).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from sparkctl.agent import protocol as p
from sparkctl.agent.client import AgentClient
from sparkctl.agent.ray_view import RESULT_MARKER as RAY_VIEW_MARKER
from sparkctl.backends.ray import NODE_RESOURCE_PREFIX
from sparkctl.inventory import Inventory
from sparkctl.remote.result import NodeUnavailable, SshFailure

VLLM_STAGES = ("Starting vLLM API server", "Loading model weights took 0.01 GB",
               "# CPU blocks: 100", "Application startup complete.")


@dataclass
class FakeProcess:
    record: p.ProcessRecord
    alive: bool = True
    log: str = ""
    exit: p.ExitInfo | None = None


@dataclass
class FakeNode:
    name: str
    processes: dict[str, FakeProcess] = field(default_factory=dict)  # by record path, as the agent keeps them
    status_calls: int = 0


class FakeCluster:
    """The nodes of `inventory`, answering the agent protocol in memory."""

    def __init__(self, inventory: Inventory, *, served_model_name: str = "tiny", facts: dict[str, Any] | None = None):
        self.inventory = inventory
        self.served_model_name = served_model_name
        self.facts = facts or {}
        self.nodes = {n.name: FakeNode(n.name) for n in inventory.nodes}
        self.calls: list[tuple[str, str]] = []  # (node, op) in the order they arrived
        self.unreachable: set[str] = set()
        self.unreachable_after: dict[str, int] = {}
        self.exits_after: dict[str, int] = {}
        self.health_after_polls = 0
        self.replica_after_polls: dict[int, int] = {}
        self.cannot_join: set[str] = set()
        self.survives_stop: set[str] = set()
        self.process_state: dict[str, str] = {}
        self.gpus: dict[str, tuple[float, float]] = {}
        self.running_requests = 0
        self.wedged = False
        self.generation_tokens = 0
        self._pid = 1000
        self._lock = threading.Lock()

    # -- the seam ------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self, inventory: Inventory) -> Iterator[AgentClient]:
        yield FakeAgentClient(self, inventory)

    def ops(self, op: str | None = None, node: str | None = None) -> list[tuple[str, str]]:
        return [(n, o) for n, o in self.calls if (op is None or o == op) and (node is None or n == node)]

    def running(self, node: str | None = None) -> list[FakeProcess]:
        names = [node] if node else list(self.nodes)
        return [proc for name in names for proc in self.nodes[name].processes.values() if proc.alive]

    # -- answering -----------------------------------------------------------
    def answer(self, node: str, request: p.Request[Any]) -> Any:
        with self._lock:
            self.calls.append((node, request.OP))
            state = self.nodes[node]
            if request.OP in ("status", "telemetry"):
                state.status_calls += 1
            after = self.unreachable_after.get(node)
            if node in self.unreachable or (after is not None and state.status_calls > after):
                raise NodeUnavailable(node, SshFailure.UNREACHABLE, "connection refused (fake)")
            handler = getattr(self, "_" + request.OP)
            return handler(state, request)

    def _facts(self, node: FakeNode, req: p.FactsRequest) -> p.FactsReply:
        facts = json.loads(json.dumps(self.facts))
        if req.sections == ("reach",):
            return p.FactsReply(facts={"ok": True, "reach": {"ping": None, "error": None, "results": []}})
        return p.FactsReply(facts=facts)

    def _probe(self, node: FakeNode, req: p.ProbeRequest) -> p.ProbeReply:
        return p.ProbeReply(
            hostname=node.name, python="3.12.0", paths={},
            commands={c: f"/opt/venv/bin/{c.rsplit('/', 1)[-1]}" for c in req.commands},
            interpreters={c: "/opt/venv/bin/python3" for c in req.commands},
            in_use=(), interfaces={"lo": ["127.0.0.1/8"]}, boot_id="boot",
        )

    def _launch(self, node: FakeNode, req: p.LaunchRequest) -> p.LaunchReply:
        self._pid += 1
        record = p.ProcessRecord(
            role=req.role, pid=self._pid, pgid=self._pid, starttime=self._pid * 10, boot_id="boot", tag=req.tag,
            log=req.log, argv=req.argv, env_keys=tuple(sorted(req.env)), plan_digest=req.plan_digest,
            exit_file=req.exit_file, started_at=0.0, hostname=node.name,
        )
        process = FakeProcess(record)
        if req.role == "ray" and node.name in self.cannot_join:
            process.alive = False
            process.log = "Failed to connect to GCS at address 127.0.0.1:6379 within 60 seconds.\n"
        node.processes[req.record] = process
        return p.LaunchReply(process=record)

    def _status(self, node: FakeNode, req: p.StatusRequest) -> p.StatusReply:
        exits = self.exits_after.get(node.name)
        if exits is not None and node.status_calls > exits:
            for proc in node.processes.values():
                if proc.alive and proc.record.role == "vllm":
                    proc.alive = False
                    proc.log += "RuntimeError: CUDA out of memory (fake)\n"
        for proc in node.processes.values():  # a running server logs its next start-up stage at every poll
            if proc.alive and proc.record.role == "vllm":
                done = sum(stage in proc.log for stage in VLLM_STAGES)
                if done < len(VLLM_STAGES):
                    proc.log += f"INFO {VLLM_STAGES[done]}\n"
        records = tuple(
            p.RecordStatus(alive=proc.alive, exit=proc.exit, **{f.name: getattr(proc.record, f.name)
                                                                for f in p.fields_of(p.ProcessRecord)})
            for path, proc in sorted(node.processes.items()) if path.startswith(req.record_dir)
        )
        logs = []
        for cursor in req.logs:
            text = next((proc.log for proc in node.processes.values() if proc.record.log == cursor.path), None)
            offset = cursor.offset or 0
            data = "" if text is None else text[offset:]
            logs.append(p.LogChunk(path=cursor.path, exists=text is not None, data=data, offset=offset + len(data),
                                   size=len(text or "")))
        return p.StatusReply(records=records, processes=self._ours(node, req.tag_prefix), ports=(), in_use=(),
                             logs=tuple(logs), boot_id="boot")

    def _telemetry(self, node: FakeNode, req: p.TelemetryRequest) -> p.TelemetryReply:
        status = self._status(node, p.StatusRequest(tag_prefix=req.tag_prefix, record_dir=req.record_dir))
        gpu = self.gpus.get(node.name)
        gpus = () if gpu is None else (p.GpuStats(index=0, name="NVIDIA GB10", utilization_pct=gpu[0], power_w=gpu[1],
                                                  temperature_c=50, sm_clock_mhz=2400, mem_clock_mhz=None,
                                                  memory_used_mib=None, memory_total_mib=None),)
        return p.TelemetryReply(
            status=status, host=p.HostStats(load_1m=1.0, load_5m=1.0, load_15m=1.0, cpus=20, mem_total_mib=121000,
                                            mem_available_mib=60000),
            gpus=gpus, gpu_source="nvml" if gpus else "none", gpu_error=None, unified_memory=bool(gpus),
            logs=tuple(p.LogAge(path=r.log, exists=True, size=10, grew_s_ago=1.0) for r in status.records), at=0.0)

    def _ours(self, node: FakeNode, prefix: str) -> tuple[p.ProcessInfo, ...]:
        return tuple(
            p.ProcessInfo(pid=proc.record.pid, ppid=1, pgid=proc.record.pgid, sid=proc.record.pid,
                          starttime=proc.record.starttime or 0, age_s=1.0,
                          state=self.process_state.get(node.name, "S"), tag=proc.record.tag, why="tag",
                          cmdline=" ".join(proc.record.argv)[:400])
            for proc in node.processes.values() if proc.alive and proc.record.tag.startswith(prefix)
        )

    def _stop(self, node: FakeNode, req: p.StopRequest) -> p.StopReply:
        ours = self._ours(node, req.tag_prefix)
        if node.name not in self.survives_stop:
            for path, proc in list(node.processes.items()):
                if proc.record.tag.startswith(req.tag_prefix):
                    proc.alive = False
                    del node.processes[path]  # a clean stop removes the records
        remaining = self._ours(node, req.tag_prefix)
        return p.StopReply(clean=not remaining, stopped=tuple(p.StoppedProcess(x.pid, x.cmdline, x.why) for x in ours),
                           killed=(), remaining=remaining, in_use=(), records_removed=(), elapsed_s=0.0)

    def _ray_group_stop(self, node: FakeNode, req: p.RayGroupStopRequest) -> p.RayGroupStopReply:
        leader = "no record" if req.pid is None else "gone"
        stopped = []
        for proc in node.processes.values():
            if proc.alive and proc.record.pid == req.pid and node.name not in self.survives_stop:
                proc.alive = False
                leader = "terminated"
                stopped.append(p.StoppedProcess(proc.record.pid, " ".join(proc.record.argv)[:200]))
        return p.RayGroupStopReply(leader=leader, pgid=req.pgid, stopped=tuple(stopped), killed=(), remaining=(),
                                   elapsed_s=0.0, leader_s=0.0 if stopped else None)

    def _host_scan(self, node: FakeNode, req: p.HostScanRequest) -> p.HostScanReply:
        return p.HostScanReply(processes=tuple(
            p.RayProcess(pid=x.record.pid, pgid=x.record.pgid, comm="raylet", cmdline="raylet", tag=x.record.tag)
            for x in node.processes.values() if x.alive and x.record.role == "ray"))

    def _remove(self, node: FakeNode, req: p.RemoveRequest) -> p.RemoveReply:
        return p.RemoveReply(removed=())

    def _read(self, node: FakeNode, req: p.ReadRequest) -> p.ReadReply:
        return p.ReadReply(path=req.path, exists=False, error="No such file (fake)")

    def _exec(self, node: FakeNode, req: p.ExecRequest) -> p.ExecReply:
        if req.program == "sparkctl.agent.ray_view":
            return p.ExecReply(rc=0, stdout=RAY_VIEW_MARKER + json.dumps(self.ray_view()) + "\n", stderr="",
                               duration_s=0.0)
        return p.ExecReply(rc=0, stdout="", stderr="", duration_s=0.0)

    def ray_view(self) -> dict[str, Any]:
        """Ray's view: every node whose `ray start` runs, at its fabric address, with one GPU."""
        nodes = []
        for inv_node in self.inventory.nodes:
            if any(proc.alive and proc.record.role == "ray" for proc in self.nodes[inv_node.name].processes.values()):
                nodes.append({"NodeID": inv_node.name, "Alive": True, "NodeManagerAddress": inv_node.address,
                              "NodeManagerHostname": inv_node.name,
                              "Resources": {"GPU": 1.0, f"{NODE_RESOURCE_PREFIX}{inv_node.name}": 1.0}})
        gpus = float(len(nodes))
        return {"ok": True, "ray_version": "2.60.0", "python": "3.12.0", "nodes": nodes,
                "resources": {"GPU": gpus}, "available": {"GPU": gpus}}

    # -- the endpoint ----------------------------------------------------------
    def serving(self) -> bool:
        head = self.nodes[self.inventory.head.name]
        alive = any(proc.alive and proc.record.role == "vllm" for proc in head.processes.values())
        return alive and head.status_calls >= self.health_after_polls

    def replica_serving(self, index: int) -> bool:
        node = self.nodes[self.inventory.nodes[index].name]
        alive = any(proc.alive and proc.record.role == "vllm" for proc in node.processes.values())
        return alive and node.status_calls >= self.replica_after_polls.get(index, 0)

    @contextlib.contextmanager
    def replica_endpoints(self, count: int) -> Iterator[int]:
        """`count` replica servers on consecutive free ports; yields the first."""
        with contextlib.ExitStack() as stack:
            sockets = _consecutive_sockets(count)
            ports = [sock.getsockname()[1] for sock in sockets]
            for index, (sock, port) in enumerate(zip(sockets, ports)):
                sock.close()  # reopened by the server at once: the port stays ours in practice
                stack.enter_context(self.endpoint(port, serving=lambda i=index: self.replica_serving(i)))
            yield ports[0]

    @contextlib.contextmanager
    def endpoint(self, port: int = 0, serving: Callable[[], bool] | None = None) -> Iterator[int]:
        """An HTTP server on 127.0.0.1 answering like vLLM while `serving()` (by default:
        while the head's vLLM runs); yields its port."""
        cluster = self
        serves = serving or self.serving

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if not serves():
                    self._reply(503, {"error": "starting"})
                elif self.path == "/health":
                    self._reply(200, {})
                elif self.path == "/metrics":
                    if not cluster.wedged and cluster.running_requests:
                        cluster.generation_tokens += 7  # a token or more between two scrapes
                    text = (f"vllm:num_requests_running{{engine=\"0\"}} {cluster.running_requests}\n"
                            f"vllm:num_requests_waiting{{engine=\"0\"}} 0\n"
                            f"vllm:kv_cache_usage_perc{{engine=\"0\"}} 0.25\n"
                            f"vllm:generation_tokens_total{{engine=\"0\"}} {cluster.generation_tokens}\n"
                            f"vllm:prompt_tokens_total{{engine=\"0\"}} 100\n").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                else:
                    self._reply(200, {"data": [{"id": cluster.served_model_name}]})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._reply(200 if serves() else 503, {"choices": [{"text": " world"}]})

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()


class JsonHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers JSON and logs nothing (the fake endpoints, stub servers)."""

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _consecutive_sockets(count: int) -> list[socket.socket]:
    """Bound sockets on `count` consecutive ports (a replica's port is the first plus its index)."""
    for _ in range(50):
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        sockets = [first]
        try:
            for offset in range(1, count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", first.getsockname()[1] + offset))
            return sockets
        except OSError:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


class FakeAgentClient(AgentClient):
    """The real client's call_all (fan-out, every node's outcome), over the fake nodes."""

    def __init__(self, cluster: FakeCluster, inventory: Inventory):
        super().__init__(inventory, session=None)  # type: ignore[arg-type]
        self.cluster = cluster

    def call(self, node: Any, request: p.Request[Any], *, timeout_s: float = 60.0) -> Any:
        # Through the wire format and back: what the fake answers must survive the real codec.
        wire = p.encode_request(request)
        decoded = p.decode_request(json.loads(json.dumps(wire)))
        reply = self.cluster.answer(node.name, decoded)
        return p.from_wire(request.REPLY, json.loads(json.dumps(p.to_wire(reply))))
