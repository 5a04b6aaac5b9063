"""Inventory loading: every kind of bad input gets one located line, never a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sparkctl.cli import main
from sparkctl.errors import InputError
from sparkctl.inventory import load_inventory

GOOD = """\
cluster: pair
ssh:
  user: nvidia
  identity_file: ~/.ssh/id_ed25519
nodes:
  - name: spark-a
    host: 10.0.0.10
    fabric_ip: 192.168.100.10
    role: head
  - name: spark-b
    host: spark-b.lan
    fabric_ip: 192.168.100.11
    env:
      NCCL_DEBUG: INFO
      NCCL_IB_DISABLE: 0
fabric:
  interface: enp1s0f1np1
  hcas: [rocep1s0f1, roceP2p1s0f1]
  mtu: 9000
env:
  HF_HUB_OFFLINE: "1"
"""


def write(tmp_path: Path, text: str, name: str = "inv.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_inventory(write(tmp_path, text))
    return caught.value.details


def test_good_inventory_resolves_defaults(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.cluster == "pair"
    assert [n.name for n in inv.nodes] == ["spark-a", "spark-b"]
    assert inv.head.name == "spark-a"
    b = inv.node("spark-b")
    assert (b.user, b.port, b.role, b.connection) == ("nvidia", 22, "worker", "ssh")
    assert b.env == {"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "0"}  # YAML int became text
    assert inv.node_env(b) == {"HF_HUB_OFFLINE": "1", "NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "0"}
    assert inv.fabric.hcas == ("rocep1s0f1", "roceP2p1s0f1")
    assert inv.ssh.identity_file.endswith("/.ssh/id_ed25519") and not inv.ssh.identity_file.startswith("~")
    assert inv.ssh.host_key_policy == "strict"


def test_first_node_is_head_when_none_marked(tmp_path):
    inv = load_inventory(write(tmp_path, "cluster: c\nnodes:\n  - {name: a, host: h1}\n  - {name: b, host: h2}\n"))
    assert inv.head.name == "a" and [w.name for w in inv.workers] == ["b"]


def test_shipped_local_inventory_is_valid():
    inv = load_inventory(str(Path(__file__).parent.parent / "inventories" / "local.yaml"))
    assert [n.connection for n in inv.nodes] == ["local", "local"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cluster: c\nnodes: x: y\n", ":2: YAML syntax error: mapping values are not allowed here"),
        ("cluster: c\ncluster: d\nnodes: []\n", ":2: cluster: duplicate key (first defined on line 1)"),
        (
            "cluster: c\nnodes:\n  - name: a\n    host: h\n    prot: 22\n",
            ":5: nodes[0].prot: unknown key 'prot' (did you mean 'port'?)",
        ),
        ("cluster: c\nsshh: {}\nnodes: [{name: a, host: h}]\n", ":2: sshh: unknown key 'sshh' (did you mean 'ssh'?)"),
        ("cluster: c\nnodes:\n  - name: a\n    host: h\n    port: twenty\n", ":5: nodes[0].port: expected a whole number, got 'twenty'"),
        ("cluster: c\nnodes:\n  - name: a\n    host: h\n    port: 70000\n", ":5: nodes[0].port: input should be less than or equal to 65535"),
        ("cluster: c\nnodes:\n  - name: a\n    host: h\n    port: 0\n", ":5: nodes[0].port: input should be greater than or equal to 1"),
        ("cluster: c\nssh: {port: 65536}\nnodes: [{name: a, host: h}]\n", ":2: ssh.port: input should be less than or equal to 65535"),
        ("cluster: c\nnodes:\n  - name: a\n", ":3: nodes[0].host: missing required key 'host'"),
        ("cluster: c\nnodes:\n  - {host: h}\n", ":3: nodes[0].name: missing required key 'name'"),
        ("nodes:\n  - {name: a, host: h}\n", ":1: cluster: missing required key 'cluster'"),
        (
            "cluster: c\nnodes:\n  - {name: a, host: h1}\n  - {name: a, host: h2}\n",
            ":4: nodes[1].name: duplicate node name 'a' (also nodes[0])",
        ),
        (
            "cluster: c\nnodes:\n  - {name: a, host: h1}\n  - {name: b, host: H1}\n",
            ":4: nodes[1].host: duplicate host H1:22 (also nodes[0])",
        ),
        (
            "cluster: c\nnodes:\n  - {name: a, host: h1, role: head}\n  - {name: b, host: h2, role: head}\n",
            ":4: nodes[1].role: more than one head (nodes[0], nodes[1])",
        ),
        ("cluster: c\nnodes: []\n", ":2: nodes: the node list is empty"),
        ("- name: a\n  host: h\n", ":1: the top level of a inventory must be a mapping of keys, found a list"),
        ("just text\n", ":1: the top level of a inventory must be a mapping of keys, found a str"),
        ("cluster: c\nnodes:\n  - {name: a, host: 'h;rm -rf /'}\n", "nodes[0].host: host must not contain whitespace"),
        ("cluster: c\nnodes:\n  - {name: a, host: 'h$(id)'}\n", "nodes[0].host: host must not contain shell metacharacters"),
        ("cluster: c\nnodes:\n  - {name: a, host: 'h`id`'}\n", "nodes[0].host: host must not contain shell metacharacters '`'"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, user: 'bob smith'}\n", "nodes[0].user: user must not contain whitespace"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, user: 'bob;id'}\n", "nodes[0].user: user must not contain shell metacharacters ';'"),
        ("cluster: c\nssh: {user: '$USER'}\nnodes: [{name: a, host: h}]\n", "ssh.user: user must not contain shell metacharacters '$'"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, role: boss}\n", "nodes[0].role: must be one of 'head' or 'worker', got 'boss'"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, connection: telnet}\n", "nodes[0].connection: must be one of 'ssh' or 'local'"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, fabric_ip: 300.1.1.1}\n", "nodes[0].fabric_ip: not an IPv4 address: '300.1.1.1'"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, env: {NCCL_X: yes}}\n", "nodes[0].env.NCCL_X: booleans are ambiguous"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, env: {1BAD: x}}\n", "nodes[0].env: '1BAD' is not a valid environment variable name"),
        ("cluster: 'my cluster'\nnodes:\n  - {name: a, host: h}\n", ":1: cluster: 'my cluster' is not a valid name"),
        ("cluster: c\nnodes:\n  - {name: ../a, host: h}\n", "nodes[0].name: '../a' is not a valid name"),
        ("cluster: c\nnodes: {name: a}\n", ":2: nodes: expected a list, got dict"),
        ("cluster: c\nssh: {host_key_policy: ignore}\nnodes: [{name: a, host: h}]\n", "ssh.host_key_policy: must be one of 'strict' or 'accept-new'"),
        ("cluster: c\nnodes: [{name: a, host: h}]\nfabric: {mtu: 100000}\n", "fabric.mtu: input should be less than or equal to 9216"),
        ("cluster: c\nnodes:\n  - {name: a, host: h, gpus: 1}\n  - {name: b, host: i, gpus: 2}\n", "every node must have the same number of GPUs"),
        ("cluster: c\nnodes: [{name: a, host: h}]\n---\ncluster: d\n", ":4: expected one YAML document"),
        ("cluster: c\nnodes: [{name: a, host: h, port: true}]\n", "nodes[0].port: expected a whole number, got True"),
        ("cluster: c\nnodes: [{name: a, host: !!python/object:os.system x}]\n", "unsupported YAML value"),
    ],
)
def test_bad_inventory_names_file_line_and_key(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(expected in line for line in found), found
    assert all(line.startswith(str(tmp_path / "inv.yaml")) for line in found)


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(
        tmp_path,
        "cluster: c\nnodes:\n  - {name: a, host: h, prot: 1}\n  - {name: b, host: 'x y', port: 0}\n",
    )
    assert len(found) == 3
    assert [line.split(":")[1] for line in found] == ["3", "4", "4"]


def test_local_nodes_need_no_host_and_may_share_it(tmp_path):
    inv = load_inventory(
        write(tmp_path, "cluster: c\nnodes:\n  - {name: a, connection: local}\n  - {name: b, connection: local}\n")
    )
    assert [n.host for n in inv.nodes] == ["127.0.0.1", "127.0.0.1"]


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_bytes(b"cluster: c\nnodes: []\n\x00\x01\x02")
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    assert caught.value.details == [f"{path}:3: binary file (contains a NUL byte), expected YAML text"]


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_bytes(b"cluster: c\n# caf\xe9\nnodes: []\n")
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    assert caught.value.details == [f"{path}:2: not valid UTF-8 text"]


def test_file_over_one_mib_is_refused_before_parsing(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text("cluster: c\n" + "# padding\n" * 120_000)
    with pytest.raises(InputError) as caught:
        load_inventory(str(path))
    assert "the limit is 1048576 (1 MiB)" in caught.value.details[0]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError) as caught:
        load_inventory(str(tmp_path / "nope.yaml"))
    assert caught.value.details == [f"{tmp_path / 'nope.yaml'}: file not found"]
    with pytest.raises(InputError) as caught:
        load_inventory(str(tmp_path))
    assert "is a directory" in caught.value.details[0]


BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
cluster: c
nodes: [{name: a, host: h, env: {X: *i}}]
"""


