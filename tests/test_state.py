"""The per-cluster state file: atomic, private, locked against concurrent commands."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

from sparkctl.errors import OperationFailed
from sparkctl.state import StateStore, state_dir


def test_state_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARKCTL_STATE_DIR", str(tmp_path / "s"))
    assert state_dir() == tmp_path / "s"
    monkeypatch.delenv("SPARKCTL_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "x"))
    assert state_dir() == tmp_path / "x" / "sparkctl"


def test_save_load_clear_roundtrip(tmp_path):
    store = StateStore("c1", tmp_path)
    assert store.load() is None
    store.save({"endpoint": "http://h:1", "nodes": {"a": {"pid": 5}}})
    data = store.load()
    assert data["endpoint"] == "http://h:1" and data["cluster"] == "c1" and data["version"] == 1
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["c1.json"]  # no temp file left behind
    store.clear()
    store.clear()
    assert store.load() is None


def test_unreadable_state_is_a_clear_error(tmp_path):
    store = StateStore("c1", tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(OperationFailed) as caught:
        store.load()
    assert str(store.path) in caught.value.message


def test_other_version_is_ignored(tmp_path):
    store = StateStore("c1", tmp_path)
    store.path.write_text(json.dumps({"version": 99}))
    assert store.load() is None


def _hold_lock(folder, ready, release):
    store = StateStore("c1", folder)
    with store.locked("up"):
        ready.set()
        release.wait(10)


def test_second_command_is_refused_while_the_lock_is_held(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(OperationFailed) as caught:
            with StateStore("c1", tmp_path).locked("down"):
                pass
        assert f"`sparkctl up` (pid {holder.pid})" in caught.value.message
    finally:
        release.set()
        holder.join(10)
    with StateStore("c1", tmp_path).locked("down"):  # free again once the holder is gone
        pass
