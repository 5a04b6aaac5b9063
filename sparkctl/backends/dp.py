"""vLLM's own data parallel across nodes (`data_parallel_size: N`).

One `vllm serve` per node: the head runs the API server and its local engines,
every other node runs `--headless` engines from its first global DP rank; all of
them meet at the head's DP RPC port. Each engine holds tp x pp GPUs inside one
node, so a node with G GPUs runs G / (tp x pp) engines.

What vLLM (0.32/0.33) does with it, from its source:
  * dense models: the engines are independent (v1/engine/core.py: "Non-MoE DP ranks
    are completely independent, so treat like DP=1"); the API server balances
    requests over them. `--enable-expert-parallel` has no experts to place.
  * MoE models: the engines step together (DPEngineCoreProc, dummy batches for idle
    ranks) and `--enable-expert-parallel` spreads the experts over tp x dp GPUs.
"""

from __future__ import annotations

import json
import os

from sparkctl.backends.mp import vllm_env
from sparkctl.errors import InputError
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import ProcessSpec, serve_argv
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook

_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def engines_per_node(inventory: Inventory, playbook: Playbook) -> int:
    return max(1, inventory.nodes[0].gpus // playbook.world_size)


def plan_dp(inventory: Inventory, playbook: Playbook, hosts: dict[str, HostPlan]) -> list[ProcessSpec]:
    refuse_unsupported(playbook)
    ordered = [inventory.head, *inventory.workers]
    local = engines_per_node(inventory, playbook)
    common = serve_argv(playbook, "mp") + [
        "--data-parallel-size", str(playbook.data_parallel_size),
        "--data-parallel-size-local", str(local),
        "--data-parallel-address", hosts[inventory.head.name].master_addr,
        "--data-parallel-rpc-port", str(playbook.data_parallel_rpc_port),
    ]
    if playbook.enable_expert_parallel:
        common.append("--enable-expert-parallel")
    common += list(playbook.vllm_args)
    specs = []
    for index, node in enumerate(ordered):
        argv = list(common)
        if index == 0:
            argv += ["--host", playbook.host, "--port", str(playbook.port)]
            ports: tuple[int, ...] = (playbook.port, playbook.data_parallel_rpc_port)
        else:
            argv += ["--headless", "--data-parallel-start-rank", str(index * local)]
            ports = ()
        specs.append(ProcessSpec(node=node.name, role="vllm", argv=tuple(argv),
                                 env=vllm_env(inventory, playbook, hosts[node.name], node.name),
                                 forward_env=playbook.forward_env, listen_ports=ports))
    return specs


def model_is_moe(playbook: Playbook) -> bool | None:
    """From the model's config.json on the controller; None when it cannot be read (a hub id)."""
    path = os.path.join(playbook.model, "config.json")
    if not playbook.model_is_path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    sections = [config, config.get("text_config") or {}]
    return any(isinstance(s, dict) and (s.get(k) or 0) > 1 for s in sections for k in _EXPERT_KEYS)


def refuse_unsupported(playbook: Playbook) -> None:
    """What vLLM would reject or silently ignore, refused before anything starts."""
    if playbook.enable_expert_parallel and model_is_moe(playbook) is False:
        raise InputError(
            f"{playbook.path}: enable_expert_parallel is set, but {playbook.model} is a dense model (no experts in "
            "its config.json): expert parallelism places the experts of an MoE model",
            hint="remove enable_expert_parallel; data_parallel_size alone runs independent engines for dense models",
        )
