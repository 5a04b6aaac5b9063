"""`connection: local`: the same commands as local subprocesses (like Ansible's local connection)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from typing import Sequence

from sparkctl.remote.base import OutputTail
from sparkctl.remote.result import CommandResult, CommandTimeout

_CHUNK = 65536


class LocalRunner:
    def __init__(self, node_name: str):
        self.node_name = node_name

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout_s: float = 60.0) -> CommandResult:
        argv = tuple(argv)
        started = time.monotonic()
        try:
            # Own process group, so a timeout can stop the command and its children.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            return CommandResult(self.node_name, argv, 127, b"", f"{argv[0]}: command not found\n".encode(), 0.0)
        except PermissionError:
            return CommandResult(self.node_name, argv, 126, b"", f"{argv[0]}: permission denied\n".encode(), 0.0)
        out, err = OutputTail(), OutputTail()
        with proc:  # closes the pipes however this ends
            try:
                finished = _pump(proc, stdin or b"", out, err, started + timeout_s)
            except BaseException:
                # Ctrl-C while waiting: do not leave the helper running.
                _kill_group(proc.pid)
                proc.wait()
                raise
            if not finished:
                _kill_group(proc.pid)
                proc.wait()
                raise CommandTimeout(self.node_name, argv, timeout_s)
        return CommandResult(self.node_name, argv, proc.returncode, out.value(), err.value(),
                             time.monotonic() - started, truncated=out.cut or err.cut)

    def close(self) -> None:
        pass


def _pump(proc: subprocess.Popen, stdin: bytes, out: OutputTail, err: OutputTail, deadline: float) -> bool:
    """Feed stdin and read both outputs into their tails until the command exits; False
    at the deadline. (communicate() would hold all the output until the end.)"""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        pending = memoryview(stdin)
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in selector.select(min(left, 1.0)):
                if key.fd in tails:
                    data = os.read(key.fd, _CHUNK)
                    if data:
                        tails[key.fd].add(data)
                    else:
                        selector.unregister(key.fd)
                    continue
                try:
                    pending = pending[os.write(key.fd, pending[:_CHUNK]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    pending = pending[:0]  # the command does not read its stdin
                if not pending:
                    selector.unregister(key.fd)
                    proc.stdin.close()
    left = deadline - time.monotonic()
    try:
        proc.wait(timeout=max(left, 0.01))
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
