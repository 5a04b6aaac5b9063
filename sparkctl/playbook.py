"""The playbook: what to serve and how vLLM is started on the nodes.

Validated as strictly as the inventory. Paths written relative to the
playbook (`./models/x`, `../.venv/bin/python`) are made absolute here, on the
controller, so that a playbook in a repository works from any directory; they
must exist at the same absolute path on every node, like the model itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sparkctl.inventory import Inventory
from sparkctl.layouts import layout_fit, layout_problems
from sparkctl.strictyaml import LoadedYaml, Problem
from sparkctl.validation import (
    Env,
    EnvName,
    Host,
    Port,
    Text,
    load_strict,
)

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)

# Flags that sparkctl sets itself from playbook keys and the inventory; passing
# them in vllm_args would contradict what sparkctl plans for each node.
RESERVED_VLLM_FLAGS = {
    "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size",
    "-pp": "pipeline_parallel_size",
    "--nnodes": "the inventory's node list",
    "-n": "the inventory's node list",
    "--node-rank": "the inventory's node order",
    "-r": "the inventory's node order",
    "--master-addr": "the inventory's head node",
    "--master-port": "master_port",
    "--headless": "the inventory's roles",
    "--host": "host",
    "--port": "port",
    "--served-model-name": "served_model_name",
    "--distributed-executor-backend": "backend",
    "--data-parallel-size": "data_parallel_size",
    "-dp": "data_parallel_size",
    "--data-parallel-size-local": "data_parallel_size and the inventory's GPUs per node",
    "-dpl": "data_parallel_size and the inventory's GPUs per node",
    "--data-parallel-start-rank": "the inventory's node order",
    "-dpr": "the inventory's node order",
    "--data-parallel-address": "the inventory's head node",
    "-dpa": "the inventory's head node",
    "--data-parallel-rpc-port": "data_parallel_rpc_port",
    "-dpp": "data_parallel_rpc_port",
    "--api-key": "forward_env: [VLLM_API_KEY] (keeps the key out of argv)",
    "--hf-token": "forward_env: [HF_TOKEN] (keeps the token out of argv)",
}

SERVING_BACKENDS = ("mp", "ray")

# vllm-router 0.1.17's --policy choices; power_of_two is its least-load policy
# (the less loaded of two random workers), cache_aware its prefix-affinity one.
ROUTER_POLICIES = ("round_robin", "power_of_two", "cache_aware", "random", "consistent_hash",
                   "sticky_least_loaded", "kv_aware")

# `ray start` flags that sparkctl sets itself (per node, from the inventory and
# the `ray:` keys); passing them in ray.extra_args would contradict the plan.
RESERVED_RAY_FLAGS = {
    "--head": "the inventory's head node",
    "--address": "the inventory's head node and ray.gcs_port",
    "--block": "sparkctl (it owns each node's Ray by that process's pid)",
    "--node-ip-address": "nodes[].fabric_ip (each node's own fabric address)",
    "--port": "ray.gcs_port",
    "--num-gpus": "ray.num_gpus_per_node",
    "--temp-dir": "sparkctl (a short per-node folder, see docs/backends.md)",
    "--resources": "sparkctl (it tags every node with its inventory name)",
    "--object-store-memory": "ray.object_store_memory_mb",
    "--include-dashboard": "ray.dashboard",
    "--dashboard-host": "ray.dashboard (the dashboard listens on 127.0.0.1 only)",
    "--disable-usage-stats": "sparkctl (always disabled)",
}



def reserved_flag(arg: str, reserved: dict[str, str]) -> str | None:
    """The reserved flag an argv element would set, in any spelling the parser accepts.

    vLLM's parser (vllm/utils/argparse_utils.py, FlexibleArgumentParser, checked on 0.32)
    turns `_` into `-` in a `--` option's name up to the first '.', reads `--name.key v`
    as a JSON form of `--name`, and splits `--name=value`. It leaves argparse's
    allow_abbrev on, so a unique prefix is the option (`--api-k`, `--head` for
    --headless, `-t` for -tp) and a one-letter option takes its value attached (`-n3`).
    No vLLM option is a strict prefix of a reserved one, so refusing every prefix
    refuses nothing else. Ray's `ray start` (Click) knows exact names only; the same
    reading refuses there what Click would refuse anyway.
    """
    if not arg.startswith("-") or len(arg) < 2 or not (arg[1].isalpha() or arg[1] in "-_"):
        return None  # a value: a word, "-", a negative number
    name = arg.split("=", 1)[0].split(".", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    if name == "--":
        return None
    for flag in reserved:
        if flag.startswith(name) or (len(flag) == 2 and name.startswith(flag)):
            return flag
    return None


def _guard_flags(args: list[str], reserved: dict[str, str], loc: tuple, loaded: LoadedYaml, use: str) -> list[Problem]:
    problems = []
    for i, arg in enumerate(args):
        flag = reserved_flag(arg, reserved)
        if flag is not None:
            # The name only: the value after '=' may be the very secret being kept out.
            written = arg.split("=", 1)[0]
            what = flag if written == flag else f"{written} is {flag}, which"
            problems.append(loaded.problem(loc + (i,), f"{what} is set by sparkctl; use {use}{reserved[flag]}"))
    return problems


def _not_an_option(value: str | None, loc: tuple, loaded: LoadedYaml) -> list[Problem]:
    """vLLM (or the shell-less exec) would read a leading '-' as an option, e.g. `model: --api-key=...`."""
    if value is not None and value.startswith("-"):
        return [loaded.problem(loc, "must not start with '-' (it would be read as an option)")]
    return []


class RaySection(BaseModel):
    """`ray:`: how sparkctl brings up Ray for `backend: ray` (ignored with mp)."""

    model_config = _STRICT

    command: list[Text] | None = Field(default=None, min_length=1)
    gcs_port: Port = 6379
    num_gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    object_store_memory_mb: int | None = Field(default=None, ge=80, le=4 * 1024 * 1024)
    dashboard: bool = False
    extra_args: list[Text] = Field(default_factory=list)
    join_timeout_s: float = Field(default=180.0, gt=0, le=3600)


class RouterSection(BaseModel):
    """`router:`: the vllm-router in front of `replicas` (ignored otherwise)."""

    model_config = _STRICT

    policy: Literal[ROUTER_POLICIES] = "round_robin"  # type: ignore[valid-type]
    command: list[Text] | None = Field(default=None, min_length=1)
    metrics_port: Port = 29000  # the router's own Prometheus endpoint (its default), on 127.0.0.1


class VllmSection(BaseModel):
    model_config = _STRICT

    command: list[Text] | None = Field(default=None, min_length=1)
    python: Text | None = None


class PlaybookFile(BaseModel):
    model_config = _STRICT

    model: Text = Field(min_length=1)
    served_model_name: Text | None = Field(default=None, min_length=1)
    backend: str = "mp"
    tensor_parallel_size: int = Field(default=1, ge=1, le=1024)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=1024)
    data_parallel_size: int = Field(default=1, ge=1, le=1024)
    enable_expert_parallel: bool = False
    data_parallel_rpc_port: Port = 29550
    replicas: int = Field(default=1, ge=1, le=1024)
    replica_port: Port | None = None
    router: RouterSection = Field(default_factory=RouterSection)
    host: Host = "0.0.0.0"
    port: Port = 8000
    master_port: Port = 29501
    vllm: VllmSection = Field(default_factory=VllmSection)
    ray: RaySection = Field(default_factory=RaySection)
    vllm_args: list[Text] = Field(default_factory=list)
    env: Env = Field(default_factory=dict)
    forward_env: list[EnvName] = Field(default_factory=list)
    ready_timeout_s: float = Field(default=1800.0, gt=0, le=86400)
    stop_grace_s: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value in SERVING_BACKENDS:
            return value
        if value in {"torchrun", "external_launcher"}:
            raise ValueError(
                f"backend {value!r} cannot serve: `vllm serve` does not support external_launcher "
                "(requests hang or crash); use 'mp' or 'ray' to serve, and `sparkctl run` for offline torchrun jobs"
            )
        raise ValueError(f"must be one of 'mp', 'ray', got {value!r}")


@dataclass(frozen=True)
class RaySettings:
    """The resolved `ray:` section. `command` is None when the playbook does not
    name one: sparkctl then uses the `ray` next to vLLM's Python (see ray_command)."""

    command: tuple[str, ...] | None = None
    gcs_port: int = 6379
    num_gpus_per_node: int | None = None
    object_store_memory_mb: int | None = None
    dashboard: bool = False
    extra_args: tuple[str, ...] = ()
    join_timeout_s: float = 180.0


