"""The playbook: what to serve and how vLLM is started on the nodes.

Validated as strictly as the inventory. Paths written relative to the
playbook (`./models/x`, `../.venv/bin/python`) are made absolute here, on the
controller, so that a playbook in a repository works from any directory; they
must exist at the same absolute path on every node, like the model itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sparkctl.inventory import Inventory
from sparkctl.strictyaml import LoadedYaml, Problem
from sparkctl.validation import (
    Env,
    EnvName,
    Host,
    Port,
    Text,
    input_error,
    load_yaml_or_raise,
    validate_model,
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
    "--api-key": "forward_env: [VLLM_API_KEY] (keeps the key out of argv)",
    "--hf-token": "forward_env: [HF_TOKEN] (keeps the token out of argv)",
}

SERVING_BACKENDS = ("mp", "ray")


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
    host: Host = "0.0.0.0"
    port: Port = 8000
    master_port: Port = 29501
    vllm: VllmSection = Field(default_factory=VllmSection)
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

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def model_is_path(self) -> bool:
        return os.path.isabs(self.model)


def load_playbook(path: str) -> Playbook:
    loaded = load_yaml_or_raise(path)
    parsed, problems = validate_model(PlaybookFile, loaded, what="playbook")
    if parsed is not None:
        problems = _semantic_problems(parsed, loaded)
    if problems:
        raise input_error(path, problems)
    assert parsed is not None
    return _resolve(parsed, path)


def _semantic_problems(pb: PlaybookFile, loaded: LoadedYaml) -> list[Problem]:
    problems: list[Problem] = []
    if pb.vllm.command is not None and pb.vllm.python is not None:
        problems.append(loaded.problem(("vllm",), "set either 'command' or 'python', not both"))
    for i, arg in enumerate(pb.vllm_args):
        flag = arg.split("=", 1)[0]
        if flag in RESERVED_VLLM_FLAGS:
            problems.append(
                loaded.problem(("vllm_args", i), f"{flag} is set by sparkctl; use the playbook key {RESERVED_VLLM_FLAGS[flag]}")
            )
    for i, name in enumerate(pb.forward_env):
        if name in pb.env:
            problems.append(loaded.problem(("forward_env", i), f"{name} is also set in env; keep secrets only in forward_env"))
    return problems


def _resolve(pb: PlaybookFile, path: str) -> Playbook:
    base = os.path.dirname(os.path.abspath(path))
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
    )


def _relative_to(base: str, value: str) -> str:
    """`./x` and `../x` are relative to the playbook's folder; anything else is kept."""
    if value.startswith("./") or value.startswith("../"):
        return os.path.normpath(os.path.join(base, value))
    return value


def check_against_inventory(playbook: Playbook, inventory: Inventory) -> list[str]:
    """Cross-file problems: the parallel layout must fit the nodes."""
    problems: list[str] = []
    nodes = len(inventory.nodes)
    gpus = inventory.nodes[0].gpus
    if playbook.world_size != nodes * gpus:
        problems.append(
            f"{playbook.path}: tensor_parallel_size x pipeline_parallel_size = {playbook.world_size}, but "
            f"{inventory.path} has {nodes} node(s) x {gpus} GPU(s) = {nodes * gpus}; they must be equal"
        )
    return problems
