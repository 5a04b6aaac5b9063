"""Playbook loading and the argv/env plan for the mp backend."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from sparkctl.backends.mp import plan_mp
from sparkctl.checks.fabric import interface_for
from sparkctl.errors import InputError
from sparkctl.inventory import load_inventory
from sparkctl.lifecycle.launch import plan_digest
from sparkctl.ops.up import endpoint_url, forwarded_secrets
from sparkctl.playbook import check_against_inventory, load_playbook
from tests.conftest import network_plans

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_playbook(write(tmp_path, text))
    return caught.value.details


PAIR = """\
cluster: pair
nodes:
  - {name: a, host: 10.0.0.10, fabric_ip: 192.168.100.10, env: {NCCL_DEBUG: WARN}}
  - {name: b, host: 10.0.0.11, fabric_ip: 192.168.100.11}
env:
  NCCL_DEBUG: INFO
"""

PLAYBOOK = """\
model: /models/llama
served_model_name: llama
tensor_parallel_size: 2
port: 8000
master_port: 29501
vllm_args: ["--max-model-len", "4096", "--gpu-memory-utilization=0.8"]
env:
  NCCL_DEBUG: TRACE
  VLLM_ENGINE_READY_TIMEOUT_S: "1800"
forward_env: [HF_TOKEN]
"""

IFACES = {
    "a": {"lo": ["127.0.0.1/8"], "enP7s7": ["10.0.0.10/24"], "enp1s0f1np1": ["192.168.100.10/24"]},
    "b": {"lo": ["127.0.0.1/8"], "enP7s7": ["10.0.0.11/24"], "enp1s0f1np1": ["192.168.100.11/24"]},
}


def test_shipped_demo_playbook_resolves_relative_paths():
    pb = load_playbook(str(REPO / "playbooks" / "tiny-cpu.yaml"))
    assert pb.model == str(REPO / "playbooks" / "models" / "tiny-llama")
    assert pb.vllm_command == (str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py"))
    assert pb.served_model_name == "tiny" and pb.world_size == 2
    inv = load_inventory(str(REPO / "inventories" / "local.yaml"))
    assert check_against_inventory(pb, inv) == []


def test_defaults(tmp_path):
    pb = load_playbook(write(tmp_path, "model: meta-llama/Llama-3.3-70B-Instruct\n"))
    assert pb.vllm_command == ("vllm",)
    assert pb.served_model_name == "meta-llama/Llama-3.3-70B-Instruct"  # an HF id is not a path
    assert (pb.backend, pb.port, pb.master_port, pb.host) == ("mp", 8000, 29501, "0.0.0.0")
    assert not pb.model_is_path


def test_python_invocation(tmp_path):
    pb = load_playbook(write(tmp_path, "model: /m\nvllm: {python: /opt/venv/bin/python}\n"))
    assert pb.vllm_command == ("/opt/venv/bin/python", "-m", "vllm.entrypoints.cli.main")
    assert pb.served_model_name == "m"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("served_model_name: x\n", ":1: model: missing required key 'model'"),
        ("model: m\nbackend: torchrun\n", "backend: backend 'torchrun' cannot serve: `vllm serve` does not support external_launcher"),
        ("model: m\nbackend: sglang\n", ":2: backend: must be one of 'mp', 'ray', got 'sglang'"),
        ("model: m\ntensor_parallel_size: 0\n", ":2: tensor_parallel_size: input should be greater than or equal to 1"),
        ("model: m\nport: 99999\n", ":2: port: input should be less than or equal to 65535"),
        ("model: m\nmaster_port: -1\n", ":2: master_port: input should be greater than or equal to 1"),
        ("model: m\nvllm_args: [--tensor-parallel-size, '4']\n", "vllm_args[0]: --tensor-parallel-size is set by sparkctl; use the playbook key tensor_parallel_size"),
        ("model: m\nvllm_args: ['--port=9000']\n", "vllm_args[0]: --port is set by sparkctl; use the playbook key port"),
        ("model: m\nvllm_args: ['--api-key', 'sk-123']\n", "vllm_args[0]: --api-key is set by sparkctl; use the playbook key forward_env: [VLLM_API_KEY]"),
        ("model: m\nvllm_args: --max-model-len 4096\n", ":2: vllm_args: expected a list, got '--max-model-len 4096'"),
        ("model: m\nvllm: {command: [vllm], python: /p}\n", ":2: vllm: set either 'command' or 'python', not both"),
        ("model: m\nvllm: {command: []}\n", "vllm.command: List should have at least 1 item"),
        ("model: m\nvlm: {}\n", ":2: vlm: unknown key 'vlm' (did you mean 'vllm'?)"),
        ("model: m\nready_timeout: 10\n", ":2: ready_timeout: unknown key 'ready_timeout' (did you mean 'ready_timeout_s'?)"),
        ("model: m\nready_timeout_s: 0\n", "ready_timeout_s: input should be greater than 0"),
        ("model: m\nforward_env: [HF_TOKEN]\nenv: {HF_TOKEN: abc}\n", "forward_env[0]: HF_TOKEN is also set in env"),
        ("model: m\nforward_env: ['bad name']\n", "forward_env[0]: invalid value 'bad name'"),
        ("model: m\nhost: 'a b'\n", "host: host must not contain whitespace"),
        ("[model, m]\n", ":1: the top level of a playbook must be a mapping of keys, found a list"),
    ],
)
def test_bad_playbook(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(expected in line for line in found), found


def test_world_size_must_match_nodes(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb = load_playbook(write(tmp_path, "model: /m\ntensor_parallel_size: 4\n"))
    (problem,) = check_against_inventory(pb, inv)
    assert "= 4, but" in problem and "2 node(s) x 1 GPU(s) = 2" in problem


def test_mp_plan_argv_and_env_per_node(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb = load_playbook(write(tmp_path, PLAYBOOK))
    plans = network_plans(inv, IFACES, pb)
    head, worker = plan_mp(inv, pb, plans)
    assert head.node == "a" and worker.node == "b"
    assert list(head.argv) == [
        "vllm", "serve", "/models/llama", "--served-model-name", "llama",
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1",
        "--distributed-executor-backend", "mp",
        "--nnodes", "2", "--master-addr", "192.168.100.10", "--master-port", "29501",
        "--max-model-len", "4096", "--gpu-memory-utilization=0.8",
        "--node-rank", "0", "--host", "0.0.0.0", "--port", "8000",
    ]
    assert list(worker.argv[-3:]) == ["--node-rank", "1", "--headless"]
    assert "--port" not in worker.argv and "--host" not in worker.argv
    # per-host values come from each host, not copied from the head
    assert head.env["VLLM_HOST_IP"] == "192.168.100.10" and worker.env["VLLM_HOST_IP"] == "192.168.100.11"
    assert worker.env["GLOO_SOCKET_IFNAME"] == worker.env["NCCL_SOCKET_IFNAME"] == "enp1s0f1np1"
    assert worker.env["MASTER_ADDR"] == "192.168.100.10"
    # precedence: playbook < inventory < node
    assert head.env["NCCL_DEBUG"] == "WARN" and worker.env["NCCL_DEBUG"] == "INFO"
    assert head.env["VLLM_ENGINE_READY_TIMEOUT_S"] == "1800"
    assert head.forward_env == ("HF_TOKEN",) and "HF_TOKEN" not in head.env
    assert head.listen_ports == (8000, 29501) and worker.listen_ports == ()
    # the remote command line is the argv quoted once
    assert shlex.split(shlex.join(head.argv)) == list(head.argv)


def test_argv_keeps_hostile_values_as_single_words(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb = load_playbook(write(tmp_path, "model: '/models/a b; rm -rf ~'\ntensor_parallel_size: 2\nvllm_args: ['--chat-template=$(id)']\n"))
    head, _ = plan_mp(inv, pb, network_plans(inv, IFACES, pb))
    line = shlex.join(head.argv)
    assert shlex.split(line)[2] == "/models/a b; rm -rf ~"
    assert "'--chat-template=$(id)'" in line


def test_single_node_has_no_multinode_flags(tmp_path):
    inv = load_inventory(write(tmp_path, "cluster: one\nnodes: [{name: a, connection: local}]\n", "inv.yaml"))
    pb = load_playbook(write(tmp_path, "model: /m\n"))
    (spec,) = plan_mp(inv, pb, network_plans(inv, {"a": {"lo": ["127.0.0.1/8"]}}, pb))
    assert "--nnodes" not in spec.argv and "--node-rank" not in spec.argv and "--headless" not in spec.argv
    assert spec.env["GLOO_SOCKET_IFNAME"] == "lo"


def test_inventory_fabric_interface_overrides_discovery(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR + "fabric: {interface: enP2p1s0f1np1}\n", "inv.yaml"))
    twins = {name: {**ifaces, "enP2p1s0f1np1": [f"192.168.101.{10 + i}/24"]}
             for i, (name, ifaces) in enumerate(IFACES.items())}
    plans = network_plans(inv, twins)
    assert plans["b"].interface == "enP2p1s0f1np1" and plans["b"].why["interface"] == "inventory fabric.interface"


def test_fabric_ip_not_on_node_is_an_error(tmp_path):
    from sparkctl.errors import OperationFailed

    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    wrong = {**IFACES, "b": {"lo": ["127.0.0.1/8"], "enP7s7": ["10.0.0.11/24"]}}
    with pytest.raises(OperationFailed) as caught:
        network_plans(inv, wrong)
    assert "b: no interface holds fabric_ip 192.168.100.11 (IPv4 on the node: enP7s7 10.0.0.11/24, lo 127.0.0.1/8)" in caught.value.message


def test_interface_for():
    ifaces = {"lo": ["127.0.0.1/8"], "eth0": ["10.1.2.3/24", "10.9.9.9/16"]}
    assert interface_for("10.9.9.9", ifaces) == "eth0"
    assert interface_for("127.0.0.5", ifaces) == "lo"
    assert interface_for("10.1.2.4", ifaces) is None


def test_plan_digest_changes_with_argv_or_env_but_not_secrets(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb1 = load_playbook(write(tmp_path, PLAYBOOK, "p1.yaml"))
    pb2 = load_playbook(write(tmp_path, PLAYBOOK.replace("4096", "8192"), "p2.yaml"))
    pb3 = load_playbook(write(tmp_path, PLAYBOOK.replace("\"1800\"", "\"900\""), "p3.yaml"))
    plans = network_plans(inv, IFACES)
    d1, d2, d3 = (plan_digest(plan_mp(inv, pb, plans)[0]) for pb in (pb1, pb2, pb3))
    assert d1 == plan_digest(plan_mp(inv, pb1, plans)[0])
    assert len({d1, d2, d3}) == 3


def test_forwarded_secrets_come_from_the_environment(tmp_path):
    pb = load_playbook(write(tmp_path, PLAYBOOK))
    assert forwarded_secrets(pb, {"HF_TOKEN": "hf_abc"}) == {"HF_TOKEN": "hf_abc"}
    with pytest.raises(InputError) as caught:
        forwarded_secrets(pb, {})
    assert "HF_TOKEN" in caught.value.message and "hf_abc" not in caught.value.message


def test_endpoint_url(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    assert endpoint_url(inv, load_playbook(write(tmp_path, "model: m\n"))) == "http://10.0.0.10:8000"
    assert endpoint_url(inv, load_playbook(write(tmp_path, "model: m\nhost: 127.0.0.1\nport: 9\n"))) == "http://127.0.0.1:9"
