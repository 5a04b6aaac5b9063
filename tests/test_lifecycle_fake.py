"""`up`, readiness, `down` and the Ray membership checks against a fake cluster
(tests/fake_agent.py): the lifecycle's decisions, in seconds, without root,
SSH, vLLM or Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkctl.agent import node_facts, protocol
from sparkctl.backends import ray_cluster
from sparkctl.errors import DeadlineExceeded, OperationFailed
from sparkctl.inventory import load_inventory
from sparkctl.ops.down import down
from sparkctl.ops.status import status
from sparkctl.ops.up import up
from sparkctl.playbook import load_playbook
from sparkctl.progress import Reporter
from sparkctl.serve import readiness
from sparkctl.serve.readiness import NotReady
from sparkctl.state import StateStore
from tests.fake_agent import FakeCluster

REPO = Path(__file__).resolve().parent.parent
ALL_CHECKS = frozenset({"all"})  # the checks are tested elsewhere; these facts come from this machine


class Events(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def event(self, node: str | None, message: str) -> None:
        self.lines.append(f"{node or '-'}: {message}")


@pytest.fixture(scope="module")
def local_facts():
    """This machine's facts, once: what the fake nodes report (no vLLM probe)."""
    request = protocol.FactsRequest(sections=("system", "rdma", "netdevs", "memory", "disk", "limits", "ports", "env"))
    return node_facts.gather(protocol.to_wire(request))


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(readiness, "POLL_S", 0.01)
    monkeypatch.setattr(readiness, "NODE_POLL_S", 0.01)
    monkeypatch.setattr(ray_cluster, "POLL_S", 0.01)


@pytest.fixture
def inventory():
    return load_inventory(str(REPO / "inventories" / "local.yaml"))


@pytest.fixture
def fake(inventory, local_facts):
    cluster = FakeCluster(inventory, served_model_name="tiny", facts=local_facts)
    with cluster.endpoint() as port, cluster.replica_endpoints(len(inventory.nodes)) as replica_port:
        cluster.port = port
        cluster.replica_port = replica_port  # for playbooks of the replicas layout
        yield cluster


def write_playbook(tmp_path, fake, *, backend="mp", ready_timeout_s=30, extra=""):
    path = tmp_path / f"playbook-{backend}.yaml"
    path.write_text(
        f"model: {REPO / 'playbooks' / 'models' / 'tiny-llama'}\nserved_model_name: tiny\nbackend: {backend}\n"
        f"tensor_parallel_size: 2\nhost: 127.0.0.1\nport: {fake.port}\nmaster_port: 29511\n"
        f"ready_timeout_s: {ready_timeout_s}\nstop_grace_s: 1\n{extra}"
    )
    return load_playbook(str(path))


def bring_up(inventory, playbook, fake, events=None):
    return up(inventory, playbook, events or Events(), ignore_checks=ALL_CHECKS, connect=fake.connect, environ={})


