"""Leads the process group of a command whose exit status matters (torchrun
groups): it waits, forwards termination signals, and records the status in a
file, because a detached process's status is otherwise lost. The agent runs it
as `python -c <this source> EXIT_FILE ARGV...` (standard library, Python >= 3.8)."""

import json
import os
import signal
import subprocess
import sys
import time


def main(argv):
    exit_file, command = argv[0], argv[1:]
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    returncode = child.wait()
    with open(exit_file + ".tmp", "w") as handle:
        handle.write(json.dumps({"returncode": returncode, "ended_at": time.time()}))
    os.replace(exit_file + ".tmp", exit_file)
    return 0 if returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
