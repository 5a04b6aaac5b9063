"""Error types that carry what a person needs to act: a message, a hint, an exit code.

Nothing below the CLI prints or exits; it raises one of these and cli.py turns it
into output and an exit status.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # a check, a node command, readiness or a probe failed
    BAD_INPUT = 2  # inventory, playbook or command line is invalid
    UNREACHABLE = 3  # a node could not be reached over SSH (unreachable, auth, host key)
    TIMEOUT = 4  # a deadline passed before the thing waited for happened
    INTERRUPTED = 130  # Ctrl-C; what was started has been stopped


class SparkctlError(Exception):
    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details or [])

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
            "exit_code": int(self.exit_code),
        }


class InputError(SparkctlError):
    """Bad inventory, playbook or arguments. `details` holds one located line per problem."""

    exit_code = ExitCode.BAD_INPUT


class ConnectionFailed(SparkctlError):
    exit_code = ExitCode.UNREACHABLE


class DeadlineExceeded(SparkctlError):
    exit_code = ExitCode.TIMEOUT


class OperationFailed(SparkctlError):
    exit_code = ExitCode.FAILED


class Interrupted(SparkctlError):
    exit_code = ExitCode.INTERRUPTED