# ---------------------------------------------------------------- up converges
def test_up_starts_vllm_on_every_node_and_a_second_up_starts_nothing(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    first = bring_up(inventory, playbook, fake)
    assert first.outcome == "started" and first.timings["total_s"] > 0
    assert sorted(n for n, _ in fake.ops("launch")) == ["head", "worker"]
    assert first.kv_cache["tokens"] is None or first.kv_cache  # read from the fake's log
    calls = len(fake.calls)

    second = bring_up(inventory, playbook, fake)
    assert second.outcome == "already-up"
    new_ops = {op for _, op in fake.calls[calls:]}
    assert "launch" not in new_ops and "stop" not in new_ops and "ray_group_stop" not in new_ops
    assert {n: v["pid"] for n, v in second.nodes.items()} == {n: v["pid"] for n, v in first.nodes.items()}


def test_leftovers_of_another_plan_are_stopped_before_anything_starts(inventory, fake, tmp_path):
    bring_up(inventory, write_playbook(tmp_path, fake), fake)
    old = {proc.record.pid for proc in fake.running()}
    calls = len(fake.calls)
    changed = write_playbook(tmp_path, fake, extra="vllm_args: ['--max-model-len', '256']\n")
    events = Events()
    result = bring_up(inventory, changed, fake, events)
    later = [op for _, op in fake.calls[calls:]]
    assert result.outcome == "started"
    assert later.index("stop") < later.index("launch")  # leftovers first
    assert "ray_group_stop" not in later  # no Ray was started here: nothing runs stop_ray
    assert not old & {proc.record.pid for proc in fake.running()}
    assert any("do not match this plan" in line for line in events.lines)


# ---------------------------------------------------------------- readiness
def test_a_process_that_exits_during_start_up_names_the_node_and_stops_everything(inventory, fake, tmp_path):
    fake.exits_after["worker"] = 2
    fake.health_after_polls = 10**6
    with pytest.raises(NotReady) as caught:
        bring_up(inventory, write_playbook(tmp_path, fake), fake)
    assert caught.value.node == "worker" and "vLLM exited during start-up" in caught.value.message
    assert any("CUDA out of memory" in line for line in caught.value.details)  # the log tail is the evidence
    assert fake.running() == [] and StateStore.for_cluster(inventory.cluster).load() is None


def test_the_deadline_ends_the_wait_and_stops_everything(inventory, fake, tmp_path):
    fake.health_after_polls = 10**6
    with pytest.raises(DeadlineExceeded, match="not ready after") as caught:
        bring_up(inventory, write_playbook(tmp_path, fake, ready_timeout_s=0.3), fake)
    assert "/health" in caught.value.message
    assert fake.running() == []


def test_a_node_that_stops_answering_ends_the_wait(inventory, fake, tmp_path):
    fake.health_after_polls = 10**6
    fake.unreachable_after["worker"] = 3
    with pytest.raises(NotReady, match="worker: lost contact while vLLM was starting"):
        bring_up(inventory, write_playbook(tmp_path, fake), fake)
    assert fake.running("head") == []  # what could be reached was stopped
    assert fake.ops("stop", "head")


# ---------------------------------------------------------------- down
def test_down_with_nothing_running_is_clean_and_says_so(inventory, fake):
    result = down(inventory, Events(), connect=fake.connect)
    assert result.clean and result.nothing_to_stop and not result.had_state


def test_down_without_local_state_finds_what_runs_through_the_nodes(inventory, fake, tmp_path):
    bring_up(inventory, write_playbook(tmp_path, fake), fake)
    StateStore.for_cluster(inventory.cluster).clear()
    result = down(inventory, Events(), connect=fake.connect)
    assert result.clean and not result.nothing_to_stop and not result.had_state
    assert all(len(node.stopped) == 1 for node in result.nodes.values())
    assert fake.running() == []


def test_down_reports_an_unreachable_node_and_keeps_the_state(inventory, fake, tmp_path):
    bring_up(inventory, write_playbook(tmp_path, fake), fake)
    fake.unreachable.add("worker")
    result = down(inventory, Events(), connect=fake.connect)
    assert result.unreachable == ["worker"] and not result.clean
    assert fake.running("head") == [] and len(fake.running("worker")) == 1
    assert StateStore.for_cluster(inventory.cluster).load() is not None  # down again once it is back


def test_status_reports_serving_then_stopped(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    assert status(inventory, playbook=playbook, connect=fake.connect).state == "serving"
    down(inventory, Events(), connect=fake.connect)
    assert status(inventory, playbook=playbook, connect=fake.connect).state == "stopped"


# ---------------------------------------------------------------- Ray
RAY = "ray: {command: ['/opt/venv/bin/ray'], join_timeout_s: 5}\n"


def test_ray_up_verifies_membership_then_serves_and_converges(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake, backend="ray", extra=RAY)
    events = Events()
    first = bring_up(inventory, playbook, fake, events)
    roles = sorted((n, json.dumps(p.record.role)) for n in fake.nodes for p in fake.running(n))
    assert roles == [("head", '"ray"'), ("head", '"vllm"'), ("worker", '"ray"')]
    assert any("Ray cluster ready: 2 node(s), 2 GPU(s)" in line for line in events.lines)
    assert first.outcome == "started"
    assert bring_up(inventory, playbook, fake).outcome == "already-up"
    down(inventory, Events(), connect=fake.connect)
    assert fake.running() == [] and len(fake.ops("ray_group_stop")) == 2


def test_a_ray_node_that_cannot_join_stops_ray_exactly_once(inventory, fake, tmp_path):
    """One owner of teardown: start_ray_cluster stops the Ray it started; up must not stop it again."""
    fake.cannot_join.add("worker")
    with pytest.raises(OperationFailed, match="worker: `ray start` exited"):
        bring_up(inventory, write_playbook(tmp_path, fake, backend="ray", extra=RAY), fake)
    assert sorted(fake.ops("ray_group_stop")) == [("head", "ray_group_stop"), ("worker", "ray_group_stop")]
    assert fake.running() == []


def test_ray_membership_with_a_node_missing_is_named_at_the_deadline(inventory, fake, tmp_path, monkeypatch):
    real_view = fake.ray_view

    def without_worker():
        view = real_view()
        view["nodes"] = [n for n in view["nodes"] if n["NodeID"] != "worker"]
        return view

    monkeypatch.setattr(fake, "ray_view", without_worker)
    with pytest.raises(DeadlineExceeded, match="worker did not join the Ray cluster"):
        bring_up(inventory, write_playbook(tmp_path, fake, backend="ray", extra=RAY.replace("5}", "0.5}")), fake)
    assert fake.running() == [] and len(fake.ops("ray_group_stop")) == 2
