"""torchrun groups across the nodes (probes and offline SPMD jobs).

One `torchrun` per node: `--nnodes N --node-rank R --nproc-per-node G
--rdzv-endpoint HEAD:PORT` (static rendezvous at the head's fabric address),
with each host's own network plan in its environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import ProcessSpec
from sparkctl.netplan import HostPlan

BASE_ENV = {"PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class TorchrunJob:
    role: str  # "probe", "job": names the logs and records, and scopes the cleanup
    python: str  # interpreter on the nodes that has torch
    program: tuple[str, ...]  # what torchrun runs: (script, args...) or ("-m", module, args...)
    master_port: int
    nproc_per_node: int = 1
    env: dict[str, str] = field(default_factory=dict)
    forward_env: tuple[str, ...] = ()


def plan_torchrun(inventory: Inventory, plans: dict[str, HostPlan], job: TorchrunJob) -> list[ProcessSpec]:
    ordered = [inventory.head, *inventory.workers]
    endpoint = f"{plans[inventory.head.name].master_addr}:{job.master_port}"
    specs = []
    for rank, node in enumerate(ordered):
        argv = [
            job.python, "-m", "torch.distributed.run",
            "--nnodes", str(len(ordered)),
            "--node-rank", str(rank),
            "--nproc-per-node", str(job.nproc_per_node),
            "--rdzv-endpoint", endpoint,
            *job.program,
        ]
        env = {**BASE_ENV, **plans[node.name].env, **job.env, **inventory.env, **node.env}
        ports = (job.master_port,) if rank == 0 else ()
        specs.append(ProcessSpec(node.name, job.role, tuple(argv), env, job.forward_env, ports))
    return specs