@dataclass(frozen=True)
class RouterSettings:
    """The resolved `router:` section; `command` None means the `vllm-router` next to vLLM's Python."""

    policy: str = "round_robin"
    command: tuple[str, ...] | None = None
    metrics_port: int = 29000


@dataclass(frozen=True)
class Playbook:
    path: str
    model: str
    served_model_name: str
    backend: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    host: str
    port: int
    master_port: int
    vllm_command: tuple[str, ...]
    vllm_args: tuple[str, ...]
    env: dict[str, str]
    forward_env: tuple[str, ...]
    ready_timeout_s: float
    stop_grace_s: float
    ray: RaySettings = field(default_factory=RaySettings)
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False
    data_parallel_rpc_port: int = 29550
    replicas: int = 1
    replica_port: int | None = None  # the first replica's port; None: port + 1
    router: RouterSettings = field(default_factory=RouterSettings)

    @property
    def world_size(self) -> int:
        """GPUs of one model instance (one DP engine, one replica)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def gpus_used(self) -> int:
        return self.world_size * self.data_parallel_size * self.replicas

    @property
    def model_is_path(self) -> bool:
        return os.path.isabs(self.model)


def load_playbook(path: str) -> Playbook:
    return _resolve(load_strict(path, PlaybookFile, what="playbook", semantic=_semantic_problems,
                                text_at=lambda loc: len(loc) == 2 and loc[0] == "env"), path)


def _semantic_problems(pb: PlaybookFile, loaded: LoadedYaml) -> list[Problem]:
    problems: list[Problem] = []
    if pb.vllm.command is not None and pb.vllm.python is not None:
        problems.append(loaded.problem(("vllm",), "set either 'command' or 'python', not both"))
    problems += _guard_flags(pb.vllm_args, RESERVED_VLLM_FLAGS, ("vllm_args",), loaded, "the playbook key ")
    problems += _guard_flags(pb.ray.extra_args, RESERVED_RAY_FLAGS, ("ray", "extra_args"), loaded, "")
    problems += _not_an_option(pb.model, ("model",), loaded)
    problems += _not_an_option(pb.served_model_name, ("served_model_name",), loaded)
    problems += _not_an_option(pb.vllm.command[0] if pb.vllm.command else None, ("vllm", "command", 0), loaded)
    problems += _not_an_option(pb.vllm.python, ("vllm", "python"), loaded)
    problems += _not_an_option(pb.ray.command[0] if pb.ray.command else None, ("ray", "command", 0), loaded)
    if 10002 <= pb.ray.gcs_port <= 19999:
        problems.append(
            loaded.problem(("ray", "gcs_port"), f"{pb.ray.gcs_port} is inside Ray's worker port range 10002-19999; "
                           "choose a port outside it (the default is 6379)")
        )
    problems += layout_problems(pb, loaded)
    for i, name in enumerate(pb.forward_env):
        if name in pb.env:
            problems.append(loaded.problem(("forward_env", i), f"{name} is also set in env; keep secrets only in forward_env"))
    return problems


def _resolve(pb: PlaybookFile, path: str) -> Playbook:
    base = os.path.dirname(os.path.abspath(path))
    command: tuple[str, ...]
    if pb.vllm.python is not None:
        command = (_relative_to(base, pb.vllm.python), "-m", "vllm.entrypoints.cli.main")
    elif pb.vllm.command is not None:
        command = tuple(_relative_to(base, part) for part in pb.vllm.command)
    else:
        command = ("vllm",)
    model = _relative_to(base, os.path.expanduser(pb.model) if pb.model.startswith("~") else pb.model)
    served = pb.served_model_name or (os.path.basename(model.rstrip("/")) if os.path.isabs(model) else model)
    return Playbook(
        path=path,
        model=model,
        served_model_name=served,
        backend=pb.backend,
        tensor_parallel_size=pb.tensor_parallel_size,
        pipeline_parallel_size=pb.pipeline_parallel_size,
        host=pb.host,
        port=pb.port,
        master_port=pb.master_port,
        vllm_command=command,
        vllm_args=tuple(pb.vllm_args),
        env=dict(pb.env),
        forward_env=tuple(pb.forward_env),
        ready_timeout_s=pb.ready_timeout_s,
        stop_grace_s=pb.stop_grace_s,
        ray=RaySettings(
            command=tuple(_relative_to(base, part) for part in pb.ray.command) if pb.ray.command else None,
            gcs_port=pb.ray.gcs_port,
            num_gpus_per_node=pb.ray.num_gpus_per_node,
            object_store_memory_mb=pb.ray.object_store_memory_mb,
            dashboard=pb.ray.dashboard,
            extra_args=tuple(pb.ray.extra_args),
            join_timeout_s=pb.ray.join_timeout_s,
        ),
        data_parallel_size=pb.data_parallel_size,
        enable_expert_parallel=pb.enable_expert_parallel,
        data_parallel_rpc_port=pb.data_parallel_rpc_port,
        replicas=pb.replicas,
        replica_port=pb.replica_port,
        router=RouterSettings(
            policy=pb.router.policy,
            command=tuple(_relative_to(base, part) for part in pb.router.command) if pb.router.command else None,
            metrics_port=pb.router.metrics_port,
        ),
    )


def _relative_to(base: str, value: str) -> str:
    """`./x` and `../x` are relative to the playbook's folder; anything else is kept."""
    if value.startswith("./") or value.startswith("../"):
        return os.path.normpath(os.path.join(base, value))
    return value


