"""The cluster's verdict from what was observed: `serving`, `degraded`, `wedged`,
`down`, `stopped` (deliberately: nothing of it runs) or `unreachable`, each with
its reasons and the node they concern.

Pure functions over typed observations, so every rule is unit-tested without a
cluster. The rules, in order of precedence:
- a node does not answer over SSH: unreachable;
- nothing of the cluster runs anywhere: stopped (what `down` leaves; not a failure);
- the head's /health does not answer 200: down;
- a process of the cluster gone, stopped by a signal (T) or a zombie on any node:
  degraded (vLLM's own monitor watches only local processes: the head keeps
  answering 200 while a remote worker is dead or frozen); so are the backend's
  own problems (`other`: Ray missing a node, a replica behind the router not
  answering /health while the router serves through the others);
- requests running and no token generated (nor prompt token processed) for
  longer than the wedge threshold, or a canary request that timed out: wedged
  (GPU power near idle at high utilisation is listed as supporting evidence);
- otherwise serving.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparkctl.findings import Finding, Severity

# GB10 under a deadlocked kernel: about 16-27 W at ~95% "utilisation"; healthy decode 45-90 W.
IDLE_POWER_W = 30.0
BUSY_UTILISATION_PCT = 80.0

STATES = ("serving", "degraded", "wedged", "down", "stopped", "unreachable")


# A verdict's reasons are findings: ERROR for what makes the cluster unreachable, down,
# degraded or wedged (codes: unreachable, health, process-gone|stopped|zombie, ray,
# replica-health, tokens-frozen, canary), INFO for supporting evidence (gpu-idle-power), OK for `stopped`.


def reason_dict(reason: Finding) -> dict[str, str | None]:
    """A reason in `status --json` and `watch`'s history: no severity (the state says it)."""
    return {"code": reason.code, "node": reason.node, "message": reason.message}


@dataclass(frozen=True)
class ProcessView:
    node: str
    role: str  # vllm, ray, ...
    pid: int
    state: str  # running | stopped | zombie | gone


@dataclass(frozen=True)
class GpuView:
    node: str
    utilization_pct: float | None
    power_w: float | None


@dataclass(frozen=True)
class Progress:
    """The endpoint's token counters over a window (from /metrics)."""

    window_s: float
    running: float | None  # requests running at the end of the window
    generation_delta: float | None
    prompt_delta: float | None

    @property
    def frozen(self) -> bool:
        return bool(self.running) and self.generation_delta == 0 and not self.prompt_delta


@dataclass(frozen=True)
class Observation:
    unreachable: tuple[str, ...]
    anything_running: bool
    health: int | None
    processes: tuple[ProcessView, ...]
    progress: Progress | None  # None: no /metrics, or one sample only
    frozen_for_s: float | None  # how long tokens have been frozen, across samples (watch), else the window
    canary: str | None  # None: not sent; "ok"; or what went wrong ("timeout after 10s", "HTTP 500")
    gpus: tuple[GpuView, ...] = ()
    other: tuple[Finding, ...] = ()  # from the backend (Ray's membership)


@dataclass(frozen=True)
class Verdict:
    state: str
    reasons: tuple[Finding, ...]

    @property
    def exit_code(self) -> int:
        return {"serving": 0, "stopped": 0, "unreachable": 3}.get(self.state, 1)


def process_state(alive: bool, stat_state: str | None) -> str:
    """running | stopped | zombie | gone, from a record's liveness and /proc's state letter."""
    if not alive:
        return "gone"
    if stat_state in ("T", "t"):
        return "stopped"
    if stat_state in ("Z", "X"):
        return "zombie"
    return "running"


def _process_reasons(processes: tuple[ProcessView, ...]) -> list[Finding]:
    words = {"gone": "is gone", "stopped": "is stopped (T state: SIGSTOP or a debugger)", "zombie": "is a zombie"}
    return [
        Finding(f"process-{p.state}", Severity.ERROR, f"{p.role} (pid {p.pid}) on {p.node} {words[p.state]}", node=p.node)
        for p in processes if p.state != "running"
    ]


def _gpu_evidence(gpus: tuple[GpuView, ...]) -> list[Finding]:
    return [
        Finding("gpu-idle-power", Severity.INFO, f"GPU on {g.node} at {g.utilization_pct:.0f}% utilisation but "
                f"{g.power_w:.0f} W (a deadlocked kernel looks like this on GB10; healthy decode draws 45-90 W)", node=g.node)
        for g in gpus
        if g.power_w is not None and g.utilization_pct is not None
        and g.power_w < IDLE_POWER_W and g.utilization_pct >= BUSY_UTILISATION_PCT
    ]


def judge(obs: Observation, *, wedge_after_s: float) -> Verdict:
    if obs.unreachable:
        return Verdict("unreachable", tuple(Finding("unreachable", Severity.ERROR, f"{n} does not answer over SSH", node=n)
                                           for n in obs.unreachable))
    if not obs.anything_running:
        return Verdict("stopped", (Finding("stopped", Severity.OK, "nothing of this cluster runs on any node"),))
    dead = _process_reasons(obs.processes)
    if obs.health != 200:
        said = "no answer" if obs.health is None else f"HTTP {obs.health}"
        return Verdict("down", (Finding("health", Severity.ERROR, f"the head's /health: {said}"), *dead))
    if dead or obs.other:
        return Verdict("degraded", (*dead, *obs.other))
    wedge: list[Finding] = []
    p = obs.progress
    if p is not None and p.frozen:
        looked = obs.frozen_for_s if obs.frozen_for_s is not None else p.window_s
        if looked >= wedge_after_s or obs.frozen_for_s is None:
            how = "sampled" if obs.frozen_for_s is None else "across samples"
            wedge.append(Finding("tokens-frozen", Severity.ERROR, f"{p.running:g} request(s) running and no token generated for "
                                f"{looked:.1f} s ({how}; /health still answers 200)"))
    if obs.canary is not None and obs.canary != "ok":
        wedge.append(Finding("canary", Severity.ERROR, f"a one-token canary request failed: {obs.canary}"))
    if wedge:
        return Verdict("wedged", (*wedge, *_gpu_evidence(obs.gpus)))
    return Verdict("serving", ())
