"""`sparkctl status --watch` and `sparkctl watch --restart`: the cluster sampled
every interval over kept connections, and a supervisor that restarts a wedged
or degraded cluster with evidence collected first.

The supervisor restarts only what it was asked to keep up: when the state file
is gone (a person ran `sparkctl down`), it stops. Restarts back off (doubling,
capped) and are limited per hour, because a restart loop leaks GB10 unified
memory: past the limit it gives up and says so.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sparkctl import jsontext
from sparkctl.agent.client import Connect, connect
from sparkctl.errors import InputError, SparkctlError
from sparkctl.inventory import Inventory
from sparkctl.observe.verdict import reason_dict
from sparkctl.ops.status import Observer, StatusResult
from sparkctl.playbook import Playbook
from sparkctl.progress import Reporter
from sparkctl.state import StateStore

RESTART_STATES = ("wedged", "degraded", "down")


def watch(inventory: Inventory, *, playbook: Playbook | None, interval_s: float, wedge_after_s: float,
          canary_timeout_s: float | None = None, api_key: str | None = None,
          connect: Connect = connect) -> Iterator[StatusResult]:
    """A sample every interval_s (the first at once), forever; the caller stops it."""
    with connect(inventory) as nodes:
        observer = Observer(inventory, nodes, playbook=playbook, wedge_after_s=wedge_after_s, api_key=api_key)
        while True:
            started = time.monotonic()
            yield observer.sample(canary_timeout_s=canary_timeout_s)
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))


@dataclass(frozen=True)
class SuperviseOptions:
    interval_s: float = 5.0
    grace_s: float = 60.0  # bad for this long before a restart
    max_restarts: int = 3  # per rolling hour
    backoff_s: float = 30.0  # wait after a restart, doubling, capped
    backoff_cap_s: float = 600.0
    wedge_after_s: float = 30.0
    canary_timeout_s: float | None = None
    evidence_dir: str = "sparkctl-evidence"


@dataclass
class SuperviseResult:
    outcome: str  # stopped-by-down | gave-up
    restarts: list[dict[str, object]] = field(default_factory=list)
    message: str = ""


def collect_evidence(folder: str, result: StatusResult, inventory: Inventory, raw_metrics: str | None) -> str:
    """status.json, each node's last 200 log lines and the /metrics text, in a timestamped folder."""
    from sparkctl.ops.logs import read_logs

    where = os.path.join(folder, time.strftime("%Y%m%d-%H%M%S") + f"-{inventory.cluster}")
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, "status.json"), "w", encoding="utf-8") as handle:
        handle.write(jsontext.dumps(result.to_dict()))
    try:
        logs = read_logs(inventory, node=None, lines=200)
    except SparkctlError as exc:
        logs = {"error": {"error": exc.message}}
    for node, entry in logs.items():
        with open(os.path.join(where, f"{node}.log"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(entry.get("lines", [])) if not entry.get("error") else f"error: {entry['error']}\n")
    if raw_metrics is not None:
        with open(os.path.join(where, "metrics.txt"), "w", encoding="utf-8") as handle:
            handle.write(raw_metrics)
    return where


def supervise(inventory: Inventory, playbook: Playbook, options: SuperviseOptions, reporter: Reporter, *,
              restart: Callable[[], None], api_key: str | None = None, connect: Connect = connect,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> SuperviseResult:
    """Sample until the cluster is stopped by a person (state file gone) or the
    restart budget is spent; restart (down, then up: `restart`) a cluster that
    stays wedged, degraded or down longer than the grace period."""
    store = StateStore.for_cluster(inventory.cluster)
    if store.load() is None:
        raise InputError(f"cluster {inventory.cluster!r} is not up (no state): start it with `sparkctl up` first")
    restarts: deque[float] = deque()
    history: list[dict[str, object]] = []
    backoff = options.backoff_s
    while True:
        bad_since: float | None = None
        with connect(inventory) as nodes:
            observer = Observer(inventory, nodes, playbook=playbook, wedge_after_s=options.wedge_after_s, api_key=api_key)
            while True:
                if store.load() is None:
                    return SuperviseResult("stopped-by-down", history, "the cluster was stopped with `sparkctl down`: "
                                                                       "not restarting it")
                result = observer.sample(canary_timeout_s=options.canary_timeout_s)
                now = clock()
                if result.state not in RESTART_STATES:
                    bad_since = None
                    if result.state == "serving":
                        backoff = options.backoff_s
                    sleep(options.interval_s)
                    continue
                bad_since = now if bad_since is None else bad_since
                reasons = "; ".join(r.message for r in result.reasons)
                reporter.event(None, f"{result.state} for {now - bad_since:.0f}s: {reasons}")
                if now - bad_since < options.grace_s:
                    sleep(options.interval_s)
                    continue
                while restarts and now - restarts[0] > 3600:
                    restarts.popleft()
                if len(restarts) >= options.max_restarts:
                    return SuperviseResult("gave-up", history,
                                           f"{result.state} and {len(restarts)} restart(s) in the last hour already "
                                           f"(--max-restarts {options.max_restarts}): giving up; restart loops leak "
                                           "GB10 unified memory, so look at the evidence and restart by hand")
                raw = observer.endpoint.request("GET", "/metrics").body.decode("utf-8", "replace") \
                    if observer.endpoint and result.health == 200 else None
                evidence = collect_evidence(options.evidence_dir, result, inventory, raw)
                reporter.event(None, f"evidence in {evidence}; restarting (down, then up)")
                break  # leave the session's connections before down/up open their own
        history.append({"at": time.time(), "state": result.state, "reasons": [reason_dict(r) for r in result.reasons],
                        "evidence": evidence})
        while True:
            restarts.append(clock())
            try:
                restart()
                break
            except SparkctlError as exc:
                # `up` stopped what it started and cleared the state: that is not a person's `down`
                history[-1]["error"] = exc.message
                reporter.event(None, f"restart failed: {exc.message}")
                if len(restarts) >= options.max_restarts:
                    return SuperviseResult("gave-up", history, f"the restart failed ({exc.message}) and the budget "
                                                               f"of {options.max_restarts} restart(s) an hour is spent")
                sleep(backoff)
                backoff = min(backoff * 2, options.backoff_cap_s)
        reporter.event(None, f"restarted; next check in {backoff:.0f}s")
        sleep(backoff)
        backoff = min(backoff * 2, options.backoff_cap_s)
