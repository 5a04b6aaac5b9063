"""Faults on the fake cluster (no root, no vLLM): whatever goes wrong inside
`up` after something was launched, everything launched is stopped."""

from __future__ import annotations

import pytest

from sparkctl.serve import vllm_log
from sparkctl.state import StateStore
from tests.test_lifecycle_fake import bring_up, fake, inventory, local_facts, write_playbook  # noqa: F401


def test_up_stops_what_it_started_on_an_unexpected_exception(inventory, fake, tmp_path, monkeypatch):
    """#13 defect 7: a parser bug in the readiness wait (not one of sparkctl's own
    errors) used to escape without stopping vLLM."""
    def broken(self, text):
        raise ValueError("could not convert string to float: '1.2.3'")

    monkeypatch.setattr(vllm_log.LogReader, "feed", broken)
    playbook = write_playbook(tmp_path, fake)
    with pytest.raises(ValueError):
        bring_up(inventory, playbook, fake)
    assert [n for n, _ in fake.ops("launch")] and fake.running() == []
    assert StateStore.for_cluster(inventory.cluster).load() is None


def test_a_node_unreachable_before_up_fails_fast_and_nothing_starts(inventory, fake, tmp_path):
    from sparkctl.errors import ConnectionFailed

    fake.unreachable.add("worker")
    with pytest.raises(ConnectionFailed) as failure:
        bring_up(inventory, write_playbook(tmp_path, fake), fake)
    assert "worker" in failure.value.message and failure.value.exit_code == 3
    assert fake.ops("launch") == [] and fake.running() == []


def test_a_node_lost_during_up_is_reported_and_the_reachable_nodes_are_cleaned(inventory, fake, tmp_path):
    from sparkctl.errors import SparkctlError
    from sparkctl.ops.down import down
    from tests.test_lifecycle_fake import Events

    fake.unreachable_after["worker"] = 2  # answers the first status rounds, then its link goes
    with pytest.raises(SparkctlError) as failure:
        bring_up(inventory, write_playbook(tmp_path, fake), fake)
    assert "worker" in failure.value.message
    assert fake.running("head") == []  # what up started on the reachable node is stopped
    del fake.unreachable_after["worker"]  # the node is back: down cleans the rest
    result = down(inventory, Events(), connect=fake.connect)
    assert result.clean and fake.running() == []


def test_a_second_up_while_one_holds_the_cluster_refuses_and_starts_nothing(inventory, fake, tmp_path):
    from sparkctl.errors import OperationFailed

    store = StateStore.for_cluster(inventory.cluster)
    with store.locked("up"):
        with pytest.raises(OperationFailed, match="busy"):
            bring_up(inventory, write_playbook(tmp_path, fake), fake)
    assert fake.ops("launch") == []


def test_an_unusable_state_directory_is_a_clear_error_before_anything_starts(inventory, fake, tmp_path, monkeypatch):
    from sparkctl.errors import SparkctlError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    monkeypatch.setenv("SPARKCTL_STATE_DIR", str(blocker / "state"))
    with pytest.raises(SparkctlError, match="state directory"):
        bring_up(inventory, write_playbook(tmp_path, fake), fake)
    assert fake.ops("launch") == []


def test_a_state_file_is_never_left_half_written(tmp_path, monkeypatch):
    import errno
    import os

    from sparkctl.errors import SparkctlError

    store = StateStore("c", tmp_path)
    store.save({"endpoint": "http://a:1"})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SparkctlError, match="No space left"):
        store.save({"endpoint": "http://b:2"})
    assert store.load()["endpoint"] == "http://a:1"  # the old state, whole
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind
