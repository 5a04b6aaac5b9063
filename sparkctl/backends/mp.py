"""vLLM's native multi-node backend (`--distributed-executor-backend mp`).

Node rank 0 (the head) serves HTTP; every other node runs `--headless` and
joins the torch.distributed rendezvous at the head's fabric address.
"""

from __future__ import annotations

from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import ProcessSpec, serve_argv
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook

# Always set for vLLM: unbuffered output so `up` sees start-up stages as they happen.
BASE_ENV = {"PYTHONUNBUFFERED": "1"}


def vllm_env(inventory: Inventory, playbook: Playbook, plan: HostPlan, node_name: str) -> dict[str, str]:
    """Precedence, lowest first: sparkctl's base, the network plan, the playbook,
    the inventory, the node's own env (the most specific setting wins)."""
    node = inventory.node(node_name)
    return {**BASE_ENV, **plan.env, **playbook.env, **inventory.env, **node.env}


def plan_mp(inventory: Inventory, playbook: Playbook, plans: dict[str, HostPlan]) -> list[ProcessSpec]:
    head = inventory.head
    ordered = [head, *inventory.workers]
    nnodes = len(ordered)
    common = serve_argv(playbook, "mp")
    if nnodes > 1:
        common += ["--nnodes", str(nnodes), "--master-addr", plans[head.name].master_addr, "--master-port", str(playbook.master_port)]
    common += list(playbook.vllm_args)
    specs = []
    for rank, node in enumerate(ordered):
        argv = list(common)
        if rank == 0:
            if nnodes > 1:
                argv += ["--node-rank", "0"]
            argv += ["--host", playbook.host, "--port", str(playbook.port)]
            ports: tuple[int, ...] = (playbook.port, playbook.master_port) if nnodes > 1 else (playbook.port,)
        else:
            argv += ["--node-rank", str(rank), "--headless"]
            ports = ()
        specs.append(
            ProcessSpec(
                node=node.name,
                role="vllm",
                argv=tuple(argv),
                env=vllm_env(inventory, playbook, plans[node.name], node.name),
                forward_env=playbook.forward_env,
                listen_ports=ports,
            )
        )
    return specs
