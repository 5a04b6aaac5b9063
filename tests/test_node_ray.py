"""The agent's Ray operations, shipped and run for real through the local runner,
on stand-in processes (a copy of `sleep` named `raylet`): no Ray, no root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sparkctl.agent import protocol
from sparkctl.agent.client import call
from sparkctl.inventory import Node
from sparkctl.remote.local import LocalRunner


def make_node() -> Node:
    return Node(name="n1", host="127.0.0.1", port=22, user="root", connection="local", fabric_ip=None,
                role="head", env={}, python=sys.executable, workdir="~/.sparkctl", gpus=1, index=0)


@pytest.fixture
def raylet(tmp_path):
    """A fake `raylet` (comm "raylet") in a session of its own, with its cwd in a Ray temp dir."""
    binary = tmp_path / "bin" / "raylet"
    binary.parent.mkdir()
    shutil.copy(shutil.which("sleep"), binary)
    temp = tmp_path / "ray-temp"
    temp.mkdir()
    prefix = f"test-{os.getpid()}/n1/ray/"
    proc = subprocess.Popen([str(binary), "60"], cwd=temp, start_new_session=True,
                            env={**os.environ, "SPARKCTL_TAG": prefix + "1"})
    yield proc, temp, prefix
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_host_scan_finds_ray_processes_with_their_tag(raylet):
    proc, _, prefix = raylet
    time.sleep(0.1)
    scan = call(LocalRunner("n1"), make_node(), protocol.HostScanRequest())
    (found,) = [p for p in scan.processes if p.pid == proc.pid]
    assert found.comm == "raylet" and found.tag == prefix + "1" and found.pgid == proc.pid


def test_group_stop_terminates_the_recorded_leader_and_what_uses_the_temp_dir(raylet, tmp_path):
    proc, temp, prefix = raylet
    stray = subprocess.Popen([str(tmp_path / "bin" / "raylet"), "61"], cwd=temp, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "62"], start_new_session=True)  # not Ray, not in the temp dir
    try:
        time.sleep(0.1)
        starttime = int(open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[19])
        request = protocol.RayGroupStopRequest(tag_prefix=prefix, temp_dir=str(temp), grace_s=2.0,
                                               pid=proc.pid, pgid=proc.pid, starttime=starttime)
        reply = call(LocalRunner("n1"), make_node(), request)
        assert reply.leader == "terminated" and reply.remaining == ()
        assert {p.pid for p in reply.stopped} == {proc.pid, stray.pid}
        assert stray.pid in reply.killed  # not in the leader's group: found by its cwd in the temp dir
        assert proc.wait(5) == -signal.SIGTERM
        assert bystander.poll() is None
        again = call(LocalRunner("n1"), make_node(), request)
        assert again.leader == "gone" and again.stopped == ()
    finally:
        for p in (stray, bystander):
            p.kill()
            p.wait()
