"""Node telemetry sampled in the background while something else runs (a
benchmark), then summarised per time window (a step): GPU utilisation, power
and memory, and the host's load and free memory, mean and max per node."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from statistics import fmean

from sparkctl.agent.client import Connect, connect
from sparkctl.agent.protocol import TelemetryReply, TelemetryRequest
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import record_dir, tag_prefix


@dataclass(frozen=True)
class NodeWindow:
    """One node over one window; None where nothing was measured."""

    samples: int
    gpu_utilization_mean: float | None
    gpu_utilization_max: float | None
    gpu_power_w_mean: float | None
    gpu_power_w_max: float | None
    gpu_memory_used_mib_max: int | None
    host_load_mean: float | None
    host_mem_available_mib_min: int | None

    def to_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def _mean(values: list[float]) -> float | None:
    return fmean(values) if values else None


def summarise(replies: list[TelemetryReply]) -> NodeWindow:
    # several GPUs on a node: their utilisation averaged, their power and memory summed
    util = [fmean(g.utilization_pct for g in r.gpus if g.utilization_pct is not None)
            for r in replies if any(g.utilization_pct is not None for g in r.gpus)]
    power = [sum(g.power_w for g in r.gpus if g.power_w is not None)
             for r in replies if any(g.power_w is not None for g in r.gpus)]
    memory = [sum(g.memory_used_mib for g in r.gpus if g.memory_used_mib is not None)
              for r in replies if any(g.memory_used_mib is not None for g in r.gpus)]
    load = [r.host.load_1m for r in replies if r.host.load_1m is not None]
    free = [r.host.mem_available_mib for r in replies if r.host.mem_available_mib is not None]
    return NodeWindow(len(replies), _mean(util), max(util, default=None), _mean(power), max(power, default=None),
                      max(memory, default=None), _mean(load), min(free, default=None))


class TelemetrySampler:
    """Every `interval_s`, one telemetry round trip per node on a background thread."""

    def __init__(self, inventory: Inventory, *, interval_s: float = 2.0, connect: Connect = connect):
        self.inventory, self.interval_s, self.connect = inventory, interval_s, connect
        self.samples: list[tuple[float, str, TelemetryReply]] = []  # (time.time(), node, reply)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def _run(self) -> None:
        with self.connect(self.inventory) as nodes:
            while not self._stop.is_set():
                outcomes = nodes.call_all(
                    lambda n: TelemetryRequest(tag_prefix=tag_prefix(self.inventory.cluster, n),
                                               record_dir=record_dir(n, self.inventory.cluster)), timeout_s=30)
                now = time.time()
                for name, outcome in outcomes.items():
                    if outcome.value is not None:
                        self.samples.append((now, name, outcome.value))
                    else:
                        self.errors += 1
                self._stop.wait(self.interval_s)

    def __enter__(self) -> TelemetrySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def window(self, start: float, end: float) -> dict[str, NodeWindow]:
        by_node: dict[str, list[TelemetryReply]] = {}
        for at, node, reply in self.samples:
            if start <= at <= end:
                by_node.setdefault(node, []).append(reply)
        return {node: summarise(replies) for node, replies in by_node.items()}
