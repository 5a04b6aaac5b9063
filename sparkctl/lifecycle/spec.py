"""What a backend plans for one node (ProcessSpec), where a node keeps sparkctl's files, and the
tag and status request that find them again."""

from __future__ import annotations

from dataclasses import dataclass

from sparkctl.agent.protocol import LogCursor, StatusRequest
from sparkctl.inventory import Node
from sparkctl.playbook import Playbook


@dataclass(frozen=True)
class ProcessSpec:
    """One process to start on one node, fully planned on the controller."""

    node: str
    role: str  # name of the process kind, e.g. "vllm"; also its log and record name
    argv: tuple[str, ...]
    env: dict[str, str]
    forward_env: tuple[str, ...] = ()  # names read from the controller's environment at launch; never stored
    listen_ports: tuple[int, ...] = ()
    # folders the process writes in that must be this user's alone (Ray's temp dir in /tmp)
    private_dirs: tuple[str, ...] = ()


def node_dir(node: Node, cluster: str) -> str:
    return f"{node.workdir.rstrip('/')}/{cluster}/{node.name}"


def log_path(node: Node, cluster: str, role: str) -> str:
    return f"{node_dir(node, cluster)}/{role}.log"


def record_dir(node: Node, cluster: str) -> str:
    return f"{node_dir(node, cluster)}/procs"


def tag_prefix(cluster: str, node: Node, role: str | None = None) -> str:
    """SPARKCTL_TAG is <cluster>/<node>/<role>/<launch id>: `down` matches the
    node's prefix (everything), a probe's cleanup only its own role."""
    prefix = f"{cluster}/{node.name}/"
    return f"{prefix}{role}/" if role else prefix


def status_request(cluster: str, node: Node, role: str | None = None, *,
                   logs: tuple[LogCursor, ...] = ()) -> StatusRequest:
    """The agent's `status` of what this cluster (or one role of it) runs on node."""
    return StatusRequest(tag_prefix=tag_prefix(cluster, node, role), record_dir=record_dir(node, cluster), logs=logs)


def serve_argv(playbook: Playbook, executor: str) -> list[str]:
    """`vllm serve` with what every serving backend passes: the model, its name,
    the parallel layout and the executor."""
    return [
        *playbook.vllm_command,
        "serve",
        playbook.model,
        "--served-model-name",
        playbook.served_model_name,
        "--tensor-parallel-size",
        str(playbook.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(playbook.pipeline_parallel_size),
        "--distributed-executor-backend",
        executor,
    ]
