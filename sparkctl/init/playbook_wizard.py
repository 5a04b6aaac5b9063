"""`sparkctl init --playbook MODEL -i INV`: a commented playbook whose layout and
memory settings come from the weights' size against each node's memory."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any, Callable

from sparkctl.agent.client import connect
from sparkctl.checks import ClusterSpec
from sparkctl.checks.fabric import section
from sparkctl.errors import InputError, OperationFailed
from sparkctl.init.sizing import Layout, ModelSize, estimate_layout, model_size
from sparkctl.init.write_inventory import write_checked
from sparkctl.inventory import Inventory, load_inventory
from sparkctl.ops.check import reachable_facts
from sparkctl.playbook import check_against_inventory, load_playbook


def node_memory(inventory: Inventory) -> int:
    """The smallest node's total memory, from the facts `check` gathers."""
    spec = ClusterSpec.from_config(inventory, None)
    with connect(inventory) as nodes:
        facts = reachable_facts(nodes, spec, inventory)
    totals = [(section(f, "memory") or {}).get("mem_total_bytes") for f in facts.by_node.values()]
    known = [t for t in totals if isinstance(t, int) and t > 0]
    if not known or len(known) != len(totals):
        raise OperationFailed("a node did not report its memory", details=[str(t) for t in totals])
    return min(known)


def render_playbook(model: ModelSize, layout: Layout, inventory: Inventory, memory: int, command: str) -> str:
    name = os.path.basename(os.path.normpath(model.path))
    created = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [
        f"# Written by `{command}` on {created}",
        f"# for {inventory.cluster}: {len(inventory.nodes)} node(s) x {inventory.nodes[0].gpus} GPU, "
        f"{memory / 2**30:.1f} GiB memory on the smallest.",
        "# Sizes are sparkctl's own estimate (weights / GPUs; KV cache from config.json);",
        "# `sparkctl check -p` verifies the model and the free memory on every node before `up`.",
        f"# weights: {layout.why['weights']}",
        f"model: {json.dumps(os.path.abspath(model.path))}   # the same absolute path must exist on every node",
        f"served_model_name: {json.dumps(name)}",
        "backend: mp                 # vLLM's native multi-node launch: nothing beyond vLLM on the nodes",
        f"tensor_parallel_size: {layout.tensor_parallel_size}      # {layout.why['tensor_parallel_size']}",
        f"pipeline_parallel_size: {layout.pipeline_parallel_size}",
        "vllm_args:",
        "  - --max-model-len",
        f'  - "{layout.max_model_len}"      # {layout.why["max_model_len"]}',
        "  - --gpu-memory-utilization",
        f'  - "{layout.gpu_memory_utilization:.2f}"      # {layout.why["gpu_memory_utilization"]}',
        "env:",
        '  HF_HUB_OFFLINE: "1"         # the weights are local: never reach out to the Hub at start-up',
    ]
    return "\n".join(lines) + "\n"


def playbook_command(args: argparse.Namespace, print_json: Callable[[Any], None]) -> int:
    path = args.inventory or os.environ.get("SPARKCTL_INVENTORY")
    if not path:
        raise InputError("--playbook needs the inventory (-i INVENTORY)", hint="sparkctl init --playbook MODEL -i INV")
    model = model_size(args.playbook_model)
    output = args.output or os.path.join("playbooks", os.path.basename(os.path.normpath(model.path)) + ".yaml")
    if os.path.exists(output) and not args.force:
        raise InputError(f"{output} exists; not overwritten", hint="choose another -o, or pass --force to replace it")
    inventory = load_inventory(path)
    memory = node_memory(inventory)
    layout = estimate_layout(model, len(inventory.nodes), inventory.nodes[0].gpus, memory)
    if not layout.fits:
        raise OperationFailed(f"{model.path} does not fit: {layout.why['weights']}, more than the "
                              f"{layout.gpu_memory_utilization:.2f} of {memory / 2**30:.1f} GiB vLLM may use per node",
                              hint="add nodes, or use a quantized (FP8/NVFP4) checkpoint")
    text = render_playbook(model, layout, inventory, memory, args.command_line)
    write_checked(output, text, force=args.force, load=load_playbook)
    problems = check_against_inventory(load_playbook(output), inventory)
    if problems:
        raise OperationFailed("the written playbook does not fit the inventory (a bug in init)", details=problems)
    result = {"playbook": output, "tensor_parallel_size": layout.tensor_parallel_size,
              "pipeline_parallel_size": layout.pipeline_parallel_size, "max_model_len": layout.max_model_len,
              "gpu_memory_utilization": layout.gpu_memory_utilization, "weights_bytes": model.weights_bytes,
              "why": layout.why}
    if args.json:
        print_json(result)
    else:
        print(open(output, encoding="utf-8").read(), end="")
        print(f"playbook: {output}")
    return 0
