"""Per-cluster record of what sparkctl started where.

It records what was observed (pids and start times the node reported), not
what was intended. Writes are atomic (temp file + rename) and every command
that changes a cluster holds an exclusive lock, so two `up`s cannot race.
Environment values are never stored, only their names.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sparkctl.errors import OperationFailed

STATE_VERSION = 1


def state_dir() -> Path:
    explicit = os.environ.get("SPARKCTL_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sparkctl"


@dataclass
class StateStore:
    cluster: str
    folder: Path

    @classmethod
    def for_cluster(cls, cluster: str) -> StateStore:
        return cls(cluster, state_dir())

    @property
    def path(self) -> Path:
        return self.folder / f"{self.cluster}.json"

    @property
    def lock_path(self) -> Path:
        return self.folder / f"{self.cluster}.lock"

    def load(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OperationFailed(
                f"cannot read the state file {self.path}: {exc}",
                hint="move it aside; `sparkctl down` still finds what runs through the nodes' own records",
            ) from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return None
        return data

    def _folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OperationFailed(f"cannot use the state directory {self.folder}: {exc.strerror or exc}",
                                  hint="set SPARKCTL_STATE_DIR to a writable directory") from None

    def save(self, data: dict[str, Any]) -> None:
        """Atomically: the old state stays whole when the new one cannot be written (a full disk)."""
        self._folder()
        data = {**data, "version": STATE_VERSION, "cluster": self.cluster, "saved_at": time.time()}
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OperationFailed(f"cannot write the state file {self.path}: {exc.strerror or exc}",
                                  hint="free space in the state directory (or set SPARKCTL_STATE_DIR); "
                                       "`sparkctl down` still finds what runs through the nodes' own records") from None

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the cluster's lock; refuse (not wait) when another command holds it."""
        self._folder()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OperationFailed(f"cannot use the state directory {self.folder}: {exc.strerror or exc}",
                                  hint="set SPARKCTL_STATE_DIR to a writable directory") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another sparkctl command"
                raise OperationFailed(
                    f"cluster {self.cluster!r} is busy: {holder} holds {self.lock_path}",
                    hint="wait for it to finish, or stop it with Ctrl-C (it stops what it started)",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"`sparkctl {command}` (pid {os.getpid()})".encode(), 0)
            yield
        finally:
            os.close(fd)
