#!/usr/bin/env python3
"""How much time does `sparkctl up` add to starting vLLM by hand?

On the built-in local pair (inventories/local.yaml + playbooks/tiny-cpu.yaml)
this alternates, for several rounds:

  hand  the same two `vllm serve` commands `up` starts (argv and environment
        from sparkctl's own planner, computed once before the rounds), started
        as plain subprocesses and polled until one completion succeeds;
  up    `sparkctl up` until it exits ready (it has seen a completion succeed),
        then `sparkctl down` (not timed).

The order flips every round (hand/up, up/hand, ...) so drift of a noisy machine
hits both alike. It prints each round's times and the median of the paired
differences (up - hand): sparkctl's overhead. Exit status 0 when that median is
under --budget seconds (default 2), 2 when above, 1 when a run failed.

Usage: python scripts/bench_up_overhead.py [--rounds 3] [--budget 2] [--json]
Runs vLLM: use the shared lock on machines where tests run too
(flock /tmp/sparkctl-heavy.lock python scripts/bench_up_overhead.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sparkctl.agent.client import connect  # noqa: E402 - after the path setup above
from sparkctl.backends.mp import plan_mp  # noqa: E402
from sparkctl.checks import ClusterSpec  # noqa: E402
from sparkctl.inventory import load_inventory  # noqa: E402
from sparkctl.ops.check import host_plans, reachable_facts  # noqa: E402
from sparkctl.playbook import load_playbook  # noqa: E402
from sparkctl.serve.endpoint import Endpoint, endpoint_url  # noqa: E402

INVENTORY = ROOT / "inventories" / "local.yaml"
PLAYBOOK = ROOT / "playbooks" / "tiny-cpu.yaml"
POLL_S = 0.1  # by hand polls tighter than anyone would: the comparison favours "hand"


def planned_commands() -> list[tuple[list[str], dict[str, str]]]:
    """The argv and environment `up` would start on each node (head first)."""
    inventory, playbook = load_inventory(str(INVENTORY)), load_playbook(str(PLAYBOOK))
    spec = ClusterSpec.from_config(inventory, playbook)
    with connect(inventory) as nodes:
        plans = host_plans(spec, reachable_facts(nodes, spec, inventory))
    return [(list(s.argv), dict(s.env)) for s in plan_mp(inventory, playbook, plans)]


def by_hand(commands: list[tuple[list[str], dict[str, str]]], endpoint: Endpoint, model: str, logs: Path) -> float:
    started = time.monotonic()
    procs = []
    try:
        for i, (argv, env) in enumerate(commands):
            log = open(logs / f"hand-{i}.log", "ab")
            procs.append(subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.path.expanduser("~")))
        while True:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a vLLM started by hand exited (logs in {logs})")
            if endpoint.health().status == 200 and endpoint.complete(model).status == 200:
                return time.monotonic() - started
            time.sleep(POLL_S)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wait_port_free(endpoint)


def wait_port_free(endpoint: Endpoint, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and endpoint.health().status is not None:
        time.sleep(0.2)
    time.sleep(1.0)  # the workers' rendezvous port closes after the HTTP server's


def sparkctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sparkctl", *args, "-i", str(INVENTORY), "-p", str(PLAYBOOK)],
                          cwd=ROOT, capture_output=True, text=True)


def with_up(endpoint: Endpoint) -> tuple[float, dict[str, float]]:
    started = time.monotonic()
    result = sparkctl("up", "--json")
    elapsed = time.monotonic() - started
    try:
        if result.returncode != 0:
            raise RuntimeError(f"sparkctl up exited {result.returncode}: {result.stderr[-2000:]}")
        return elapsed, json.loads(result.stdout).get("timings", {})
    finally:
        sparkctl("down")
        wait_port_free(endpoint)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=2.0, help="allowed median overhead in seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1 or args.budget <= 0:
        parser.error("--rounds must be >= 1 and --budget > 0")
    inventory, playbook = load_inventory(str(INVENTORY)), load_playbook(str(PLAYBOOK))
    endpoint = Endpoint(endpoint_url(inventory, playbook), timeout_s=5)
    sparkctl("down")  # nothing of an earlier run may compete
    commands = planned_commands()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-up-") as logs:
        for i in range(args.rounds):
            order = ("hand", "up") if i % 2 == 0 else ("up", "hand")
            row: dict[str, object] = {"round": i + 1, "order": "/".join(order)}
            for side in order:
                if side == "hand":
                    row["hand_s"] = round(by_hand(commands, endpoint, playbook.served_model_name, Path(logs)), 2)
                else:
                    up_s, timings = with_up(endpoint)
                    row["up_s"], row["up_timings"] = round(up_s, 2), timings
            row["overhead_s"] = round(float(row["up_s"]) - float(row["hand_s"]), 2)  # type: ignore[arg-type]
            rounds.append(row)
            if not args.json:
                print(f"round {row['round']} ({row['order']}): by hand {row['hand_s']:.2f}s, "
                      f"sparkctl up {row['up_s']:.2f}s, overhead {row['overhead_s']:+.2f}s "
                      f"(up's preflight {timings.get('preflight_s')}s)", flush=True)
    median = statistics.median(float(r["overhead_s"]) for r in rounds)  # type: ignore[arg-type]
    summary = {"rounds": rounds, "median_overhead_s": round(median, 2), "budget_s": args.budget,
               "median_hand_s": statistics.median(float(r["hand_s"]) for r in rounds),  # type: ignore[arg-type]
               "median_up_s": statistics.median(float(r["up_s"]) for r in rounds)}  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"median: by hand {summary['median_hand_s']:.2f}s, sparkctl up {summary['median_up_s']:.2f}s, "
              f"overhead {median:+.2f}s (budget {args.budget:.1f}s)")
    return 0 if median < args.budget else 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError) as exc:
        print(f"bench_up_overhead: {exc}", file=sys.stderr)
        sys.exit(1)
