"""Ray on a node: the agent's `host_scan` and `ray_group_stop` operations. Runs
ON a node, standard library only (Python >= 3.8); shipped with the agent for
these operations only (client.EXTRA_MODULES).

Ray titles its agents with setproctitle ("ray::DashboardAgent"), which
overwrites their environment, so they no longer carry sparkctl's tag. They are
recognised by the process group sparkctl's launch created (not reusable while
it has members) and by their open files in this node's own Ray temp dir
(unique to user, cluster and node)."""

import os
import signal
import time

from sparkctl.agent import protocol
from sparkctl.agent.node_proc import (
    UNREADABLE,
    all_pids,
    open_paths,
    proc_cmdline,
    proc_comm,
    proc_cwd,
    proc_raw_cmdline,
    proc_stat,
    proc_tag,
)

RAY_NAMES = ("raylet", "plasma_store", "gcs_server")
RAY_ARGS = ("monitor.py", "ray.util.client.server", "default_worker.py", "setup_worker.py", "ray::",
            "log_monitor.py", "dashboard/agent.py", "dashboard/dashboard.py", "runtime_env/agent/main.py",
            "ray_process_reaper.py", "io.ray.runtime.runner.worker.DefaultWorker")


def op_host_scan(req):
    """Every Ray process on this host, as `ray stop` would find them, each with its tag."""
    me = os.getpid()
    found = []
    for pid in all_pids():
        stat = proc_stat(pid)
        comm = proc_comm(pid)
        if pid == me or stat is None or stat[0] == "Z" or comm is None:
            continue
        cmd = proc_cmdline(pid, 1 << 16)
        if not (any(n in comm for n in RAY_NAMES) or comm.startswith("ray::") or any(a in cmd for a in RAY_ARGS)):
            continue
        found.append(protocol.RayProcess(pid=pid, pgid=stat[2], comm=comm, cmdline=cmd[:200],
                                         tag=proc_tag(pid, unreadable=UNREADABLE)))
    return protocol.HostScanReply(processes=tuple(found))


def _rayish(pid):
    comm = proc_comm(pid)
    if comm is None:
        return False
    return comm.startswith("ray::") or comm in RAY_NAMES or b"/ray/" in proc_raw_cmdline(pid)


def _uses_temp(pid, temp):
    if not _rayish(pid):
        return False  # e.g. someone's `tail -f` on a Ray log is left alone
    if temp.encode() in proc_raw_cmdline(pid):
        return True
    if ((proc_cwd(pid) or "") + "/").startswith(temp):
        return True
    return any(target.startswith(temp) for target in open_paths(pid))


class _GroupStop(object):
    """One node's `ray start --block` (by its recorded pid) and what is left of its Ray."""

    def __init__(self, req):
        self.req = req
        self.temp = req.temp_dir.rstrip("/") + "/"
        self.skip = set([os.getpid(), os.getppid()])

    def leftovers(self):
        req = self.req
        out = []
        for pid in all_pids():
            stat = None if pid in self.skip else proc_stat(pid)
            if stat is None or stat[0] == "Z":
                continue
            tag = proc_tag(pid, unreadable=UNREADABLE)
            if tag is not None and tag != UNREADABLE and not tag.startswith(req.tag_prefix):
                continue  # someone else's process, whatever it touches
            in_group = req.pgid is not None and stat[2] == req.pgid and stat[3] >= (req.starttime or 0)
            if (in_group and tag != UNREADABLE) or _uses_temp(pid, self.temp):
                out.append(pid)
        return out

    def leader_alive(self):
        if not self.req.pid:
            return False
        stat = proc_stat(self.req.pid)
        return stat is not None and stat[0] != "Z" and stat[3] == self.req.starttime


def op_ray_group_stop(req):
    """SIGTERM the recorded `ray start --block` (it stops its raylet, GCS and agents
    itself), SIGKILL it after grace_s, then SIGKILL whatever is left of its group
    and of this node's Ray temp dir; verify."""
    group = _GroupStop(req)
    started = time.time()
    leader = "no record" if not req.pid else "gone"
    leader_s = None
    found = group.leftovers()
    if group.leader_alive() and req.pid not in found:
        found.insert(0, req.pid)
    stopped = tuple(protocol.StoppedProcess(pid=pid, cmdline=proc_cmdline(pid, 200)) for pid in found)
    if group.leader_alive():
        os.kill(req.pid, signal.SIGTERM)
        leader = "terminated"
        deadline = started + req.grace_s
        while time.time() < deadline and (group.leader_alive() or group.leftovers()):
            time.sleep(0.25)
        if group.leader_alive():
            os.kill(req.pid, signal.SIGKILL)
            leader = "killed"
        leader_s = round(time.time() - started, 2)
    killed = []
    for pid in group.leftovers():
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and group.leftovers():
        time.sleep(0.1)
    return protocol.RayGroupStopReply(
        leader=leader, pgid=req.pgid, stopped=stopped, killed=tuple(killed), remaining=tuple(group.leftovers()),
        leader_s=leader_s, elapsed_s=round(time.time() - started, 2),
    )
