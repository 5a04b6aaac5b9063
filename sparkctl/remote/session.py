"""Runners for all of an inventory's nodes, and a fan-out that returns every
node's outcome (value or exception), never just the first failure."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar, cast

from sparkctl.inventory import Inventory, Node
from sparkctl.remote.base import Runner
from sparkctl.remote.local import LocalRunner
from sparkctl.remote.ssh import SshRunner

T = TypeVar("T")


@dataclass
class Outcome(Generic[T]):
    node: str
    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> T:
        """The value, or the node's error raised."""
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


class NodeSession:
    """Opens one runner per node on first use; closes them all on exit."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self._runners: dict[str, Runner] = {}

    def runner(self, node: Node) -> Runner:
        runner = self._runners.get(node.name)
        if runner is None:
            runner = LocalRunner(node.name) if node.connection == "local" else SshRunner(node, self.inventory.ssh)
            self._runners[node.name] = runner
        return runner

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()

    def __enter__(self) -> NodeSession:
        # Create the runners up front so that threads never race to create one.
        for node in self.inventory.nodes:
            self.runner(node)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fan_out(nodes: Iterable[Node], fn: Callable[[Node], T], *, max_workers: int = 16) -> dict[str, Outcome[T]]:
    """Run fn(node) for every node in parallel; keep each node's value or exception."""
    nodes = list(nodes)
    if not nodes:
        return {}
    outcomes: dict[str, Outcome[T]] = {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(nodes)), thread_name_prefix="sparkctl-node") as pool:
        futures = {node.name: pool.submit(fn, node) for node in nodes}
        for name, future in futures.items():
            try:
                outcomes[name] = Outcome(name, value=future.result())
            except Exception as exc:  # noqa: BLE001 - every node's failure is reported, not raised
                outcomes[name] = Outcome(name, error=exc)
    return outcomes


def first_error(outcomes: dict[str, Outcome[Any]]) -> BaseException | None:
    for outcome in outcomes.values():
        if outcome.error is not None:
            return outcome.error
    return None
