"""#13's fault matrix on the virtual cluster, over real SSH: Ctrl-C and SIGTERM
during `nccl-probe` and `run`, a node lost during `up`, and the controller's
SSH connection dropping mid-command. In each, the command says what happened
(naming the node, its documented exit code, no traceback) and nothing it
started is left running on any node."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sparkctl.agent import node_agent
from sparkctl.agent.client import bootstrap_program
from sparkctl.inventory import load_inventory
from sparkctl.lifecycle.spec import log_path
from tests.conftest import REPO, sparkctl
from tests.test_probe_cluster import PYTHON, leftovers
from tests.test_run_offline import demo_playbook

pytestmark = [pytest.mark.root]


def _default_sigint() -> None:
    # A background job of a non-interactive shell (CI) starts with SIGINT ignored,
    # and Python then never raises KeyboardInterrupt; a terminal's Ctrl-C is SIG_DFL.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sparkctl(*args: str) -> subprocess.Popen:
    """The real CLI in the background, as a user's terminal would run it."""
    return subprocess.Popen([sys.executable, "-m", "sparkctl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, preexec_fn=_default_sigint)


def wait_for(what: str, found, timeout_s: float, proc: subprocess.Popen | None = None):
    """Poll found() until it returns something truthy; fail naming what never came
    (with the command's output when it ended first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"{what}: the command ended first (exit {proc.returncode}):\n{out}\n{err}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not seen within {timeout_s:.0f}s")


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_clean_error(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


def running(cluster, role: str) -> list[dict]:
    """The role's processes of this cluster on every node, by sparkctl's own tag check."""
    return [p for node in cluster.nodes for p in node_agent.tagged_processes(f"{cluster.name}/{node.name}/{role}/")]


def cpu_shm() -> list[str]:
    """vLLM's CPU tensor-parallel buffers in /dev/shm (the nodes share this host's)."""
    return sorted(p.name for p in Path("/dev/shm").glob("*cpushm*"))


# --------------------------------------------------------------------------- the connection drops


@pytest.mark.timeout(120)
def test_dropped_connection_during_exec_is_reported_and_leaves_nothing(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    proc = start_sparkctl("exec", "-i", inv, "--", "sleep", "30")
    for node in cluster.nodes:
        wait_for(f"sleep 30 on {node.name}",
                 lambda node=node: any("sleep 30" in c for c in cluster.processes_besides_sshd(node, settle_s=0)), 30, proc)
    started = time.monotonic()
    for node in cluster.nodes:
        assert cluster.drop_ssh_connections(node)
    out, err = finish(proc, 60)
    assert time.monotonic() - started < 10  # reported at once, not when the command would have ended
    assert proc.returncode == 3, err
    for node in cluster.nodes:
        assert f"{node.name}: connection lost: {node.name}: ssh root@{node.mgmt_ip}:22: the connection was lost while a command ran" in out, out
    assert_clean_error(err)
    # the commands did not outlive their controller's connection (sleep 30 would still run)
    for node in cluster.nodes:
        assert cluster.processes_besides_sshd(node, settle_s=5) == [], node.name
    assert time.monotonic() - started < 20


# --------------------------------------------------------------------------- Ctrl-C and SIGTERM

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])


@pytest.mark.vllm  # torch lives in the vLLM venv
@pytest.mark.timeout(180)
@SIGNALS
def test_interrupt_during_nccl_probe_stops_every_rank(make_vcluster, tmp_path, sig):
    cluster = make_vcluster(2)
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    # a sweep far longer than the test: only the signal ends it
    proc = start_sparkctl("nccl-probe", "-i", inv, "--python", PYTHON, "--sizes", "8,1M", "--modes", "eager",
                          "--time-budget", "60", "--min-iters", "10", "--max-iters", "100000000")

    def ranks_sweeping() -> bool:
        ranks = [p for p in running(cluster, "probe")
                 if "allreduce_worker.py" in p["cmdline"] and "torch.distributed.run" not in p["cmdline"]]
        return len({p["tag"].split("/")[1] for p in ranks}) == 2 and min(p["age_s"] for p in ranks) >= 2

    wait_for("a probe rank on each node", ranks_sweeping, 90, proc)
    proc.send_signal(sig)
    out, err = finish(proc)
    assert proc.returncode == 130, err
    assert "interrupted; the probe has been stopped on every node" in err
    assert_clean_error(err)
    assert running(cluster, "") == []
    assert leftovers(cluster) == {}


@pytest.mark.vllm
@pytest.mark.timeout(400)
@SIGNALS
def test_interrupt_during_run_stops_every_rank(make_vcluster, tmp_path, sig):
    assert cpu_shm() == [], "vLLM CPU buffers of an earlier run are left: this run could not start"
    cluster = make_vcluster(2)
    inv = cluster.write_inventory(tmp_path / "inv.yaml")
    worker_log = Path(log_path(load_inventory(str(inv)).node("node1"), cluster.name, "job")).expanduser()
    # far more batches than the test waits for: only the signal ends the job
    proc = start_sparkctl("run", "-i", str(inv), "-p", demo_playbook(tmp_path), "throughput", "--batch-sizes", "1",
                          "--repeats", "1000", "--max-tokens", "64")
    # interrupt once vLLM runs inside the group (its workers renamed, the model loaded)
    wait_for("the worker rank's LLM ready", lambda: worker_log.exists() and "LLM ready" in worker_log.read_text(),
             300, proc)
    assert {p["tag"].split("/")[1] for p in running(cluster, "job")} == {"node0", "node1"}
    proc.send_signal(sig)
    out, err = finish(proc)
    assert proc.returncode == 130, err
    assert "interrupted; the job has been stopped on every node" in err
    assert_clean_error(err)
    assert running(cluster, "") == []
    assert leftovers(cluster) == {}
    assert cpu_shm() == []  # the killed workers' buffers would make the next run fail (errno 17)


# --------------------------------------------------------------------------- a node lost during up


def short_stop_playbook(tmp_path: Path) -> str:
    """The demo playbook (absolute paths, one thread per rank) with a short stop grace."""
    path = Path(demo_playbook(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["stop_grace_s"] = 5
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_node_lost_during_up_is_reported_and_down_cleans_the_rest(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    head, worker = cluster.nodes
    # short SSH timeouts: the lost node is given up on in seconds, not half a minute
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml", ssh={"connect_timeout_s": 3, "retry_deadline_s": 3}))
    proc = start_sparkctl("up", "-i", inv, "-p", short_stop_playbook(tmp_path))
    try:
        wait_for("the head's vLLM", lambda: [p for p in running(cluster, "vllm")
                                             if p["tag"].startswith(f"{cluster.name}/node0/") and p["age_s"] >= 2],
                 120, proc)
        cluster.set_mgmt_link(worker, False)
        out, err = finish(proc, 180)
        assert proc.returncode in (1, 3), err
        assert "node1: lost contact while vLLM was starting" in err
        assert "not stopped (the node did not answer): node1" in err and f"sparkctl down -i {inv}" in err
        assert_clean_error(err)
        assert cluster.processes_besides_sshd(head) == []  # what up started on the node it still reaches is stopped
    finally:
        cluster.set_mgmt_link(worker, True)
    down = sparkctl("down", "-i", inv)
    assert down.returncode == 0, down.stderr
    assert running(cluster, "") == []
    assert leftovers(cluster) == {}


# a line of the program every agent call runs (`python3 -c ...`): how its process is told from vLLM's
BOOTSTRAP_LINE = next(line for line in bootstrap_program().splitlines() if line.startswith("def install("))


@pytest.mark.vllm
@pytest.mark.timeout(300)
def test_dropped_connection_during_up_is_reported_and_leaves_nothing(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    head, worker = cluster.nodes
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    proc = start_sparkctl("up", "-i", inv, "-p", short_stop_playbook(tmp_path))

    def agent_call_on_worker() -> bool:
        """An agent call (the launch or a readiness poll) runs on the worker: its connection breaks mid-command."""
        return any(BOOTSTRAP_LINE in c for c in cluster.processes_besides_sshd(worker, settle_s=0))

    try:
        wait_for("the worker's vLLM", lambda: [p for p in running(cluster, "vllm")
                                               if p["tag"].startswith(f"{cluster.name}/node1/")], 120, proc)
        wait_for("an agent call on the worker", agent_call_on_worker, 60, proc)
        assert cluster.drop_ssh_connections(worker)
        out, err = finish(proc, 120)
        assert proc.returncode == 1, err
        # the call that broke was the launch (the process was already spawned and recorded)
        # or a readiness poll: either way the node and the lost connection are named
        assert "node1: ssh root@" in err and "the connection was lost while a command ran" in err
        assert_clean_error(err)
        # the node answers again (a new connection): up stopped what it started there too
        assert running(cluster, "") == []
        assert leftovers(cluster) == {}
    finally:
        sparkctl("down", "-i", inv, "-q")
