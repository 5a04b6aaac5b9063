"""The README documents what the code does: every check, every exit code, every command."""

from __future__ import annotations

from sparkctl.checks import CATALOGUE
from sparkctl.cli import build_parser
from sparkctl.errors import ExitCode
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_check_is_documented():
    missing = [check for check in CATALOGUE if f"`{check}`" not in README]
    assert missing == []


def test_every_exit_code_is_documented():
    for code in ExitCode:
        assert f"| {int(code)} |" in README, code


def test_every_command_is_documented():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    missing = [name for name in commands if f"sparkctl {name}" not in README]
    assert missing == []
