"""parse_nccl_log on every fixture in tests/fixtures/nccl-debug, checked against what a
person reading the log would conclude, plus robustness properties (noise, order,
line endings, wrappers, truncation)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sparkctl.findings import level
from sparkctl.probes.nccl_log import MTU_BYTES, parse_nccl_log

FIXTURES = Path(__file__).parent / "fixtures" / "nccl-debug"
TWINS = ["rocep1s0f1", "roceP2p1s0f1"]


def read(name: str) -> str:
    # bytes -> str keeps CRLF as written (read_text would translate it away)
    return (FIXTURES / name).read_bytes().decode()


# name -> (transport, devices, net_plugin, finding codes in report order)
EXPECTED: dict[str, tuple[str, list[str], str | None, list[str]]] = {
    "two-sparks-ib-gid0-mtu1024.log": ("ib", TWINS, "IB", ["link-local-gid", "low-mtu", "gdr-expected-off"]),
    "dgx-a100-forced-socket.log": ("socket", ["enp225s0f1"], "Socket", ["socket-fallback"]),
    "ec2-socket-no-ib-device.log": ("socket", ["ens3"], None, ["socket-fallback"]),
    "two-sparks-2.30.7-ib-confirm.log": ("ib", [], None, ["gdr-expected-off"]),
    "nccl952-socket-channel-line.log": ("socket", [], None, ["socket-fallback"]),
    "nccl426-ib-completion-error12.log": ("unknown", [], None, ["ib-error", "no-transport-evidence"]),
    "nccl1814-ib-completion-from-peer.log": ("unknown", [], None, ["ib-error", "no-transport-evidence"]),
    "nccl2013-ibv-modify-qp-timeout.log": ("unknown", [], None, ["ib-error", "no-transport-evidence"]),
    "nccl-tests185-ibv-modify-qp-unreachable.log": ("unknown", [], None, ["ib-error", "no-transport-evidence"]),
    "spark-cable2-memlock-fragments.log": ("unknown", [], None, ["ib-error", "no-transport-evidence"]),
    "spark-vllm-ray-socket-fallback.log": ("socket", ["enp1s0f1np1"], "Socket", ["socket-fallback"]),
    "spark-single-hca-mtu9000.log": ("ib", ["rocep1s0f1"], "IB", ["single-hca", "gdr-expected-off"]),
    "spark-link-local-gid-mtu9000.log": ("ib", TWINS, "IB", ["link-local-gid", "gdr-expected-off"]),
    "spark-mtu1024-both-twins-crlf.log": ("ib", TWINS, "IB", ["low-mtu", "gdr-expected-off"]),
    "spark-mtu-mismatch-ib-completion-error.log": (
        "ib", TWINS, "IB", ["ib-error", "mtu-mismatch", "low-mtu", "nccl-warn"]),
    "spark-interleaved-2ranks-omitted.log": ("ib", TWINS, "IB", ["gdr-expected-off"]),
    "spark-ibext-plugin.log": ("ib", TWINS, "IBext_v10", ["gdr-expected-off"]),
    "spark-ngc-ofi-plugin-socket-fallback.log": (
        "socket", ["enp1s0f1np1"], "Socket", ["socket-fallback", "net-plugin-fallback"]),
    "spark-version-skew-slow-init-pinned-gid.log": (
        "ib", TWINS, "IB", ["nccl-version-mismatch", "slow-init", "gid-index-pinned", "gdr-expected-off"]),
    "single-host-p2p-cumem.log": ("p2p", ["eno1"], "Socket", ["intra-node-only"]),
    # captured by sparkctl's probe on an H100, world size 1: no connection, so no transport to name
    "h100-single-rank-2.28.9.log": ("unknown", ["lo"], "Socket", ["net-plugin-fallback", "no-transport-evidence"]),
    "single-host-shm-p2p-disabled.log": ("shm", ["enp5s0"], "Socket", ["intra-node-only"]),
    "single-host-nvls-8gpu.log": (
        "nvls", ["mlx5_0", "mlx5_3", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_9", "mlx5_10", "mlx5_11"], "IB",
        ["intra-node-only"]),
}


def test_every_fixture_has_expectations():
    logs = sorted(p.name for p in FIXTURES.glob("*.log"))
    assert logs == sorted(EXPECTED)
    assert (FIXTURES / "SOURCES.md").is_file()
    sources = (FIXTURES / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in logs)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_conclusions(name: str):
    transport, devices, plugin, codes = EXPECTED[name]
    report = parse_nccl_log(read(name))
    assert report.transport == transport
    assert report.devices == devices
    assert report.net_plugin == plugin
    assert report.codes() == codes
    d = report.to_dict()
    json.dumps(d)  # JSON-safe
    assert {f["level"] for f in d["findings"]} <= {"error", "warning", "info"}
    for f in d["findings"]:
        assert set(f) >= {"code", "level", "message"} and f["message"].endswith(".")
    if transport != "unknown":
        assert transport in d["transports_seen"]


def test_real_two_spark_log_in_detail():
    r = parse_nccl_log(read("two-sparks-ib-gid0-mtu1024.log"))
    assert (r.nccl_version, r.cuda_driver_version) == ("2.28.9+cuda13.0", 13000)
    assert r.hosts == ["spark-fb97", "spark-4440"]
    assert (r.ranks, r.nranks, r.nnodes, r.local_ranks) == ([0, 1], 2, 2, 1)
    assert r.oob_interface == "enp1s0f1np1:192.168.100.16"
    assert r.link_layer == "RoCE" and r.network == "ib"
    assert r.channels == {"NET/IB/0": 1, "NET/IB/1": 1}
    assert r.nvls_channels == 0
    assert r.gdr is False
    assert r.init_time_s == 0.25
    assert r.truncated is True  # the source cut lines out
    assert r.env == {"NCCL_SOCKET_IFNAME": "enp1s0f1np1"}
    assert [q.to_dict() for q in r.qps] == [
        {"host": "spark-4440", "dev": 0, "ibdev": 0, "port": 1, "qpn": 576, "mtu_code": 3, "mtu_bytes": 1024,
         "gid_index": 3, "gid_raw": "0/1064A8C0FFFF0000", "gid": "::ffff:192.168.100.16", "link_local": False,
         "device": "rocep1s0f1"},
        {"host": "spark-4440", "dev": 1, "ibdev": 1, "port": 1, "qpn": 704, "mtu_code": 3, "mtu_bytes": 1024,
         "gid_index": 0, "gid_raw": "80FE/46442FFEFF47BB4E", "gid": "fe80::4ebb:47ff:fe2f:4446", "link_local": True,
         "device": "roceP2p1s0f1"},
    ]
    by_code = {f.code: f for f in r.findings}
    ll = by_code["link-local-gid"]
    assert level(ll.severity) == "error"
    assert "roceP2p1s0f1" in ll.message and "enP2p1s0f1np1" in ll.message and "rocep1s0f1" not in ll.message
    assert ll.evidence is not None and "GID 0 (80FE/" in ll.evidence
    low = by_code["low-mtu"]
    assert level(low.severity) == "warning" and "1024" in low.message and "9000" in low.message
    # the harmless dlvsym INFO lines and missing plugins are not errors
    assert "ib-error" not in by_code and "net-plugin-fallback" not in by_code


def test_socket_fallback_messages_name_cause_and_fix():
    ec2 = parse_nccl_log(read("ec2-socket-no-ib-device.log"))
    (f,) = ec2.findings
    assert level(f.severity) == "error" and "No device found" in f.message and "/dev/infiniband" in f.message
    assert ec2.hosts == ["ip-172-31-12-21", "ip-172-31-12-210"]
    a100 = parse_nccl_log(read("dgx-a100-forced-socket.log"))
    assert a100.nccl_version == "2.11.4+cuda11.4"  # printed without a host prefix
    assert a100.bootstrap_interface == "enp225s0f1:10.10.10.2"
    assert a100.findings[0].evidence == "Using network Socket"


def test_vllm_ray_log_strips_colour_and_wrappers():
    text = read("spark-vllm-ray-socket-fallback.log")
    assert "\x1b[36m" in text
    r = parse_nccl_log(text)
    assert r.hosts == ["spark-a1", "spark-b2"]
    assert r.channels == {"NET/Socket/0": 6}  # "[repeated 2x across cluster]" stripped, not a new path
    assert (r.nnodes, r.ranks) == (2, [0, 1])
    assert r.findings[0].evidence == "Channel 00/0 : 1[0] -> 0[0] [receive] via NET/Socket/0"
    repeated = parse_nccl_log(
        "(RayWorkerWrapper pid=7, ip=10.0.0.2) h2:7:7 [0] NCCL INFO Using network IB [repeated 3x across cluster]\n"
        "(RayWorkerWrapper pid=7, ip=10.0.0.2) h2:7:7 [0] NCCL INFO NCCL_IB_HCA set by environment to "
        "=rocep1s0f1,roceP2p1s0f1 [repeated 2x across cluster]\n")
    assert repeated.net_plugin == "IB" and repeated.env["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"


def test_single_hca_suggests_the_twin():
    r = parse_nccl_log(read("spark-single-hca-mtu9000.log"))
    f = r.findings[0]
    assert f.code == "single-hca" and level(f.severity) == "warning"
    assert "NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1" in f.message
    assert r.env["NCCL_IB_HCA"] == "rocep1s0f1"
    assert {q.mtu_bytes for q in r.qps} == {4096}


def test_link_local_on_both_nodes_names_device_once():
    r = parse_nccl_log(read("spark-link-local-gid-mtu9000.log"))
    bad = [q for q in r.qps if q.link_local]
    assert [(q.host, q.device, q.gid_index) for q in bad] == [
        ("spark-a1", "roceP2p1s0f1", 0), ("spark-b2", "roceP2p1s0f1", 0)]
    assert bad[0].gid == "fe80::5e25:73ff:fe41:9a02"
    assert r.findings[0].message.count("roceP2p1s0f1") == 1


def test_crlf_fixture_really_is_crlf():
    text = read("spark-mtu1024-both-twins-crlf.log")
    assert "\r\n" in text
    r = parse_nccl_log(text)
    assert {q.mtu_code for q in r.qps} == {3} and len(r.qps) == 4
    assert all("\r" not in q.line for q in r.qps)


def test_mtu_mismatch_and_completion_error():
    r = parse_nccl_log(read("spark-mtu-mismatch-ib-completion-error.log"))
    by_code = {f.code: f for f in r.findings}
    assert "status=12" in by_code["ib-error"].message and "(2 line(s)" in by_code["ib-error"].message
    assert "spark-a1: 4096" in by_code["mtu-mismatch"].message and "spark-b2: 1024" in by_code["mtu-mismatch"].message
    assert by_code["nccl-warn"].evidence.startswith("[Proxy Thread]")
    # torch's "NCCL version 2.28.9" is the same build, not a second version
    assert r.nccl_versions == ["2.28.9+cuda13.0"]
    assert "nccl-version-mismatch" not in by_code


def test_glued_and_interleaved_ranks():
    r = parse_nccl_log(read("spark-interleaved-2ranks-omitted.log"))
    assert r.hosts == ["spark-a1", "spark-b2"]  # not "IBspark-a1" from the glued line
    assert r.ranks == [0, 1] and r.truncated
    assert r.channels == {"NET/IB/0": 2, "NET/IB/1": 2}
    assert {(q.host, q.device, q.gid) for q in r.qps} == {
        ("spark-a1", "rocep1s0f1", "::ffff:192.168.100.10"), ("spark-a1", "roceP2p1s0f1", "::ffff:192.168.101.10"),
        ("spark-b2", "rocep1s0f1", "::ffff:192.168.100.11"), ("spark-b2", "roceP2p1s0f1", "::ffff:192.168.101.11")}
    assert [level(f.severity) for f in r.findings] == ["info"]


def test_single_host_logs_are_not_socket_fallback():
    for name, kind in (("single-host-p2p-cumem.log", "p2p"), ("single-host-shm-p2p-disabled.log", "shm"),
                       ("single-host-nvls-8gpu.log", "nvls")):
        r = parse_nccl_log(read(name))
        assert r.transport == kind
        assert not any(level(f.severity) in ("error", "warning") for f in r.findings), name
    p2p = parse_nccl_log(read("single-host-p2p-cumem.log"))
    assert p2p.network == "socket" and p2p.nnodes == 1 and p2p.channels == {"P2P/CUMEM": 4}
    nvls = parse_nccl_log(read("single-host-nvls-8gpu.log"))
    assert nvls.nvls_channels == 16 and nvls.network == "ib" and nvls.gdr is True
    assert set(nvls.transports_seen) == {"nvls", "p2p"}


def test_inter_node_wins_over_intra_node():
    text = read("single-host-p2p-cumem.log") + (
        "gpu-node08:9100:9150 [0] NCCL INFO Channel 00/0 : 2[0] -> 0[0] [receive] via NET/Socket/0\n")
    r = parse_nccl_log(text)
    assert r.transport == "socket" and r.transports_seen == ["p2p", "socket"]
    assert r.codes()[0] == "socket-fallback"
    # multi-node evidence without a NET channel line also overrides intra-node paths
    multi = read("single-host-p2p-cumem.log").replace("nNodes 1", "nNodes 2")
    assert parse_nccl_log(multi).transport == "socket"


def test_plugin_failure_and_version_skew():
    ofi = parse_nccl_log(read("spark-ngc-ofi-plugin-socket-fallback.log"))
    plug = next(f for f in ofi.findings if f.code == "net-plugin-fallback")
    assert level(plug.severity) == "warning" and "aws-ofi-nccl initialization failed" in plug.message
    assert "NCCL_NET_PLUGIN=none" in plug.message
    skew = parse_nccl_log(read("spark-version-skew-slow-init-pinned-gid.log"))
    assert skew.nccl_versions == ["2.28.9+cuda13.0", "2.28.3+cuda13.0"]
    assert skew.init_time_s == 118.42
    assert skew.env["NCCL_IB_GID_INDEX"] == "3"
    ibext = parse_nccl_log(read("spark-ibext-plugin.log"))
    assert ibext.channels == {"NET/IBext_v10/0": 2, "NET/IBext_v10/1": 2} and ibext.network == "ib"


def test_ib_error_fixes_depend_on_the_error():
    memlock = parse_nccl_log(read("spark-cable2-memlock-fragments.log")).findings[0]
    assert "memlock" in memlock.message and memlock.evidence == "ibv_reg_mr_iova2 failed with error Cannot allocate memory"
    timeout = parse_nccl_log(read("nccl426-ib-completion-error12.log")).findings[0]
    assert "retry timeout" in timeout.message
    qp = parse_nccl_log(read("nccl-tests185-ibv-modify-qp-unreachable.log")).findings[0]
    assert qp.evidence == "Call to ibv_modify_qp failed with error Network is unreachable"


# ------------------------------------------------------------------ properties

NOISE = [
    "INFO 11-23 16:40:02 [__init__.py:216] Automatically detected platform cuda.",
    "Authorization required, but no authorization protocol specified",
    "",
    "   ",
    "[... 3 lines omitted ...]",
    "(RayWorkerWrapper pid=4242, ip=192.168.100.11) INFO 11-23 16:41:00 [worker.py:1] ready",
    "WARNING 11-23 16:40:33 [custom_all_reduce.py:92] Custom allreduce is disabled.",
    "\x1b[32mINFO\x1b[0m loading weights",
    "dlvsym failed on mlx5dv_reg_dmabuf_mr",
    "Traceback (most recent call last):",
]

ALL = sorted(EXPECTED)


def _with_noise(text: str, seed: int) -> str:
    rng = random.Random(seed)
    lines = text.splitlines()
    for _ in range(12):
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(NOISE))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", ALL)
def test_noise_lines_do_not_change_the_result(name: str):
    base = parse_nccl_log(read(name)).to_dict()
    for seed in range(5):
        noisy = parse_nccl_log(_with_noise(read(name), seed)).to_dict()
        noisy["truncated"] = base["truncated"]  # an inserted "[... omitted ...]" marker is the one honest change
        assert noisy == base


@pytest.mark.parametrize("name", ["two-sparks-ib-gid0-mtu1024.log", "spark-interleaved-2ranks-omitted.log",
                                  "spark-vllm-ray-socket-fallback.log", "single-host-p2p-cumem.log",
                                  "spark-mtu-mismatch-ib-completion-error.log"])
def test_rank_order_does_not_change_the_verdict(name: str):
    base = parse_nccl_log(read(name))
    for seed in range(5):
        lines = read(name).splitlines()
        random.Random(seed).shuffle(lines)
        r = parse_nccl_log("\n".join(lines))
        assert r.transport == base.transport
        assert sorted(r.devices) == sorted(base.devices)
        assert sorted(r.codes()) == sorted(base.codes())
        assert sorted(map(str, (q.to_dict() for q in r.qps))) == sorted(map(str, (q.to_dict() for q in base.qps)))


@pytest.mark.parametrize("name", ALL)
def test_line_endings_colour_and_wrappers_do_not_change_the_result(name: str):
    text = read(name).replace("\r\n", "\n")
    base = parse_nccl_log(text).to_dict()
    lines = text.splitlines()
    assert parse_nccl_log("\r\n".join(lines)).to_dict() == base
    assert parse_nccl_log("\n".join(f"\x1b[36m{ln}\x1b[0m" for ln in lines)).to_dict() == base
    assert parse_nccl_log("\n".join(f"(Worker_TP1 pid=99) {ln}" for ln in lines)).to_dict() == base


@pytest.mark.parametrize("name", ALL)
def test_truncated_last_line_does_not_crash(name: str):
    text = read(name).rstrip("\r\n")
    last = text.splitlines()[-1]
    for cut in range(0, len(last), 7):
        parse_nccl_log(text[: len(text) - len(last) + cut]).to_dict()


def test_empty_and_garbage_input():
    for text in ("", "\n\n", "hello world\n", "\x00\x01 NCCL\n"):
        r = parse_nccl_log(text)
        assert r.transport == "unknown" and r.codes() == ["no-transport-evidence"]


def test_qp_line_variants():
    old = "h:1:2 [0] NCCL INFO NET/IB: Dev 2 Port 1 qpn 77 mtu 4 GID 3 (0/A64A8C0FFFF0000)"
    merged = "h:1:2 [0] NCCL INFO NET/IB: NCCL MergedDev 0 IbDev 1 Port 1 qpn 78 mtu 5 GID 1 (80fe/29a41fefF73255e)"
    r = parse_nccl_log(old + "\n" + merged)
    q_old, q_merged = r.qps
    assert (q_old.dev, q_old.ibdev, q_old.mtu_bytes, q_old.gid) == (2, 2, 2048, "::ffff:192.168.100.10")
    assert (q_merged.ibdev, q_merged.link_local, q_merged.gid_index) == (1, True, 1)
    assert "link-local-gid" in r.codes() and "low-mtu" in r.codes()
    assert MTU_BYTES == {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}
