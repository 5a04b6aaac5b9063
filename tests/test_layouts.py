"""Layouts: the playbook keys, their checks against the inventory, the labels,
and the plans (argv) of the data-parallel and replicas backends; the replicas
layout's lifecycle on the fake cluster."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sparkctl.backends.dp import plan_dp
from sparkctl.backends.replicas import plan_replicas
from sparkctl.backends.serving import DpBackend, MpBackend, ReplicasBackend, backend_for
from sparkctl.errors import InputError
from sparkctl.inventory import load_inventory
from sparkctl.layouts import Layout, layout_of, parse_layout, with_layout
from sparkctl.ops.down import down
from sparkctl.playbook import check_against_inventory, load_playbook
from tests.conftest import network_plans
from tests.test_lifecycle_fake import (  # noqa: F401 - fake, fast_polls, inventory, local_facts are fixtures
    ALL_CHECKS,
    Events,
    fake,
    fast_polls,
    inventory,
    local_facts,
)

REPO = Path(__file__).resolve().parent.parent

PAIR = """\
cluster: pair
nodes:
  - {name: a, host: 10.0.0.10, fabric_ip: 192.168.100.10}
  - {name: b, host: 10.0.0.11, fabric_ip: 192.168.100.11}
"""

QUAD = """\
cluster: quad
nodes:
  - {name: a, host: 10.0.0.10, fabric_ip: 192.168.100.10, gpus: 2}
  - {name: b, host: 10.0.0.11, fabric_ip: 192.168.100.11, gpus: 2}
