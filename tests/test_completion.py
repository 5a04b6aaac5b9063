"""`sparkctl completion`: the scripts come from the real parser (argcomplete),
and bash really completes a partial command line, file names included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, sparkctl

pytest.importorskip("argcomplete")


def _bash_complete(tmp_path, line: str) -> list[str]:
    """COMPREPLY for `line` (cursor at its end), through the script `sparkctl completion bash` prints."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "sparkctl"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m sparkctl "$@"\n')
    wrapper.chmod(0o755)
    words = line.split(" ")
    driver = "\n".join([
        'source <(sparkctl completion bash)',
        'fn=$(complete -p sparkctl | sed -E "s/.*-F ([^ ]+).*/\\1/")',
        f'COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9',
        'COMP_WORDS=(' + " ".join(repr(w) for w in words) + ')',
        f'COMP_CWORD={len(words) - 1}',
        '"$fn" sparkctl',
        'printf "%s\\n" "${COMPREPLY[@]}"',
    ])
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    out = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    return [w.strip() for w in out.stdout.splitlines() if w.strip()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_flags_and_inventory_files(tmp_path):
    (tmp_path / "inventories").mkdir()
    (tmp_path / "inventories" / "pair.yaml").write_text("cluster: x\n")
    (tmp_path / "inventories" / "notes.txt").write_text("")
    assert _bash_complete(tmp_path, "sparkctl che") == ["check"]
    assert "--problems-only" in _bash_complete(tmp_path, "sparkctl check --pro")
    assert _bash_complete(tmp_path, "sparkctl check -i inventories/") == ["inventories/pair.yaml"]
    assert "--accept-new" in _bash_complete(tmp_path, "sparkctl init --acc")


@pytest.mark.parametrize("shell, marker", [("bash", "complete"), ("zsh", "compdef"), ("fish", "complete --command sparkctl")])
def test_every_shell_gets_a_script(shell, marker):
    result = sparkctl("completion", shell)
    assert result.returncode == 0 and marker in result.stdout


def test_unknown_shell_is_bad_input():
    result = sparkctl("completion", "tcsh")
    assert result.returncode == 2 and "invalid choice" in result.stderr
