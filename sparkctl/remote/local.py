"""`connection: local`: the same commands as local subprocesses (like Ansible's local connection)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Sequence

from sparkctl.agent.node_output import OutputTail, pump
from sparkctl.remote.result import CommandResult, CommandTimeout


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
                finished = pump(proc, stdin or b"", out, err, started + timeout_s)
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




def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