"""


def write(tmp_path: Path, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def loaded(tmp_path: Path, inventory_text: str, playbook_text: str, model: str = "/models/m"):
    inv = load_inventory(write(tmp_path, inventory_text, "inv.yaml"))
    pb = load_playbook(write(tmp_path, f"model: {model}\nvllm: {{command: [/opt/v/bin/vllm]}}\n" + playbook_text, "pb.yaml"))
    return inv, pb


def plans_for(inv):
    return network_plans(inv, {n.name: {"enp1s0f1np1": [f"{n.fabric_ip}/24"]} for n in inv.nodes})


# ---------------------------------------------------------------- labels
@pytest.mark.parametrize("text, layout", [
    ("tp2", Layout(tp=2)), ("dp2", Layout(dp=2)), ("replicas2", Layout(replicas=2)),
    ("replicas2tp2", Layout(tp=2, replicas=2)), ("TP2PP2", Layout(tp=2, pp=2)), ("tp1", Layout()),
])
def test_labels_parse_and_print_back(text, layout):
    assert parse_layout(text) == layout
    assert parse_layout(layout.label) == layout


@pytest.mark.parametrize("text, words", [
    ("tp", "not a layout"), ("tp2x", "not a layout"), ("tp2tp2", "twice"), ("dp2replicas2", "exclude"),
    ("tp0", "at least 1"), ("", "not a layout"),
])
def test_bad_labels_say_why(text, words):
    with pytest.raises(ValueError, match=words):
        parse_layout(text)


# ---------------------------------------------------------------- playbook keys
def test_replicas_and_data_parallel_exclude_each_other_at_their_line(tmp_path):
    path = write(tmp_path, "model: /m\ndata_parallel_size: 2\nreplicas: 2\n", "pb.yaml")
    with pytest.raises(InputError) as caught:
        load_playbook(path)
    assert any(":3: replicas" in d and "exclude each other" in d for d in caught.value.details), caught.value.details


def test_layouts_need_backend_mp_and_the_router_no_api_key(tmp_path):
    path = write(tmp_path, "model: /m\nbackend: ray\nreplicas: 2\nforward_env: [VLLM_API_KEY]\n", "pb.yaml")
    with pytest.raises(InputError) as caught:
        load_playbook(path)
    text = "\n".join(caught.value.details)
    assert "backend 'mp' only" in text and "vllm-router takes its key only on the command line" in text


def test_unknown_router_policy_and_reserved_dp_flags_are_refused(tmp_path):
    with pytest.raises(InputError) as caught:
        load_playbook(write(tmp_path, "model: /m\nrouter: {policy: fastest}\n", "policy.yaml"))
    assert "router.policy" in caught.value.details[0] and "round_robin" in caught.value.details[0]
    path = write(tmp_path, "model: /m\nvllm_args: ['-dp', '2', '--data-parallel-rpc-port=1']\n", "pb.yaml")
    with pytest.raises(InputError) as caught:
        load_playbook(path)
    text = "\n".join(caught.value.details)
    assert "vllm_args[0]: -dp is set by sparkctl; use the playbook key data_parallel_size" in text
    assert "vllm_args[2]: --data-parallel-rpc-port is set by sparkctl" in text


@pytest.mark.parametrize("inventory_text, playbook_text, words", [
    (PAIR, "replicas: 3\n", "replicas = 3, but"),
    (PAIR, "data_parallel_size: 2\ntensor_parallel_size: 2\n", "= 4, but"),
    (QUAD, "data_parallel_size: 1\ntensor_parallel_size: 2\npipeline_parallel_size: 2\n", ""),
    (QUAD, "replicas: 4\n", "several replicas on one node are not supported"),
    (PAIR, "tensor_parallel_size: 1\n", "= 1, but"),
])
def test_the_layout_must_use_every_gpu_once(tmp_path, inventory_text, playbook_text, words):
    inv, pb = loaded(tmp_path, inventory_text, playbook_text)
    problems = check_against_inventory(pb, inv)
    if words:
        assert problems and words in problems[0], problems
    else:
        assert problems == []


# ---------------------------------------------------------------- plans
def test_dp_plan_one_api_server_and_headless_engines_from_their_first_rank(tmp_path):
    inv, pb = loaded(tmp_path, QUAD, "data_parallel_size: 4\ndata_parallel_rpc_port: 13345\nport: 8000\n")
    assert isinstance(backend_for(inv, pb), DpBackend) and layout_of(pb).label == "dp4"
    head, worker = plan_dp(inv, pb, plans_for(inv))
    common = ["--data-parallel-size", "4", "--data-parallel-size-local", "2",
              "--data-parallel-address", "192.168.100.10", "--data-parallel-rpc-port", "13345"]
    text = " ".join(head.argv)
    assert " ".join(common) in text and text.endswith("--host 0.0.0.0 --port 8000") and "--headless" not in text
    assert " ".join(common) in " ".join(worker.argv)
    assert list(worker.argv[-3:]) == ["--headless", "--data-parallel-start-rank", "2"]
    assert "--enable-expert-parallel" not in worker.argv and "--nnodes" not in worker.argv
    assert head.listen_ports == (8000, 13345) and worker.listen_ports == ()


def test_dp_expert_parallel_is_refused_for_a_dense_model(tmp_path):
    model = REPO / "playbooks" / "models" / "tiny-llama"
    inv, pb = loaded(tmp_path, PAIR, "data_parallel_size: 2\nenable_expert_parallel: true\n", model=str(model))
    with pytest.raises(InputError, match="dense model"):
        plan_dp(inv, pb, plans_for(inv))


def test_dp_expert_parallel_passes_for_a_model_vllm_cannot_be_asked_about(tmp_path):
    inv, pb = loaded(tmp_path, PAIR, "data_parallel_size: 2\nenable_expert_parallel: true\n")
    assert all("--enable-expert-parallel" in s.argv for s in plan_dp(inv, pb, plans_for(inv)))


def test_replicas_plan_one_server_per_node_and_the_router_on_the_head(tmp_path):
    inv, pb = loaded(tmp_path, PAIR, "replicas: 2\nport: 8000\nrouter: {policy: power_of_two}\n")
    assert isinstance(backend_for(inv, pb), ReplicasBackend) and layout_of(pb).label == "replicas2"
    plan = plan_replicas(inv, pb, plans_for(inv))
    assert [(g.nodes, g.port, g.url) for g in plan.groups] == [
        (("a",), 8001, "http://192.168.100.10:8001"), (("b",), 8002, "http://192.168.100.11:8002")]
    a, b = plan.servers
    for spec, port in ((a, 8001), (b, 8002)):
        assert spec.role == "vllm" and list(spec.argv[-4:]) == ["--host", "0.0.0.0", "--port", str(port)]
        assert "--headless" not in spec.argv and "--nnodes" not in spec.argv
        assert spec.argv[spec.argv.index("--tensor-parallel-size") + 1] == "1"
    router = plan.router
    assert router.node == "a" and router.role == "router" and router.listen_ports == (8000, 29000)
    assert router.argv[0] == "/opt/v/bin/vllm-router"
    text = " ".join(router.argv)
    assert "--port 8000" in text and "--policy power_of_two" in text
    assert text.endswith("--worker-urls http://192.168.100.10:8001 http://192.168.100.11:8002")


def test_replicas_of_two_nodes_each_are_multi_node_launches_with_their_own_master(tmp_path):
    four = PAIR + "  - {name: c, host: 10.0.0.12, fabric_ip: 192.168.100.12}\n" \
                  "  - {name: d, host: 10.0.0.13, fabric_ip: 192.168.100.13}\n"
    inv, pb = loaded(tmp_path, four, "replicas: 2\ntensor_parallel_size: 2\nreplica_port: 9000\nmaster_port: 29600\n")
    plan = plan_replicas(inv, pb, plans_for(inv))
    assert [g.nodes for g in plan.groups] == [("a", "b"), ("c", "d")]
    c, d = plan.servers[2], plan.servers[3]
    assert " ".join(c.argv).count("--master-addr 192.168.100.12 --master-port 29601") == 1
    assert "--node-rank 0" in " ".join(c.argv) and c.argv[-1] == "9001"
    assert list(d.argv[-3:]) == ["--node-rank", "1", "--headless"]


def test_with_layout_replaces_only_the_sizes(tmp_path):
    inv, pb = loaded(tmp_path, PAIR, "tensor_parallel_size: 2\n")
    assert isinstance(backend_for(inv, pb), MpBackend)
    two = with_layout(pb, parse_layout("replicas2"))
    assert layout_of(two) == Layout(replicas=2) and two.model == pb.model and check_against_inventory(two, inv) == []


# ---------------------------------------------------------------- lifecycle on the fake cluster
def kill_routers_at_launch(fake) -> None:
    """Every router the fake cluster launches exits at once (as one that cannot start would)."""
    original = fake._launch

    def router_dies(node, req):
        reply = original(node, req)
        if req.role == "router":
            node.processes[req.record].alive = False
        return reply

    fake._launch = router_dies


def replicas_playbook(tmp_path, fake, ready_timeout_s: float = 30):
    path = tmp_path / "pb.yaml"
    path.write_text(f"model: {REPO / 'playbooks' / 'models' / 'tiny-llama'}\nserved_model_name: tiny\nreplicas: 2\n"
                    f"host: 127.0.0.1\nport: {fake.port}\nreplica_port: {fake.replica_port}\n"
                    f"ready_timeout_s: {ready_timeout_s}\nstop_grace_s: 1\n")
    return load_playbook(str(path))


def test_replicas_up_starts_servers_and_router_readiness_through_it_and_down_stops_all(inventory, fake, tmp_path):
    from sparkctl.ops.up import up

    playbook = replicas_playbook(tmp_path, fake)
    events = Events()
    result = up(inventory, playbook, events, ignore_checks=ALL_CHECKS, connect=fake.connect, environ={})
    assert result.outcome == "started"
    roles = sorted((n, proc.record.role) for n in fake.nodes for proc in fake.nodes[n].processes.values())
    assert roles == [("head", "router"), ("head", "vllm"), ("worker", "vllm")]
    assert any("replica 1 on worker" in line for line in events.lines)
    again = up(inventory, playbook, Events(), ignore_checks=ALL_CHECKS, connect=fake.connect, environ={})
    assert again.outcome == "already-up"  # the router is part of the plan the convergence check compares
    stopped = down(inventory, Events(), connect=fake.connect)
    assert stopped.clean and fake.running() == []


def test_replicas_are_ready_only_when_every_replica_serves_not_when_the_router_does(inventory, fake, tmp_path):
    """vllm-router answers as soon as one replica does: readiness asks each replica itself."""
    from sparkctl.ops.up import up

    fake.replica_after_polls[1] = 4  # the worker's replica still loads while the router already answers
    events = Events()
    result = up(inventory, replicas_playbook(tmp_path, fake), events, ignore_checks=ALL_CHECKS,
                connect=fake.connect, environ={})
    assert result.outcome == "started"
    assert fake.nodes["worker"].status_calls >= 4  # it waited for the worker's replica
    order = [i for i, line in enumerate(events.lines) if "completion ok" in line]
    replica_1 = next(i for i, line in enumerate(events.lines) if "replica 1 (" in line and "completion ok" in line)
    assert replica_1 < order[-1]  # every replica before the endpoint's own completion
    assert fake.replica_serving(0) and fake.replica_serving(1)
    assert down(inventory, Events(), connect=fake.connect).clean


def test_a_replica_that_never_serves_is_named_at_the_deadline_and_everything_stops(inventory, fake, tmp_path):
    from sparkctl.errors import DeadlineExceeded
    from sparkctl.ops.up import up

    fake.replica_after_polls[1] = 10**6
    with pytest.raises(DeadlineExceeded, match=rf"replica 1 at http://127.0.0.1:{fake.replica_port + 1} not serving yet"):
        up(inventory, replicas_playbook(tmp_path, fake, ready_timeout_s=3), Events(),
           ignore_checks=ALL_CHECKS, connect=fake.connect, environ={})
    assert fake.running() == []


def test_a_router_that_exits_during_start_up_is_named_and_everything_stops(inventory, fake, tmp_path):
    from sparkctl.ops.up import up
    from sparkctl.serve.readiness import NotReady

    fake.health_after_polls = 10**6
    kill_routers_at_launch(fake)
    with pytest.raises(NotReady, match="vllm-router exited during start-up"):
        up(inventory, replicas_playbook(tmp_path, fake), Events(), ignore_checks=ALL_CHECKS, connect=fake.connect,
           environ={})
    assert fake.running() == []


def test_preflight_checks_the_ports_each_layout_listens_on():
    from sparkctl.checks import ClusterSpec

    inv = load_inventory(str(REPO / "inventories" / "local.yaml"))
    ports = {name: {n.name: n.ports for n in ClusterSpec.from_config(inv, load_playbook(
        str(REPO / "playbooks" / f"{name}.yaml"))).nodes} for name in ("tiny-cpu-replicas", "tiny-cpu-dp")}
    assert ports["tiny-cpu-replicas"] == {"head": (8013, 29511, 29000, 8014), "worker": (8015,)}
    assert ports["tiny-cpu-dp"] == {"head": (8013, 29511, 29550), "worker": ()}


def test_dp_up_launches_the_api_server_and_a_headless_engine_and_down_stops_both(inventory, fake, tmp_path):
    from sparkctl.ops.up import up

    path = tmp_path / "pb.yaml"
    path.write_text(f"model: {REPO / 'playbooks' / 'models' / 'tiny-llama'}\nserved_model_name: tiny\n"
                    f"data_parallel_size: 2\nhost: 127.0.0.1\nport: {fake.port}\nready_timeout_s: 30\nstop_grace_s: 1\n")
    result = up(inventory, load_playbook(str(path)), Events(), ignore_checks=ALL_CHECKS, connect=fake.connect, environ={})
    assert result.outcome == "started"
    argv = {n: " ".join(p.record.argv) for n in fake.nodes for p in fake.nodes[n].processes.values()}
    assert "--data-parallel-size 2" in argv["head"] and "--headless" not in argv["head"]
    assert argv["worker"].endswith("--headless --data-parallel-start-rank 1")
    assert down(inventory, Events(), connect=fake.connect).clean and fake.running() == []
