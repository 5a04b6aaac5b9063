"""YAML that used to escape the loader as "internal error" or change meaning silently
(issue #13, defect 6): every case is exit 2 with file and line, or a value kept as written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sparkctl.cli import main
from sparkctl.errors import InputError
from sparkctl.inventory import load_inventory
from sparkctl.playbook import load_playbook

NODES = "nodes:\n  - {name: a, host: 10.0.0.1}\n"


def write(tmp_path: Path, text: str, name: str = "inv.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(tmp_path: Path, text: str, capsys) -> str:
    path = write(tmp_path, text)
    assert main(["validate", "-i", path]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    return err.replace(path, "FILE")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cluster: c\n" + NODES + "x: " + "[" * 5000 + "]" * 5000 + "\n", "FILE:4: nesting deeper than"),
        ("cluster: c\n" + NODES + "x:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 1100)), "nesting deeper than"),
        ("cluster: c\n" + NODES + "ssh: {port: " + "9" * 5000 + "}\n", "FILE:4: ssh.port: "),
        ("cluster: c\n" + NODES + "ssh: {port: 2001-13-45}\n", "FILE:4: ssh.port: "),
        ("cluster: !!int\n" + NODES, "FILE:1: cluster: not a valid whole number: ''"),  # found by tests/test_fuzz.py
        ("cluster: c\n" + NODES + "ssh: {port: !!bool maybe}\n", "FILE:4: ssh.port: not a valid value: 'maybe'"),
        ("cluster: c\n" + NODES + "ssh: {port: 022}\n", "FILE:4: ssh.port: '022' is an octal number in YAML 1.1 (18)"),
        ("cluster: c\n" + NODES + "ssh: {port: 1:20}\n", "FILE:4: ssh.port: '1:20' is a base-60 number in YAML 1.1 (80)"),
        ("cluster: c\n" + NODES + "ssh: {port: 0x16}\n", "FILE:4: ssh.port: '0x16' is a hexadecimal number in YAML 1.1 (22)"),
        ("cluster: !!python/object/apply:os.system [echo hi]\n" + NODES, "FILE:1: cluster: YAML tag"),
        ("cluster: c\nnodes: !!python/object/apply:os.system\n  - {name: a, host: h}\n", "FILE:2: nodes: YAML tag"),
        ("cluster: c\nnodes: !!set {a: null}\n", "FILE:2: nodes: YAML tag"),
        ('cluster: "c\\n"\n' + NODES, "FILE:1: cluster: 'c\\n' is not a valid name"),
        ("cluster: c\nnodes:\n  - {name: \"a\\n\", host: h}\n", "FILE:3: nodes[0].name: 'a\\n' is not a valid name"),
        ("cluster: c\nnodes:\n  - {name: a, host: \"h\\n\"}\n", "nodes[0].host: host must not contain whitespace"),
        ("cluster: c\nssh: {user: \"bob\\n\"}\n" + NODES, "ssh.user: user must not contain whitespace"),
        ("cluster: c\nenv: {\"X\\n\": \"1\"}\n" + NODES, "env: 'X\\n' is not a valid environment variable name"),
        ("cluster: c\nfabric: {interface: \"eth0\\n\"}\n" + NODES, "fabric.interface: not a network interface name"),
        ("cluster: c\nnodes:\n  - {name: a, host: '::1'}\n  - {name: b, host: '0:0:0:0:0:0:0:1'}\n",
         "FILE:4: nodes[1].host: duplicate host 0:0:0:0:0:0:0:1:22 (also nodes[0])"),
        ("cluster: c\nnodes:\n  - {name: a, host: '10.0.0.1'}\n  - {name: b, host: '::ffff:10.0.0.1'}\n",
         "nodes[1].host: duplicate host"),
        ("cluster: c\nnodes:\n  - {name: a, host: spark-a.lan}\n  - {name: b, host: SPARK-A.lan.}\n",
         "nodes[1].host: duplicate host"),
    ],
)
def test_refused_with_file_and_line(tmp_path, capsys, text, expected):
    assert expected in refused(tmp_path, text, capsys)


def test_env_values_keep_the_text_written(tmp_path):
    inv = load_inventory(write(tmp_path, "cluster: c\n" + NODES + textwrap.dedent("""\
        env: {A: 010, B: 1:30, C: 0x1F, D: 1.50, E: 1_000, F: 0, G: 12, H: 2001-01-02, I: 1e3, J: -5}
        """)))
    assert inv.env == {"A": "010", "B": "1:30", "C": "0x1F", "D": "1.50", "E": "1_000", "F": "0", "G": "12",
                       "H": "2001-01-02", "I": "1e3", "J": "-5"}
    pb = load_playbook(write(tmp_path, "model: m\nenv: {NCCL_IB_DISABLE: 0, X: 010}\n", "pb.yaml"))
    assert pb.env == {"NCCL_IB_DISABLE": "0", "X": "010"}


def test_plain_decimal_numbers_still_work(tmp_path):
    inv = load_inventory(write(tmp_path, "cluster: c\nssh: {port: 2222, connect_timeout_s: 1.5, retry_deadline_s: 0}\n" + NODES))
    assert inv.nodes[0].port == 2222 and inv.ssh.connect_timeout_s == 1.5


def test_nested_merges_are_applied(tmp_path):
    inv = load_inventory(write(tmp_path, textwrap.dedent("""\
        cluster: c
        nodes:
          - &a
            <<: {user: bob, env: {X: "1"}}
            name: a
            host: h1
            python: /usr/bin/python3
          - <<: *a
            name: b
            host: h2
          - <<: [*a]
            name: c
            host: h3
            user: eve
        """)))
    assert inv.node("b").user == "bob" and inv.node("b").env == {"X": "1"} and inv.node("b").python == "/usr/bin/python3"
    assert inv.node("c").user == "eve" and inv.node("c").env == {"X": "1"}


def test_many_plain_keys_are_not_an_alias_bomb(tmp_path, capsys):
    text = "cluster: c\n" + NODES + "env:\n" + "".join(f"  K{i}: v\n" for i in range(19000))
    inv = load_inventory(write(tmp_path, text))
    assert len(inv.env) == 19000


def test_an_alias_bomb_is_still_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = write(tmp_path, "cluster: c\n" + NODES + "\n".join(lines) + "\n")
    with pytest.raises(InputError) as caught:
        load_inventory(path)
    assert any("alias bomb" in line for line in caught.value.details)
