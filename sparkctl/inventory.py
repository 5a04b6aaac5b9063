"""The inventory: which nodes form the cluster and how to reach them.

Loading is strict: unknown keys, duplicate keys, wrong types, unsafe host or
user names and inconsistent node lists are all refused with the file, line
and key named. The result is a frozen, fully resolved `Inventory` (defaults
from `ssh:` applied, exactly one head).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sparkctl.strictyaml import LoadedYaml, Problem
from sparkctl.validation import (
    Env,
    Host,
    IfName,
    IPv4,
    Name,
    Port,
    Text,
    User,
    host_identity,
    load_strict,
)

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class SshSection(BaseModel):
    model_config = _STRICT

    user: User | None = None
    port: Port = 22
    identity_file: Text | None = None
    known_hosts: Text = "~/.ssh/known_hosts"
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    retry_deadline_s: float = Field(default=30.0, ge=0, le=3600)


class NodeSection(BaseModel):
    model_config = _STRICT

    name: Name
    host: Host | None = None
    port: Port | None = None
    user: User | None = None
    connection: Literal["ssh", "local"] = "ssh"
    fabric_ip: IPv4 | None = None
    role: Literal["head", "worker"] | None = None
    env: Env = Field(default_factory=dict)
    python: Text = "python3"
    workdir: Text = "~/.sparkctl"
    gpus: int = Field(default=1, ge=1, le=64)


class FabricSection(BaseModel):
    model_config = _STRICT

    interface: IfName | None = None
    hcas: list[IfName] | None = None
    mtu: int | None = Field(default=None, ge=576, le=9216)


class InventoryFile(BaseModel):
    model_config = _STRICT

    cluster: Name
    ssh: SshSection = Field(default_factory=SshSection)
    nodes: list[NodeSection]
    fabric: FabricSection = Field(default_factory=FabricSection)
    env: Env = Field(default_factory=dict)


@dataclass(frozen=True)
class SshSettings:
    known_hosts: str
    host_key_policy: str
    identity_file: str | None
    connect_timeout_s: float
    retry_deadline_s: float


@dataclass(frozen=True)
class Node:
    """A resolved node: every default applied."""

    name: str
    host: str
    port: int
    user: str
    connection: str  # "ssh" | "local"
    fabric_ip: str | None
    role: str  # "head" | "worker"
    env: dict[str, str]
    python: str
    workdir: str
    gpus: int
    index: int

    @property
    def is_head(self) -> bool:
        return self.role == "head"

    @property
    def address(self) -> str:
        """How peers reach this node on the fabric (its fabric IP, else its host)."""
        return self.fabric_ip or self.host

    def describe(self) -> str:
        if self.connection == "local":
            return f"{self.name} (local)"
        return f"{self.name} ({self.user}@{self.host}:{self.port})"


@dataclass(frozen=True)
class Fabric:
    interface: str | None
    hcas: tuple[str, ...] | None
    mtu: int | None


@dataclass(frozen=True)
class Inventory:
    path: str
    cluster: str
    nodes: tuple[Node, ...]
    ssh: SshSettings
    fabric: Fabric
    env: dict[str, str]

    @property
    def head(self) -> Node:
        return next(n for n in self.nodes if n.is_head)

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.is_head)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_env(self, node: Node) -> dict[str, str]:
        """Inventory-wide env, then the node's own (the node wins)."""
        return {**self.env, **node.env}


def load_inventory(path: str) -> Inventory:
    return _resolve(load_strict(path, InventoryFile, what="inventory", semantic=_semantic_problems,
                                text_at=_is_env_value), path)


def _is_env_value(loc: tuple) -> bool:
    """env.X and nodes[i].env.X: environment values, text as written."""
    return (len(loc) == 2 and loc[0] == "env") or (len(loc) == 4 and loc[0] == "nodes" and loc[2] == "env")


def _semantic_problems(inv: InventoryFile, loaded: LoadedYaml) -> list[Problem]:
    problems: list[Problem] = []
    if not inv.nodes:
        problems.append(loaded.problem(("nodes",), "the node list is empty; list at least one node"))
    names: dict[str, int] = {}
    endpoints: dict[tuple[str, int], int] = {}
    heads: list[int] = []
    for i, node in enumerate(inv.nodes):
        if node.name in names:
            problems.append(
                loaded.problem(("nodes", i, "name"), f"duplicate node name {node.name!r} (also nodes[{names[node.name]}])")
            )
        names.setdefault(node.name, i)
        if node.connection == "ssh":
            if node.host is None:
                problems.append(loaded.problem(("nodes", i, "host"), "missing required key 'host' (needed for connection: ssh)"))
            else:
                endpoint = (host_identity(node.host), node.port or inv.ssh.port)
                if endpoint in endpoints:
                    problems.append(
                        loaded.problem(
                            ("nodes", i, "host"),
                            f"duplicate host {node.host}:{endpoint[1]} (also nodes[{endpoints[endpoint]}])",
                        )
                    )
                endpoints.setdefault(endpoint, i)
        if node.role == "head":
            heads.append(i)
    if len(heads) > 1:
        listed = ", ".join(f"nodes[{i}]" for i in heads)
        problems.append(loaded.problem(("nodes", heads[1], "role"), f"more than one head ({listed}); mark exactly one node 'role: head'"))
    gpus = {n.gpus for n in inv.nodes}
    if len(gpus) > 1:
        problems.append(loaded.problem(("nodes",), f"every node must have the same number of GPUs, found {sorted(gpus)}"))
    return problems


def _resolve(inv: InventoryFile, path: str) -> Inventory:
    default_user = inv.ssh.user or _current_user()
    head_index = next((i for i, n in enumerate(inv.nodes) if n.role == "head"), 0)
    nodes = tuple(
        Node(
            name=n.name,
            host=n.host or "127.0.0.1",
            port=n.port or inv.ssh.port,
            user=n.user or default_user,
            connection=n.connection,
            fabric_ip=n.fabric_ip,
            role="head" if i == head_index else "worker",
            env=dict(n.env),
            python=n.python,
            workdir=n.workdir,
            gpus=n.gpus,
            index=i,
        )
        for i, n in enumerate(inv.nodes)
    )
    ssh = SshSettings(
        known_hosts=os.path.expanduser(inv.ssh.known_hosts),
        host_key_policy=inv.ssh.host_key_policy,
        identity_file=os.path.expanduser(inv.ssh.identity_file) if inv.ssh.identity_file else None,
        connect_timeout_s=inv.ssh.connect_timeout_s,
        retry_deadline_s=inv.ssh.retry_deadline_s,
    )
    fabric = Fabric(
        interface=inv.fabric.interface,
        hcas=tuple(inv.fabric.hcas) if inv.fabric.hcas is not None else None,
        mtu=inv.fabric.mtu,
    )
    return Inventory(path=path, cluster=inv.cluster, nodes=nodes, ssh=ssh, fabric=fabric, env=dict(inv.env))


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"