def ray_command(playbook: Playbook) -> tuple[str, ...]:
    """How `ray` is invoked on the nodes: ray.command, else the `ray` script in
    the folder of vLLM's interpreter or console script (Ray must live in the same
    environment as vLLM, which imports it), else `ray` on the PATH."""
    if playbook.ray.command:
        return playbook.ray.command
    return beside_vllm(playbook, "ray")


def beside_vllm(playbook: Playbook, script: str) -> tuple[str, ...]:
    """`script` in the folder of vLLM's interpreter or console script (where the
    same environment installs it), else `script` on the PATH."""
    first = playbook.vllm_command[0]
    if os.path.isabs(first):
        return (os.path.join(os.path.dirname(first), script),)
    return (script,)


def check_against_inventory(playbook: Playbook, inventory: Inventory) -> list[str]:
    """Cross-file problems: the parallel layout must fit the nodes."""
    problems: list[str] = []
    nodes = len(inventory.nodes)
    gpus = inventory.nodes[0].gpus
    problems += layout_fit(playbook, nodes, gpus, inventory.path)
    declared = playbook.ray.num_gpus_per_node
    if playbook.backend == "ray" and declared is not None and declared * nodes != playbook.world_size:
        problems.append(
            f"{playbook.path}: ray.num_gpus_per_node = {declared} gives Ray {nodes} node(s) x {declared} = "
            f"{nodes * declared} GPU(s), but tensor_parallel_size x pipeline_parallel_size = {playbook.world_size}; "
            "vLLM needs exactly one GPU per rank"
        )
    return problems
