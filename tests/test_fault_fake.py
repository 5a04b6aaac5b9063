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
