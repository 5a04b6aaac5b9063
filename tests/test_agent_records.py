"""The node agent does not trust what it finds in its work dir blindly (#13 defect 9):
a record's `role` never becomes a path, and records it does not own, or that others
may write, are ignored (they could name a stranger's session to signal)."""

from __future__ import annotations

import json
import os

from sparkctl.agent import node_agent


def _record(folder, name: str, **changes) -> str:
    rec = {"role": "vllm", "pid": 999999, "pgid": 999999, "starttime": 1, "boot_id": "b", "tag": "c/n/vllm",
           "log": "x.log", "argv": ["vllm"], "env_keys": [], "plan_digest": None, "exit_file": None,
           "started_at": 0.0, "hostname": "h", **changes}
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        json.dump(rec, handle)
    os.chmod(path, 0o600)
    return path


def test_a_role_from_a_record_is_never_a_path(tmp_path):
    records = tmp_path / "procs"
    records.mkdir(mode=0o700)
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    _record(records, "vllm.json", role="../victim")
    removed = node_agent._remove_records(str(records), "c/n/")
    assert victim.exists(), "a record's role was used as a file path"
    assert removed == [str(records / "vllm.json")] and not (records / "vllm.json").exists()


def test_records_others_may_write_are_ignored(tmp_path):
    records = tmp_path / "procs"
    records.mkdir(mode=0o700)
    _record(records, "vllm.json")
    os.chmod(records / "vllm.json", 0o666)
    assert node_agent._records(str(records)) == []
    os.chmod(records / "vllm.json", 0o600)
    assert len(node_agent._records(str(records))) == 1
    os.chmod(records, 0o777)  # a folder anyone may write into: nothing in it is trusted
    assert node_agent._records(str(records)) == []


def test_a_private_dir_is_made_ours_alone_or_refused(tmp_path):
    import pytest

    made = tmp_path / "ray-temp"
    node_agent.ensure_private_dir(str(made))
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    os.chmod(made, 0o777)  # what Ray does to its temp dir
    node_agent.ensure_private_dir(str(made))
    assert made.stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(node_agent.OpFailed, match="not a folder"):
        node_agent.ensure_private_dir(str(link))
    if os.geteuid() == 0:  # only root can hand a folder to another user (CI runs as root)
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o777)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(node_agent.OpFailed, match="belongs to uid 65534"):
            node_agent.ensure_private_dir(str(theirs))
