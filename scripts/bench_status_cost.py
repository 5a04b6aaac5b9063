#!/usr/bin/env python3
"""What `sparkctl status --watch` costs per sample: the controller's CPU time
and each node's (the agent process one round trip starts there), and the wall
time of a sample, over N samples of a running cluster.

On the built-in local pair the nodes' agents are the controller's children, so
their CPU time is read from RUSAGE_CHILDREN; over SSH a node's share is the same
agent program plus sshd's work on a kept connection.

    python scripts/bench_status_cost.py -i inventories/local.yaml [-n 20]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparkctl.agent.client import connect  # noqa: E402
from sparkctl.inventory import load_inventory  # noqa: E402
from sparkctl.ops.status import Observer  # noqa: E402


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--inventory", required=True)
    parser.add_argument("-n", "--samples", type=int, default=20)
    args = parser.parse_args()
    inventory = load_inventory(args.inventory)
    with connect(inventory) as nodes:
        observer = Observer(inventory, nodes)
        observer.sample()  # the first connection and the agent's compile cache are one-time costs
        walls, mine, agents = [], [], []
        for _ in range(args.samples):
            self0, kids0, wall0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
            result = observer.sample()
            walls.append(time.perf_counter() - wall0)
            mine.append(cpu(resource.RUSAGE_SELF) - self0)
            agents.append((cpu(resource.RUSAGE_CHILDREN) - kids0) / len(inventory.nodes))
    print(f"{args.samples} samples of {inventory.cluster} ({len(inventory.nodes)} nodes, state {result.state}):")
    print("| per sample | median | max |\n|---|---|---|")
    for name, values in (("wall time", walls), ("controller CPU", mine), ("one node's agent CPU", agents)):
        print(f"| {name} | {statistics.median(values) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
