"""Property-based fuzzing (issue #13): the inventory and playbook loaders and every log
reader, fed random text and random structures, only ever return a valid model or
raise sparkctl's own error (a SparkctlError), in bounded time.

The normal run uses a short budget (a few seconds in all); `make fuzz` selects the
long one with SPARKCTL_FUZZ=long (its example count is in the README).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkctl.errors import SparkctlError
from sparkctl.inventory import Inventory, load_inventory
from sparkctl.playbook import Playbook, load_playbook
from sparkctl.probes.nccl_log import parse_nccl_log
from sparkctl.probes.nccl_tests import parse_nccl_tests
from sparkctl.serve.vllm_log import read_log

FIX = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent

settings.register_profile("short", max_examples=25, deadline=timedelta(seconds=5),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=4000, deadline=timedelta(seconds=5),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("SPARKCTL_FUZZ", "short"))


def _lines(folder: str, pattern: str) -> list[str]:
    return [line for p in sorted((FIX / folder).glob(pattern)) for line in p.read_text(errors="replace").splitlines()]


# ---------------------------------------------------------------- YAML
# Characters that mean something to YAML, and words that mean something to sparkctl.
YAML_ALPHABET = st.sampled_from(list("{}[]:,-&*!|>'\"#%@`?~ \t\n.0123456789xX_<=+/\\") + ["\x00", "\u2028", "é"])
WORDS = st.sampled_from(["cluster", "nodes", "name", "host", "port", "ssh", "env", "role", "head", "fabric_ip",
                         "model", "vllm_args", "ray", "extra_args", "<<", "&a", "*a", "!!int", "!!python/object",
                         "022", "0x1F", "1:30", "2001-13-45", "1e999", ".nan", "~", "null", "yes", "::1",
                         "--api_key=S", "-tp", "\n  - ", ": ", "\n"])
YAML_TEXT = st.lists(st.one_of(YAML_ALPHABET, WORDS, st.text(max_size=8)), max_size=80).map("".join)

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["head", "worker", "local", "ssh", "mp", "ray", "10.0.0.1",
                                                           "192.168.100.10", "/models/x", "--port"]))
KEYS = st.one_of(st.sampled_from(["cluster", "nodes", "name", "host", "port", "user", "connection", "fabric_ip",
                                  "role", "env", "gpus", "ssh", "fabric", "model", "served_model_name", "backend",
                                  "tensor_parallel_size", "vllm", "command", "python", "vllm_args", "ray",
                                  "extra_args", "forward_env", "ready_timeout_s", "HF_TOKEN"]), st.text(max_size=10))
STRUCTURES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(KEYS, inner, max_size=6)), max_leaves=30)


def _document(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


def _check_loader(tmp_path_factory, text: str | bytes, load, model) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "file.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        loaded = load(str(path))
    except SparkctlError as error:
        assert error.exit_code == 2 and error.details, error.message
        return
    assert isinstance(loaded, model)


def _check_inventory(tmp_path_factory, text) -> None:
    _check_loader(tmp_path_factory, text, load_inventory, Inventory)


def _check_playbook(tmp_path_factory, text) -> None:
    _check_loader(tmp_path_factory, text, load_playbook, Playbook)


@given(text=YAML_TEXT)
def test_inventory_from_random_text(tmp_path_factory, text):
    _check_inventory(tmp_path_factory, text)


@given(data=STRUCTURES)
def test_inventory_from_random_structures(tmp_path_factory, data):
    _check_inventory(tmp_path_factory, _document(data))


@given(nodes=st.lists(st.dictionaries(KEYS, STRUCTURES, max_size=5), max_size=4), extra=st.dictionaries(KEYS, STRUCTURES, max_size=3))
def test_inventory_from_near_valid_structures(tmp_path_factory, nodes, extra):
    _check_inventory(tmp_path_factory, _document({"cluster": "c", "nodes": nodes, **extra}))


@given(text=YAML_TEXT)
def test_playbook_from_random_text(tmp_path_factory, text):
    _check_playbook(tmp_path_factory, text)


@given(data=st.dictionaries(KEYS, STRUCTURES, max_size=8))
def test_playbook_from_random_structures(tmp_path_factory, data):
    _check_playbook(tmp_path_factory, _document({"model": "m", **data}))


@given(raw=st.binary(max_size=200))
def test_loaders_on_random_bytes(tmp_path_factory, raw):
    _check_inventory(tmp_path_factory, raw)
    _check_playbook(tmp_path_factory, raw)


# ---------------------------------------------------------------- logs
def _log_text(lines: list[str]):
    """Real lines, cut, glued and shuffled with noise and odd line ends."""
    piece = st.one_of(st.sampled_from(lines), st.sampled_from(lines).map(lambda s: s[: len(s) // 2]),
                      st.text(max_size=40), st.sampled_from(["\n", "\r\n", "\r", " ", "\x1b[31m", "(pid=1) ",
                                                              "[repeated 2x across cluster]", "1.2.3", "9" * 400,
                                                              "nan", "-inf", "\u2028"]))
    return st.lists(piece, max_size=60).map("".join)


def _valid_json(report) -> None:
    json.dumps(report.to_dict(), allow_nan=False, default=str)  # NaN or Infinity would raise


NCCL_LINES = _lines("nccl-debug", "*.log")
TESTS_LINES = _lines("nccl-tests", "*.txt")
VLLM_LINES = _lines("vllm", "*.log")


@given(text=_log_text(NCCL_LINES))
def test_nccl_log_reader(text):
    _valid_json(parse_nccl_log(text))


@given(text=_log_text(TESTS_LINES), expect=st.floats(min_value=0.1, max_value=1000))
def test_nccl_tests_reader(text, expect):
    _valid_json(parse_nccl_tests(text, expect_busbw_gbs=expect))


@given(text=_log_text(VLLM_LINES))
def test_vllm_log_reader(text):
    _valid_json(read_log(text))
