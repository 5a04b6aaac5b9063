"""`sparkctl logs --role` names a file on the node (issue #13, defect 9, the CLI part)."""

from __future__ import annotations

import pytest

from sparkctl import cli


@pytest.mark.parametrize("role", ["../../../etc/passwd", "vllm/../x", "", "VLLM"])
def test_logs_role_is_one_of_the_known_roles(role):
    """#13 defect 9: `--role` became part of a path on the node (any `*.log` could be read)."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["logs", "-i", "x.yaml", "--role", role])
    assert caught.value.code == 2
