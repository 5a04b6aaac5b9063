"""The per-host network plan's data type: which address and interface one node
uses for vLLM's control plane, gloo/NCCL bootstrap and the rendezvous.

sparkctl.checks.plan.derive_plan fills it from each host's own facts (never the
head's values copied to workers); the backends read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostPlan:
    node: str
    address: str
    interface: str | None
    master_addr: str
    env: dict[str, str]
    why: dict[str, str] = field(default_factory=dict)
