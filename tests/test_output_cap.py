"""The 32 MiB output cap bounds the controller's memory while a command runs, not
only what is kept afterwards (issue #13, defect 3, controller side)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sparkctl.remote.base import MAX_OUTPUT_BYTES, OutputTail
from sparkctl.remote.local import LocalRunner
from tests.conftest import REPO

MIB = 1 << 20

LOCAL = textwrap.dedent("""
    import resource
    from sparkctl.remote.local import LocalRunner
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = LocalRunner("n").run(["head", "-c", str(300 << 20), "/dev/zero"], timeout_s=120)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
    print(grown, len(result.stdout), result.truncated, result.returncode)
""")

SSH = textwrap.dedent("""
    import resource, time
    from sparkctl.remote.ssh import _drain

    class Channel:  # paramiko's Channel as _drain sees it: 300 MiB of stdout, then exit
        closed = eof_received = True
        left = 300 << 20
        def recv_ready(self): return self.left > 0
        def recv(self, n):
            n = min(n, self.left); self.left -= n; return bytes(n)
        def recv_stderr_ready(self): return False
        def exit_status_ready(self): return self.left == 0

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, err = _drain(Channel(), time.monotonic() + 120)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
    print(grown, len(out.value()), out.cut, 0)
""")


@pytest.mark.timeout(200)
@pytest.mark.parametrize("script", [LOCAL, SSH], ids=["local", "ssh"])
def test_300_mib_of_output_costs_about_the_cap(script):
    """Before: the whole output was buffered, then cut (300 MiB cost 600+ MiB)."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr
    grown_mib, kept, truncated, returncode = result.stdout.split()
    assert int(grown_mib) < 3 * MAX_OUTPUT_BYTES // MIB, f"peak memory grew by {grown_mib} MiB"
    assert MAX_OUTPUT_BYTES <= int(kept) < MAX_OUTPUT_BYTES + 100 and truncated == "True" and returncode == "0"


def test_the_tail_is_kept_exactly():
    tail = OutputTail(limit=10)
    for piece in (b"0123", b"4567", b"89ab", b"cdef"):
        tail.add(piece)
    assert tail.value().endswith(b"6789abcdef") and tail.cut
    small = OutputTail(limit=10)
    small.add(b"abc")
    assert small.value() == b"abc" and not small.cut


def test_short_output_and_stdin_are_unchanged():
    result = LocalRunner("n").run(["cat"], stdin=b"x" * (1 << 20), timeout_s=30)
    assert result.stdout == b"x" * (1 << 20) and not result.truncated and result.returncode == 0


def _agent_exec_peak() -> tuple[int, int, bool]:
    """In a child process: the agent's exec of 300 MiB of output; its peak memory growth (MiB)."""
    import resource

    from sparkctl.agent import node_agent, protocol

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reply = node_agent.op_exec(protocol.ExecRequest(argv=("head", "-c", str(300 << 20), "/dev/zero"),
                                                    command_timeout_s=120))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
    return grown, len(reply.stdout), reply.rc == 0


@pytest.mark.timeout(200)
def test_the_agents_exec_keeps_a_rolling_tail_too():
    """#13 defect 3, node side: the agent buffered a command's whole output (communicate())."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        grown_mib, kept, ok = pool.apply(_agent_exec_peak)
    assert ok and MAX_OUTPUT_BYTES <= kept < MAX_OUTPUT_BYTES + 100
    # the reply's text and its JSON cost a few times the cap; 300 MiB buffered cost 600+
    assert grown_mib < 4 * MAX_OUTPUT_BYTES // MIB, f"peak memory grew by {grown_mib} MiB"
