"""How a playbook spreads one model over the cluster's GPUs: a Layout.

    tp x pp            one model instance across the nodes (mp or ray)
    dp (x tp x pp)     vLLM's own data parallel: one API server, an engine per tp x pp GPUs
    replicas (x tp x pp)  independent `vllm serve` per node group behind vllm-router

Every layout uses every GPU exactly once: tp x pp x dp x replicas = nodes x GPUs
per node. The short label (tp2, dp2, replicas2, replicas2tp2) names a layout on
`sparkctl sweep`'s command line and in its results.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # playbook.py imports this module for its checks
    from sparkctl.playbook import Playbook, PlaybookFile
    from sparkctl.strictyaml import LoadedYaml, Problem

_TOKEN = re.compile(r"(replicas|tp|pp|dp)(\d+)")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    replicas: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.replicas

    @property
    def kind(self) -> str:
        """Which backend serves it: 'replicas', 'dp' or 'tp' (one instance)."""
        if self.replicas > 1:
            return "replicas"
        if self.dp > 1:
            return "dp"
        return "tp"

    @property
    def label(self) -> str:
        """The layout's name: its kind first, then the other sizes above 1 (tp1 for a single GPU)."""
        parts = []
        if self.replicas > 1:
            parts.append(f"replicas{self.replicas}")
        if self.dp > 1:
            parts.append(f"dp{self.dp}")
        if self.tp > 1 or not parts:
            parts.append(f"tp{self.tp}")
        if self.pp > 1:
            parts.append(f"pp{self.pp}")
        return "".join(parts)


def parse_layout(text: str) -> Layout:
    """`tp2`, `dp2`, `replicas2`, `replicas2tp2`, `tp2pp2`; ValueError says what is wrong."""
    label = text.strip().lower()
    sizes: dict[str, int] = {}
    pos = 0
    for match in _TOKEN.finditer(label):
        if match.start() != pos:
            break
        name, value = match.group(1), int(match.group(2))
        if name in sizes:
            raise ValueError(f"layout {text!r} names {name} twice")
        if value < 1:
            raise ValueError(f"layout {text!r}: {name} must be at least 1")
        sizes[name] = value
        pos = match.end()
    if not label or pos != len(label):
        raise ValueError(f"layout {text!r} is not a layout: write sizes like tp2, dp2, replicas2 or replicas2tp2")
    layout = Layout(**sizes)
    if layout.dp > 1 and layout.replicas > 1:
        raise ValueError(f"layout {text!r}: dp and replicas exclude each other (both are copies of the model)")
    return layout


def layout_of(playbook: Playbook) -> Layout:
    return Layout(playbook.tensor_parallel_size, playbook.pipeline_parallel_size, playbook.data_parallel_size,
                  playbook.replicas)


def with_layout(playbook: Playbook, layout: Layout) -> Playbook:
    """The playbook with its parallel sizes replaced: what `sweep` brings up for one layout."""
    return dataclasses.replace(playbook, tensor_parallel_size=layout.tp, pipeline_parallel_size=layout.pp,
                               data_parallel_size=layout.dp, replicas=layout.replicas)


def first_replica_port(playbook: Playbook) -> int:
    return playbook.replica_port if playbook.replica_port is not None else playbook.port + 1


def layout_ports(playbook: Playbook, index: int, gpus: int) -> tuple[int, ...]:
    """The ports a layout adds on the node at `index` (head first): the DP RPC port
    on the head; the router's metrics port on the head and a replica's own port on
    the first node of its group."""
    if playbook.data_parallel_size > 1 and index == 0:
        return (playbook.data_parallel_rpc_port,)
    if playbook.replicas > 1:
        size = max(1, playbook.world_size // gpus)
        router = (playbook.router.metrics_port,) if index == 0 else ()
        return router + ((first_replica_port(playbook) + index // size,) if index % size == 0 else ())
    return ()


def layout_problems(pb: PlaybookFile, loaded: LoadedYaml) -> list[Problem]:
    """The playbook's own layout rules, each located at its key."""
    problems: list[Problem] = []
    if pb.data_parallel_size > 1 and pb.replicas > 1:
        problems.append(loaded.problem(("replicas",), "replicas and data_parallel_size exclude each other: "
                                       "both make copies of the model; choose one"))
    if pb.backend != "mp" and (pb.data_parallel_size > 1 or pb.replicas > 1):
        key = "replicas" if pb.replicas > 1 else "data_parallel_size"
        problems.append(loaded.problem(("backend",), f"{key} runs with backend 'mp' only "
                                       f"(vLLM's own launch on every node), not {pb.backend!r}"))
    if pb.replicas > 1 and "VLLM_API_KEY" in pb.forward_env:
        problems.append(loaded.problem(("forward_env",), "VLLM_API_KEY cannot be used with replicas: vllm-router takes "
                                       "its key only on the command line, where sparkctl never puts secrets"))
    return problems


def layout_fit(playbook: Playbook, nodes: int, gpus: int, inventory_path: str) -> list[str]:
    """Cross-file rules: the layout uses every GPU once, and each copy of the model fits the nodes."""
    layout = layout_of(playbook)
    total = nodes * gpus
    sizes = _product_text(layout)
    if layout.gpus != total:
        return [(f"{playbook.path}: {sizes} = {layout.gpus}, but {inventory_path} has {nodes} node(s) x {gpus} GPU(s) "
                 f"= {total}; they must be equal")]
    instance = layout.tp * layout.pp
    if layout.dp > 1 and gpus % instance:
        return [(f"{playbook.path}: data_parallel_size: each engine (tensor_parallel_size x pipeline_parallel_size = "
                 f"{instance} GPUs) must fit inside one node of {gpus} GPU(s): vLLM's multi-node DP launch places "
                 "whole engines on nodes")]
    if layout.replicas > 1 and instance % gpus:
        return [(f"{playbook.path}: replicas: each replica (tensor_parallel_size x pipeline_parallel_size = {instance} "
                 f"GPUs) must use whole nodes of {gpus} GPU(s); several replicas on one node are not supported")]
    return []


def _product_text(layout: Layout) -> str:
    names = ["tensor_parallel_size", "pipeline_parallel_size"]
    if layout.dp > 1:
        names.append("data_parallel_size")
    if layout.replicas > 1:
        names.append("replicas")
    return " x ".join(names)
