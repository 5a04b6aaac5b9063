"""What the checks and the network plan need to know about the cluster, from
the inventory and the playbook (or built directly in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from sparkctl.layouts import layout_ports

if TYPE_CHECKING:  # imported lazily so the checks stay usable without pydantic models
    from sparkctl.inventory import Inventory
    from sparkctl.playbook import Playbook

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
DEFAULT_CPU_KVCACHE_GIB = 4.0  # vLLM CPU's default VLLM_CPU_KVCACHE_SPACE


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: str = "worker"  # "head" | "worker"
    host: str = "127.0.0.1"
    fabric_ip: str | None = None
    gpus: int = 1
    env: Mapping[str, str] = field(default_factory=dict)  # nodes[].env
    ports: tuple[int, ...] = ()  # what sparkctl will listen on there


@dataclass(frozen=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    cluster: str = "cluster"
    fabric_interface: str | None = None
    fabric_hcas: tuple[str, ...] | None = None
    fabric_mtu: int | None = None
    inventory_env: Mapping[str, str] = field(default_factory=dict)
    playbook_env: Mapping[str, str] = field(default_factory=dict)
    backend: str = "mp"
    model_path: str | None = None  # absolute path, or None for a hub id / no playbook
    load_format: str | None = None  # from vllm_args (--load-format)
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    world_size: int | None = None
    cpu_only: bool | None = None  # None: inferred from the facts (vllm-cpu installed everywhere)
    vllm_command: tuple[str, ...] | None = None
    vllm_python: str | None = None

    @property
    def head(self) -> NodeSpec:
        return next((n for n in self.nodes if n.role == "head"), self.nodes[0])

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def config_env(self, name: str) -> dict[str, tuple[str, str]]:
        """{var: (value, where it was set)} as vLLM gets it from sparkctl's
        configuration: playbook env, then inventory env, then the node's env (the
        node wins), like backends.mp.vllm_env."""
        out: dict[str, tuple[str, str]] = {}
        for source, env in (("playbook env", self.playbook_env), ("inventory env", self.inventory_env),
                            (f"nodes[{name}].env", self.node(name).env)):
            for key, value in env.items():
                out[key] = (value, source)
        return out

    def env_values(self, name: str) -> dict[str, str]:
        return {key: value for key, (value, _) in self.config_env(name).items()}

    @classmethod
    def from_config(cls, inventory: Inventory, playbook: Playbook | None = None) -> ClusterSpec:
        multi = len(inventory.nodes) > 1
        nodes = []
        ordered = [inventory.head, *inventory.workers]
        for n in inventory.nodes:
            ports: tuple[int, ...] = ()
            if playbook is not None and n.is_head:
                # Ray's GCS port is not listed: `up` moves to the next free one when it is taken.
                rendezvous = multi and playbook.backend == "mp"
                ports = (playbook.port,) + ((playbook.master_port,) if rendezvous else ())
            if playbook is not None:
                ports += layout_ports(playbook, ordered.index(n), n.gpus)
            nodes.append(NodeSpec(name=n.name, role=n.role, host=n.host, fabric_ip=n.fabric_ip, gpus=n.gpus,
                                  env=dict(n.env), ports=ports))
        kwargs: dict = {}
        if playbook is not None:
            args = list(playbook.vllm_args)
            kwargs = {
                "playbook_env": dict(playbook.env),
                "backend": playbook.backend,
                "model_path": playbook.model if playbook.model_is_path else None,
                "load_format": vllm_arg(args, "--load-format"),
                "gpu_memory_utilization": float_or(vllm_arg(args, "--gpu-memory-utilization"),
                                                 DEFAULT_GPU_MEMORY_UTILIZATION),
                "world_size": playbook.world_size,
                "cpu_only": True if {**playbook.env, **inventory.env}.get("VLLM_TARGET_DEVICE") == "cpu" else None,
                "vllm_command": tuple(playbook.vllm_command),
            }
        return cls(
            nodes=tuple(nodes),
            cluster=inventory.cluster,
            fabric_interface=inventory.fabric.interface,
            fabric_hcas=tuple(inventory.fabric.hcas) if inventory.fabric.hcas else None,
            fabric_mtu=inventory.fabric.mtu,
            inventory_env=dict(inventory.env),
            **kwargs,
        )


def vllm_arg(args: list[str], flag: str) -> str | None:
    """The value of `flag` in a vLLM argv ('--flag value' or '--flag=value'), last one wins."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def float_or(text: str | None, default: float) -> float:
    """A number from a setting, or the default when it is absent, empty or not a number."""
    try:
        return float(text) if text not in (None, "") else default
    except ValueError:
        return default
