"""sparkctl init's pure parts: the fabric fix (subnets, netplan, ip commands),
host-key consent, the written inventory, and the playbook's sizing on GB10 numbers."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml

from sparkctl.errors import ConnectionFailed, InputError, OperationFailed
from sparkctl.init.discover import Discovery, NodeView, Port, Target
from sparkctl.init.fabric_fix import fix_text, ip_commands, netplan_yaml, plan_fabric
from sparkctl.init.hostkeys import HostKey, KeyState, settle
from sparkctl.init.sizing import GIB, ModelSize, estimate_layout, model_size
from sparkctl.init.write_inventory import Provenance, render_inventory, write_inventory
from sparkctl.inventory import load_inventory
from tests.conftest import REPO, sparkctl

GB10_MEMORY = 125513944 * 1024  # MemTotal of a GB10 (spark-networking.md 4.2)
MGMT = (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("172.17.0.0/16"))


def view(host, twins, mgmt=MGMT):
    return NodeView(host=host, hostname=None, gpus=1, gpu_names=("NVIDIA GB10",), memory_total=GB10_MEMORY,
                    mgmt_interface="enP7s7", mgmt_networks=mgmt, twins=tuple(twins), twins_from="RDMA devices in sysfs")


def twin(netdev, *ipv4, mtu=9000, cage="p1", up=True):
    return Port(netdev, "roce" + netdev[2:], cage, True, tuple(ipv4), mtu, up)


def pair(a, b, mgmt=MGMT):
    return Discovery((view("192.168.1.163", a, mgmt), view("192.168.1.164", b, mgmt)), ("spark-a", "spark-b"), "hostname")


def test_a_configured_pair_needs_nothing():
    plan = plan_fabric(pair([twin("enp1s0f1np1", "192.168.100.10/24"), twin("enP2p1s0f1np1", "192.168.101.10/24")],
                            [twin("enp1s0f1np1", "192.168.100.11/24"), twin("enP2p1s0f1np1", "192.168.101.11/24")]))
    assert not plan.needed and [n.fabric_ip for n in plan.nodes] == ["192.168.100.10", "192.168.100.11"]
    assert all(why.startswith("already") for _, why in plan.subnets)


def test_twins_without_ipv4_get_two_subnets_mtu_and_commands_on_fabric_interfaces_only():
    plan = plan_fabric(pair([twin("enp1s0f1np1", mtu=1500), twin("enP2p1s0f1np1", mtu=1500)],
                            [twin("enp1s0f1np1", mtu=1500), twin("enP2p1s0f1np1", mtu=1500)]))
    assert plan.needed and [str(s) for s, _ in plan.subnets] == ["192.168.100.0/24", "192.168.101.0/24"]
    b = plan.nodes[1]
    assert [t.target for t in b.twins] == ["192.168.100.11/24", "192.168.101.11/24"]
    commands = ip_commands(b)
    assert ["ip", "link", "set", "dev", "enp1s0f1np1", "mtu", "9000"] in [c for c, _ in commands]
    assert ["ip", "addr", "add", "192.168.101.11/24", "dev", "enP2p1s0f1np1"] in [c for c, _ in commands]
    assert all(c[c.index("dev") + 1] in ("enp1s0f1np1", "enP2p1s0f1np1") for c, _ in commands)
    assert all(u[u.index("dev") + 1] in ("enp1s0f1np1", "enP2p1s0f1np1") for _, u in commands)
    netplan = yaml.safe_load(netplan_yaml(b))["network"]["ethernets"]
    assert set(netplan) == {"enp1s0f1np1", "enP2p1s0f1np1"}
    assert netplan["enP2p1s0f1np1"] == {"dhcp4": False, "dhcp6": False, "link-local": [], "mtu": 9000,
                                        "addresses": ["192.168.101.11/24"]}
    text = fix_text(plan, "/etc/netplan")
    assert "enp1s0f1np1 has no IPv4 address" in text and "sudo ip addr add 192.168.100.10/24 dev enp1s0f1np1" in text


def test_twins_on_one_subnet_are_split_and_networks_in_use_are_avoided():
    mgmt = MGMT + (ipaddress.ip_network("192.168.100.0/24"),)  # the management LAN happens to use .100
    plan = plan_fabric(pair([twin("enp1s0f1np1", "10.0.0.1/16"), twin("enP2p1s0f1np1", "10.0.0.2/16")],
                            [twin("enp1s0f1np1", "10.0.0.3/16"), twin("enP2p1s0f1np1", "10.0.0.4/16")], mgmt))
    assert [str(s) for s, _ in plan.subnets] == ["192.168.101.0/24", "192.168.102.0/24"]
    a = plan.nodes[0]
    assert a.twins[0].remove == ("10.0.0.1/16",) and a.twins[0].add
    assert any("twins share one subnet" in p for p in plan.problems)


def test_different_cages_and_no_cable_are_refused_with_a_hint():
    with pytest.raises(OperationFailed, match="different QSFP cages"):
        plan_fabric(pair([twin("enp1s0f1np1", "192.168.100.10/24")], [twin("enp1s0f0np0", "192.168.100.11/24", cage="p0")]))
    with pytest.raises(OperationFailed, match="no cabled ConnectX-7 port") as err:
        plan_fabric(pair([twin("enp1s0f1np1")], []))
    assert "reboot" in err.value.hint


def key(state, host="192.168.1.163"):
    return HostKey(host, 22, "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", state)


def test_host_keys_changed_refused_unknown_needs_consent(tmp_path):
    known = str(tmp_path / "known_hosts")
    with pytest.raises(ConnectionFailed, match="host key changed"):
        settle([key(KeyState.CHANGED)], known, accept_new=True, ask=lambda k: True)
    with pytest.raises(ConnectionFailed, match="not known") as err:
        settle([key(KeyState.UNKNOWN)], known, accept_new=False, ask=None)
    assert err.value.details[0].startswith("192.168.1.163: ssh-ed25519 SHA256:")
    asked = []
    settle([key(KeyState.UNKNOWN), key(KeyState.KNOWN, "192.168.1.164")], known, accept_new=False,
           ask=lambda k: asked.append(k.host) or True)
    assert asked == ["192.168.1.163"]
    assert (tmp_path / "known_hosts").read_text() == f"192.168.1.163 ssh-ed25519 {key(KeyState.UNKNOWN).key_base64}\n"


def test_the_written_inventory_loads_and_says_where_values_came_from(tmp_path):
    discovery = pair([twin("enp1s0f1np1", "192.168.100.10/24"), twin("enP2p1s0f1np1", "192.168.101.10/24")],
                     [twin("enp1s0f1np1", "192.168.100.11/24"), twin("enP2p1s0f1np1", "192.168.101.11/24")])
    target = Target(("192.168.1.163", "192.168.1.164"), "192.168.1.164", "nvidia", 22, "/home/me/.ssh/id ed25519",
                    str(tmp_path / "kh"), "my-pair")
    text = render_inventory(target, discovery, plan_fabric(discovery), Provenance("sparkctl init", "now", "verified", "ok"))
    path = write_inventory(str(tmp_path / "inv.yaml"), text, force=False)
    inventory = load_inventory(path)
    assert inventory.head.name == "spark-b" and "role: head            # --head" in text
    assert [n.fabric_ip for n in inventory.nodes] == ["192.168.100.10", "192.168.100.11"]
    assert inventory.ssh.identity_file == "/home/me/.ssh/id ed25519" and inventory.fabric.mtu == 9000
    with pytest.raises(InputError, match="not overwritten"):
        write_inventory(path, "cluster: other\n", force=False)


def model(weights_gib, heads=64, kv=8, layers=80, head_dim=128, positions=131072):
    return ModelSize("/models/m", int(weights_gib * GIB), "test", layers, heads, kv, head_dim, positions, 2.0)


def test_a_70b_bf16_model_takes_tp2_on_a_spark_pair_and_leaves_memory_to_the_os():
    layout = estimate_layout(model(131.5), nodes=2, gpus_per_node=1, node_memory_bytes=GB10_MEMORY)
    assert (layout.tensor_parallel_size, layout.pipeline_parallel_size) == (2, 1)
    assert layout.gpu_memory_utilization == 0.88 and layout.fits
    # KV: 0.88 x 119.7 GiB - 65.75 GiB weights - 3 GiB = ~36.6 GiB; 160 KiB per token per GPU -> ~240k tokens / 4
    assert 32768 <= layout.max_model_len <= 65536 and layout.max_model_len % 1024 == 0
    assert "64 attention heads / 2" in layout.why["tensor_parallel_size"]


def test_too_big_does_not_fit_and_odd_heads_use_pipeline_parallelism():
    assert not estimate_layout(model(131.5), nodes=1, gpus_per_node=1, node_memory_bytes=GB10_MEMORY).fits
    layout = estimate_layout(model(20, heads=6, kv=6), nodes=4, gpus_per_node=1, node_memory_bytes=GB10_MEMORY)
    assert (layout.tensor_parallel_size, layout.pipeline_parallel_size) == (2, 2)


def test_model_size_from_config_when_there_are_no_weight_files(tmp_path):
    config = {"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672, "vocab_size": 128256,
              "num_attention_heads": 64, "num_key_value_heads": 8, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    size = model_size(str(tmp_path))
    assert 65e9 < size.weights_bytes / 2 < 75e9 and "parameters x 2 bytes" in size.weights_from  # a 70B model


def test_init_playbook_writes_a_playbook_that_validates(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text((REPO / "playbooks" / "models" / "tiny-llama" / "config.json").read_text())
    with open(folder / "model.safetensors", "wb") as handle:
        handle.truncate(300 * 2**20)  # sparse: 300 MiB of "weights"
    out = tmp_path / "pb.yaml"
    inventory = str(REPO / "inventories" / "local.yaml")
    done = sparkctl("init", "--playbook", str(folder), "-i", inventory, "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tensor_parallel_size"] == 2 and result["max_model_len"] == 1024  # capped by the model
    assert sparkctl("validate", "-i", inventory, "-p", str(out)).returncode == 0
    text = out.read_text()
    assert "# 4 attention heads / 2 = 2 per GPU" in text and "left to the OS" in text
    again = sparkctl("init", "--playbook", str(folder), "-i", inventory, "-o", str(out))
    assert again.returncode == 2 and "not overwritten" in again.stderr
    missing = sparkctl("init", "--playbook", str(tmp_path / "nope"), "-i", inventory, "-o", str(tmp_path / "x.yaml"))
    assert missing.returncode == 2 and "no such model directory" in missing.stderr


def test_init_bad_flags_are_input_errors():
    assert sparkctl("init", "--hosts", "only-one").returncode == 2
    assert sparkctl("init", "--hosts", "a,b", "--head", "c").returncode == 2
    assert sparkctl("init", "--hosts", "a;b,c").returncode == 2
    assert sparkctl("init").returncode == 2
