"""What `explain` keeps per cluster, next to the cluster's state file: the last
nccl-probe's small-message all-reduce latencies and transport, and the fixed
per-step overhead fitted by `explain --calibrate`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkctl.state import state_dir

SMALL_SIZES = (1024, 4096, 8192, 16384, 65536)  # decode all-reduce messages are a few KiB


@dataclass(frozen=True)
class ProbeRecord:
    saved_at: float
    world_size: int
    backend: str
    latency_us: dict[str, dict[int, float]]  # mode -> size -> p50 latency
    transports: dict[str, str]  # node -> ib | socket | unknown | tcp
    findings: tuple[str, ...]  # NCCL log finding codes (single-hca, socket-fallback, ...)

    def latency_at(self, size: int) -> tuple[float, str] | None:
        """Latency for a message size: the graph mode when measured (vLLM replays
        CUDA graphs), else eager, else whatever mode the engine named; the nearest
        measured size at or above."""
        for mode in ("graph", "eager", *sorted(set(self.latency_us) - {"graph", "eager"})):
            rows = self.latency_us.get(mode) or {}
            if rows:
                sizes = sorted(rows)
                pick = next((s for s in sizes if s >= size), sizes[-1])
                return rows[pick], f"{mode} mode at {pick} B"
        return None


@dataclass(frozen=True)
class OverheadRecord:
    step_overhead_ms: float
    fitted_at: float
    source: str


def _path(cluster: str, kind: str) -> Path:
    return state_dir() / f"{cluster}.{kind}.json"


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def save_probe(cluster: str, report: Any) -> Path:
    """Keep the small-message latencies and transports of an nccl-probe report."""
    latency: dict[str, dict[str, float]] = {}
    for row in report.rows:
        if row.latency_us is not None and row.size_bytes <= max(SMALL_SIZES) * 4:
            latency.setdefault(row.mode, {})[str(row.size_bytes)] = round(row.latency_us, 3)
    findings = sorted({f.get("code", "") for t in report.transport.values() for f in t.get("findings", [])} - {""})
    path = _path(cluster, "probe")
    _write(path, {"saved_at": time.time(), "world_size": report.world_size, "backend": report.backend,
                  "latency_us": latency, "transports": {n: t.get("transport", "unknown") for n, t in report.transport.items()},
                  "findings": findings})
    return path


def load_probe(cluster: str) -> ProbeRecord | None:
    data = _read(_path(cluster, "probe"))
    if not data:
        return None
    try:
        latency = {mode: {int(size): float(us) for size, us in rows.items()} for mode, rows in data["latency_us"].items()}
        return ProbeRecord(float(data["saved_at"]), int(data["world_size"]), str(data["backend"]), latency,
                           {str(k): str(v) for k, v in data.get("transports", {}).items()},
                           tuple(str(f) for f in data.get("findings", [])))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def save_overhead(cluster: str, step_overhead_ms: float, source: str) -> Path:
    path = _path(cluster, "perf")
    _write(path, {"step_overhead_ms": step_overhead_ms, "fitted_at": time.time(), "source": source})
    return path


def load_overhead(cluster: str) -> OverheadRecord | None:
    data = _read(_path(cluster, "perf"))
    try:
        return OverheadRecord(float(data["step_overhead_ms"]), float(data["fitted_at"]), str(data["source"])) if data else None
    except (KeyError, TypeError, ValueError):
        return None
