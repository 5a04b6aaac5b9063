"""The node agent, run for real through the local runner: detached launch,
status by pid + start time, stop by tag (SIGTERM then SIGKILL), exec, and
secrets kept out of argv."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkctl.agent import node_agent, node_proc, protocol
from sparkctl.agent.client import AgentError, call
from sparkctl.inventory import Node
from sparkctl.remote.local import LocalRunner


def make_node(name: str = "n1") -> Node:
    return Node(name=name, host="127.0.0.1", port=22, user="root", connection="local", fabric_ip=None,
                role="head", env={}, python=sys.executable, workdir="~/.sparkctl", gpus=1, index=0)


def call_agent(runner, node, op: str, **payload) -> dict:
    """A request built from keywords through the typed client; the reply as JSON data
    (a stop reply's `ok` is whether it is clean)."""
    reply = call(runner, node, protocol.from_wire(protocol.REQUESTS[op], payload))
    return {"ok": getattr(reply, "clean", True), **protocol.to_wire(reply)}


@pytest.fixture
def agent(tmp_path):
    node = make_node()
    runner = LocalRunner(node.name)
    prefix = f"test-{os.getpid()}-{tmp_path.name}/n1/"
    started: list[int] = []

    def agent_call(op: str, **payload):
        reply = call_agent(runner, node, op, **payload)
        if op == "launch":
            started.append(reply["process"]["pid"])
        return reply

    agent_call.prefix = prefix  # type: ignore[attr-defined]
    agent_call.tmp = tmp_path  # type: ignore[attr-defined]
    yield agent_call
    # Never leave a test process behind, even when the test failed half-way.
    call_agent(runner, node, "stop", tag_prefix=prefix, grace_s=1)
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(agent, argv, *, env=None, role="proc", launch_id="1"):
    return agent(
        "launch",
        argv=argv,
        env=env or {},
        log=str(agent.tmp / f"{role}.log"),
        record=str(agent.tmp / "procs" / f"{role}.json"),
        tag=agent.prefix + launch_id,
        role=role,
    )


def test_launch_detaches_into_its_own_session_and_logs(agent):
    reply = launch(agent, [sys.executable, "-c", "import os,time; print('hello', os.getsid(0), flush=True); time.sleep(60)"])
    proc = reply["process"]
    pid = proc["pid"]
    assert proc["pgid"] == pid and os.getpgid(pid) == pid and os.getsid(pid) == pid
    assert os.getsid(pid) != os.getsid(0)  # not in the controller's session: Ctrl-C does not reach it
    deadline = time.time() + 10
    log = Path(proc["log"])
    while time.time() < deadline and "hello" not in log.read_text():
        time.sleep(0.05)
    assert f"hello {pid}" in log.read_text()
    record = json.loads((agent.tmp / "procs" / "proc.json").read_text())
    assert record["pid"] == pid and record["starttime"] == node_agent.proc_stat(pid)[3]


def test_secret_values_travel_in_the_environment_not_argv(agent):
    reply = launch(agent, ["sleep", "30"], env={"HF_TOKEN": "hf_secret_value", "PLAIN": "1"})
    pid = reply["process"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"hf_secret_value" not in cmdline
    assert b"HF_TOKEN=hf_secret_value" in environ
    assert (agent.prefix + "1").encode() in environ
    record = (agent.tmp / "procs" / "proc.json").read_text()
    assert "hf_secret_value" not in record and "HF_TOKEN" in record  # only the name is recorded


def test_status_sees_alive_then_dead_and_detects_pid_reuse(agent):
    pid = launch(agent, ["sleep", "30"])["process"]["pid"]
    status = agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"))
    (record,) = status["records"]
    assert record["alive"] is True and [p["pid"] for p in status["processes"]] == [pid]
    # Same pid, other start time: a reused pid must not count as ours.
    path = agent.tmp / "procs" / "proc.json"
    data = json.loads(path.read_text())
    data["starttime"] -= 1
    path.write_text(json.dumps(data))
    assert agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"))["records"][0]["alive"] is False
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 5
    while time.time() < deadline and node_agent.is_alive(pid, data["starttime"] + 1):
        time.sleep(0.05)  # init reaps it: the agent that forked it has exited
    status = agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"))
    assert status["processes"] == [] and status["records"][0]["alive"] is False


def test_stop_escalates_to_sigkill_and_spares_untagged_processes(agent):
    stubborn = launch(
        agent,
        [sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"],
    )["process"]["pid"]
    child_parent = launch(
        agent,
        ["sh", "-c", "sleep 60 & sleep 60 & wait"],
        role="family",
        launch_id="2",
    )["process"]["pid"]
    bystander = subprocess.Popen(["sleep", "60"])  # same user, no tag
    try:
        time.sleep(0.5)  # let the stubborn one install its handler
        result = agent("stop", tag_prefix=agent.prefix, grace_s=1.0, record_dir=str(agent.tmp / "procs"))
        assert result["ok"] and result["remaining"] == []
        stopped = {p["pid"] for p in result["stopped"]}
        assert {stubborn, child_parent} <= stopped and len(stopped) == 4  # the shell's two sleeps too
        assert stubborn in result["killed"]
        assert bystander.poll() is None  # untouched
        assert not (agent.tmp / "procs" / "proc.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_with_nothing_running_is_success(agent):
    result = agent("stop", tag_prefix=agent.prefix, grace_s=1.0)
    assert result["ok"] and result["stopped"] == [] and result["remaining"] == []


def test_launch_of_missing_command_is_an_error(agent):
    with pytest.raises(AgentError) as caught:
        launch(agent, ["definitely-not-a-command-xyz"])
    assert caught.value.kind == "command-not-found"


def test_exec_passes_env_and_reports_exit_code(agent):
    reply = agent("exec", argv=["sh", "-c", "printf '%s' \"$FOO\"; echo err >&2; exit 7"], env={"FOO": "a b;c"})
    assert (reply["rc"], reply["stdout"], reply["stderr"]) == (7, "a b;c", "err\n")
    assert agent("exec", argv=["no-such-binary-xyz"])["rc"] == 127
    timed = agent("exec", argv=["sleep", "5"], command_timeout_s=0.3)
    assert timed["rc"] == 124 and timed["timed_out"]


def test_status_reads_logs_incrementally(agent):
    proc = launch(agent, ["sh", "-c", "echo one; sleep 0.3; echo two; sleep 30"])["process"]
    time.sleep(0.1)
    first = agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"),
                  logs=[{"path": proc["log"], "offset": 0}])["logs"][0]
    time.sleep(0.6)
    second = agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"),
                   logs=[{"path": proc["log"], "offset": first["offset"]}])["logs"][0]
    assert first["data"] == "one\n" and second["data"] == "two\n"


def test_ports_in_use_names_the_listener(agent):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        reply = agent("probe", ports=[port, 1])
        (hit,) = reply["in_use"]
        assert hit["port"] == port and hit["pid"] == os.getpid()
    finally:
        sock.close()
    assert agent("probe", ports=[port])["in_use"] == []


def test_agent_reports_missing_interpreter():
    node = make_node()
    node = Node(**{**node.__dict__, "python": "/nonexistent/python3"})
    with pytest.raises(AgentError) as caught:
        call_agent(LocalRunner(node.name), node, "probe")
    assert "not found on the node" in caught.value.message and "nodes[].python" in caught.value.hint


def test_exit_status_is_captured_and_files_written(agent):
    script = agent.tmp / "job" / "job.py"
    reply = agent(
        "launch",
        argv=[sys.executable, str(script)],
        files={str(script): "import sys; print('job ran'); sys.exit(3)\n"},
        log=str(agent.tmp / "job.log"),
        record=str(agent.tmp / "procs" / "job.json"),
        exit_file=str(agent.tmp / "job.exit"),
        tag=agent.prefix + "job/1",
        role="job",
    )
    assert reply["process"]["argv"] == [sys.executable, str(script)]
    deadline = time.time() + 20
    while time.time() < deadline:
        (record,) = agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"))["records"]
        if record["exit"] is not None:
            break
        time.sleep(0.1)
    assert record["exit"]["returncode"] == 3
    assert (agent.tmp / "job.log").read_text() == "job ran\n"
    assert oct(script.stat().st_mode & 0o777) == "0o600"


def test_stop_of_one_role_spares_the_others(agent):
    keep = launch(agent, ["sleep", "30"], role="vllm", launch_id="vllm/1")["process"]["pid"]
    gone = launch(agent, ["sleep", "30"], role="probe", launch_id="probe/1")["process"]["pid"]
    result = agent("stop", tag_prefix=agent.prefix + "probe/", grace_s=1, record_dir=str(agent.tmp / "procs"))
    assert [p["pid"] for p in result["stopped"]] == [gone]
    status = agent("status", tag_prefix=agent.prefix, record_dir=str(agent.tmp / "procs"))
    assert [r["role"] for r in status["records"]] == ["vllm"] and status["records"][0]["pid"] == keep


def test_read_returns_text_or_says_missing(agent):
    target = agent.tmp / "results.json"
    target.write_text('{"a": 1}')
    reply = agent("read", path=str(target))
    assert reply["exists"] and reply["data"] == '{"a": 1}' and reply["size"] == 8
    assert agent("read", path=str(agent.tmp / "nope"))["exists"] is False
    assert agent("read", path=str(target), limit=3)["truncated"] is True


def test_ipv4_without_iproute2_uses_the_kernel_ioctls():
    """Minimal images have no `ip`; the ioctl fallback must agree with it on the
    primary address of every interface."""
    full, source, _ = node_proc.ipv4_by_interface()
    fallback = node_proc._ipv4_via_ioctl()
    assert source == "ip" and fallback["lo"] == ["127.0.0.1/8"]
    for name, cidrs in full.items():
        if cidrs:
            assert fallback[name] and fallback[name][0] in cidrs


def test_processes_that_lost_the_tag_are_still_ours(agent):
    """setproctitle (vLLM's VLLM:: workers, Ray's agents) can wipe the environment
    /proc shows; an untagged member of our session, or a descendant that even left
    the session, must still be found and stopped. A bystander must not."""
    leader = launch(
        agent,
        ["sh", "-c", "env -i sleep 60 & env -i setsid sleep 61 & wait"],
        role="family",
        launch_id="family/1",
    )["process"]["pid"]
    bystander = subprocess.Popen(["env", "-i", "sleep", "62"], start_new_session=True)
    try:
        deadline = time.time() + 10
        ours = []
        while time.time() < deadline:
            ours = node_agent.our_processes(agent.prefix, str(agent.tmp / "procs"))
            if len(ours) >= 3:
                break
            time.sleep(0.1)
        why = {p["cmdline"]: p["why"] for p in ours}
        assert why == {"sh -c env -i sleep 60 & env -i setsid sleep 61 & wait": "tag", "sleep 60": "session",
                       "sleep 61": "descendant"}, why
        assert node_agent.tagged_processes(agent.prefix)[0]["pid"] == leader  # the tag alone finds only the shell
        result = agent("stop", tag_prefix=agent.prefix, grace_s=2, record_dir=str(agent.tmp / "procs"))
        assert result["ok"] and len(result["stopped"]) == 3
        assert node_agent.our_processes(agent.prefix, str(agent.tmp / "procs")) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_reused_session_number_is_not_ours(agent, tmp_path):
    """A record whose pid now belongs to another process (other start time) names no session of ours."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        folder = tmp_path / "fake-procs"
        folder.mkdir()
        stat = node_agent.proc_stat(other.pid)
        (folder / "old.json").write_text(json.dumps({
            "role": "old", "pid": other.pid, "starttime": stat[3] - 1, "boot_id": node_agent.boot_id(),
            "tag": agent.prefix + "old/1",
        }))
        assert node_agent.our_sessions(agent.prefix, str(folder)) == {}
        assert node_agent.our_processes(agent.prefix, str(folder)) == []
    finally:
        other.kill()
        other.wait()


def test_probe_reads_pips_long_path_launcher_like_check_does(agent, tmp_path):
    """A venv whose path is too long for a #! line gets pip's `#!/bin/sh` launcher; the
    probe op (nccl-probe, the Ray backend) must find the Python it execs, as check does."""
    from sparkctl.agent import node_facts

    python = "/" + "very-long-venv-path/" * 8 + "bin/python3"
    script = tmp_path / "vllm"
    script.write_text(f"#!/bin/sh\n'''exec' {python} \"$0\" \"$@\"\n' '''\nimport sys\n")
    script.chmod(0o755)
    reply = agent("probe", commands=[str(script)])
    assert reply["interpreters"][str(script)] == python
    assert node_facts.find_vllm_python({"vllm_command": [str(script)]})[0] == python


def test_an_agent_call_without_answer_names_the_operation_not_the_interpreter(tmp_path):
    from sparkctl.remote.result import CommandTimeout

    silent = tmp_path / "python3"
    silent.write_text("#!/bin/sh\nexec sleep 30\n")  # a node that took the command and went quiet
    silent.chmod(0o755)
    node = dataclasses.replace(make_node(), python=str(silent))
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"n1: the node agent's `probe` \(no answer: the node or its link may be down\) "
                                             r"did not finish within 1s"):
        call(LocalRunner(node.name), node, protocol.ProbeRequest(), timeout_s=1)
    assert time.monotonic() - started < 10
