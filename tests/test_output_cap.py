"""The 32 MiB output cap bounds the controller's memory while a command runs, not
only what is kept afterwards (issue #13, defect 3, controller side)."""

from __future__ import annotations

import pytest

from sparkctl.remote.base import MAX_OUTPUT_BYTES, OutputTail
from sparkctl.remote.local import LocalRunner

MIB = 1 << 20

def _local_runner_peak() -> tuple[int, int, bool, int]:
    """In a child process: the local runner reading 300 MiB of output; peak memory growth (MiB)."""
    import resource

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = LocalRunner("n").run(["head", "-c", str(300 << 20), "/dev/zero"], timeout_s=120)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
    return grown, len(result.stdout), result.truncated, result.returncode


class _Channel:
    """paramiko's Channel as _drain sees it: 300 MiB of stdout, then the exit."""

    closed = eof_received = True

    def __init__(self) -> None:
        self.left = 300 << 20

    def recv_ready(self) -> bool:
        return self.left > 0

    def recv(self, n: int) -> bytes:
        n = min(n, self.left)
        self.left -= n
        return bytes(n)

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return self.left == 0


def _ssh_drain_peak() -> tuple[int, int, bool, int]:
    import resource
    import time

    from sparkctl.remote.ssh import _drain

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, _ = _drain(_Channel(), time.monotonic() + 120)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
    return grown, len(out.value()), out.cut, 0


@pytest.mark.timeout(200)
@pytest.mark.parametrize("measure", [_local_runner_peak, _ssh_drain_peak], ids=["local", "ssh"])
def test_300_mib_of_output_costs_about_the_cap(measure):
    """Before: the whole output was buffered, then cut (300 MiB cost 600+ MiB)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh process: its own peak memory
        grown_mib, kept, truncated, returncode = pool.apply(measure)
    assert grown_mib < 3 * MAX_OUTPUT_BYTES // MIB, f"peak memory grew by {grown_mib} MiB"
    assert MAX_OUTPUT_BYTES <= kept < MAX_OUTPUT_BYTES + 100 and truncated and returncode == 0


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