@pytest.mark.timeout(10)
def test_alias_bomb_fails_fast(tmp_path):
    found = problems(tmp_path, BOMB)
    assert len(found) == 1 and "aliases expand to more than" in found[0]


@pytest.mark.timeout(10)
def test_recursive_alias_is_refused(tmp_path):
    found = problems(tmp_path, "cluster: c\nloop: &l [*l]\nnodes: []\n")
    assert len(found) == 1 and ("recursive" in found[0] or "undefined alias" in found[0] or "syntax" in found[0])


def test_modest_anchors_and_merge_keys_work(tmp_path):
    inv = load_inventory(
        write(
            tmp_path,
            """\
            cluster: c
            nodes:
              - &base {name: a, host: h1, user: bob, env: {X: "1"}}
              - <<: *base
                name: b
                host: h2
            """,
        )
    )
    assert inv.node("b").user == "bob" and inv.node("b").env == {"X": "1"} and inv.node("b").host == "h2"


def test_validate_command_prints_located_lines_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, "cluster: c\nnodes:\n  - {name: a, host: h, prot: 1}\n")
    assert main(["validate", "-i", path]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: nodes[0].prot: unknown key 'prot' (did you mean 'port'?)" in err
    assert "Traceback" not in err


def test_validate_json_reports_error_object(tmp_path, capsys):
    import json

    path = write(tmp_path, "cluster: c\nnodes: []\n")
    assert main(["validate", "-i", path, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["exit_code"] == 2
    assert out["details"] == [f"{path}:2: nodes: the node list is empty; list at least one node"]


def test_validate_ok_exit_0(tmp_path, capsys):
    assert main(["validate", "-i", write(tmp_path, GOOD)]) == 0
    assert "ok: cluster pair, 2 node(s)" in capsys.readouterr().out
