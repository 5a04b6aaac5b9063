"""The real vllm-router, started with the argv sparkctl plans for `replicas`,
in front of two stub OpenAI servers (no vLLM): it accepts every flag, answers
/health and /v1/models for the replicas, and its round robin reaches both."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from sparkctl.backends.replicas import plan_replicas
from sparkctl.inventory import load_inventory
from sparkctl.playbook import load_playbook
from tests.conftest import network_plans
from tests.fake_agent import JsonHandler

REPO = Path(__file__).resolve().parent.parent
ROUTER = REPO / ".venv" / "bin" / "vllm-router"

pytestmark = pytest.mark.skipif(not ROUTER.exists(), reason="vllm-router is not installed (make setup installs the `router` extra)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stub_server(port: int, served: list[int]) -> Iterator[None]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(200, {})
            else:
                self._reply(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            served.append(port)
            self._reply(200, {"id": "x", "object": "text_completion", "model": "tiny",
                              "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.status, reply.read()


def test_the_planned_router_serves_both_replicas_round_robin(tmp_path):
    port, first, metrics = free_port(), free_port(), free_port()
    while first + 1 in (port, metrics):
        first = free_port()
    pb_path = tmp_path / "pb.yaml"
    pb_path.write_text(f"model: /m\nserved_model_name: tiny\nreplicas: 2\nhost: 127.0.0.1\nport: {port}\n"
                       f"replica_port: {first}\nrouter: {{policy: round_robin, command: [{ROUTER}], metrics_port: {metrics}}}\n")
    inv = load_inventory(str(REPO / "inventories" / "local.yaml"))
    plan = plan_replicas(inv, load_playbook(str(pb_path)), network_plans(inv, {"head": {"lo": ["127.0.0.1/8"]},
                                                                               "worker": {"lo": ["127.0.0.1/8"]}}))
    served: list[int] = []
    with stub_server(first, served), stub_server(first + 1, served):
        router = subprocess.Popen(list(plan.router.argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if get(f"{base}/health")[0] == 200:
                        break
                except OSError:
                    pass
                assert router.poll() is None, "vllm-router exited: it refused sparkctl's argv"
                assert time.monotonic() < deadline, "vllm-router did not answer /health"
                time.sleep(0.2)
            assert [m["id"] for m in json.loads(get(f"{base}/v1/models")[1])["data"]] == ["tiny"]
            body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 1}).encode()
            for _ in range(4):
                assert get(f"{base}/v1/completions", body)[0] == 200
            assert sorted(served) == [first, first, first + 1, first + 1]
        finally:
            router.terminate()
            router.wait(timeout=10)
