"""Numbers from logs and the command line that used to crash `doctor` or print invalid
JSON (issue #13, defect 7, the parser part)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from sparkctl import cli
from sparkctl.probes.nccl_log import parse_nccl_log
from sparkctl.probes.nccl_tests import parse_nccl_tests
from sparkctl.serve.vllm_log import read_log
from tests.conftest import sparkctl

FIX = Path(__file__).parent / "fixtures"
BIG = "9" * 400  # float() gives inf; int() of a longer one raises


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"invalid JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "text",
    [
        "Loading weights took 1.2.3 seconds\n",
        f"Loading weights took {BIG} seconds\n",
        f"Model loading took {BIG} GiB memory and 1.2.3 seconds\n",
        "init engine (profile, create kv cache, warmup model) took 1..2 seconds\n",
        f"Graph capturing finished in {BIG}.5 secs\n",
        "GPU KV cache size: " + "9" * 4000 + " tokens\n",
        f"Maximum concurrency for 8,192 tokens per request: {BIG}.0x\n",
    ],
)
def test_vllm_log_numbers_never_crash_or_go_infinite(text):
    report = read_log(text).to_dict()
    for value in report.values():
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_nccl_log_unparsable_init_time():
    line = "spark-a:1:1 [0] NCCL INFO Init timings - ncclCommInitRank: rank 0 nranks 2 total 1.2.3 (kernels 0.1)\n"
    assert parse_nccl_log(line).init_time_s is None
    line = f"spark-a:1:1 [0] NCCL INFO Init timings - ncclCommInitRank: rank 0 nranks 2 total {BIG}.0\n"
    assert parse_nccl_log(line).init_time_s is None


def test_nccl_tests_infinite_cells_are_not_numbers():
    text = (FIX / "nccl-tests" / "all_gather-1G-4G-healthy-2.18.3.txt").read_text()
    text = text.replace("22.14", BIG).replace("21.4033", BIG + ".5")
    report = parse_nccl_tests(text)
    assert report.rows[-1].out.busbw_gbs is None and report.avg_busbw_gbs != math.inf
    strict_json(json.dumps(report.to_dict()))


@pytest.mark.parametrize("artefact, text", [
    ("vllm-log", "Loading weights took 1.2.3 seconds\n"),
    ("vllm-log", f"Loading weights took {BIG} seconds\n"),
    ("nccl-log", "h:1:1 [0] NCCL INFO Init timings total 1.2.3\n"),
])
def test_doctor_json_is_valid_json(tmp_path, artefact, text):
    path = tmp_path / "x.log"
    path.write_text(text)
    result = sparkctl("doctor", artefact, str(path), "--json")
    assert result.returncode in (0, 1), result.stderr
    assert "internal error" not in result.stderr
    strict_json(result.stdout)


def test_the_json_emitter_maps_non_finite_numbers_to_null(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(cli.sys, "stdout", out)
    cli._print_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": (math.nan,)}})
    assert strict_json(out.getvalue()) == {"a": None, "b": [None, None, 1.5], "c": {"d": [None]}}


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "abc"])
def test_expect_busbw_must_be_a_positive_number(value, capsys):
    path = str(FIX / "nccl-tests" / "all_gather-1G-4G-healthy-2.18.3.txt")
    with pytest.raises(SystemExit) as caught:
        cli.main(["doctor", "nccl-tests", path, "--expect-busbw", value])
    assert caught.value.code == 2
    assert "--expect-busbw" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "-i", "x.yaml", "--timeout", "nan", "--", "true"],
        ["exec", "-i", "x.yaml", "--timeout", "0", "--", "true"],
        ["down", "-i", "x.yaml", "--grace", "-1"],
        ["down", "-i", "x.yaml", "--grace", "inf"],
        ["logs", "-i", "x.yaml", "-n", "-5"],
        ["nccl-probe", "-i", "x.yaml", "--degraded-fraction", "nan"],
        ["nccl-probe", "-i", "x.yaml", "--degraded-fraction", "1.5"],
        ["nccl-probe", "-i", "x.yaml", "--time-budget", "-1"],
        ["nccl-probe", "-i", "x.yaml", "--max-small-latency", "inf"],
        ["nccl-probe", "-i", "x.yaml", "--min-iters", "0"],
        ["nccl-probe", "-i", "x.yaml", "--factor", "1"],
        ["nccl-probe", "-i", "x.yaml", "--port", "70000"],
        ["run", "-i", "x.yaml", "throughput", "--repeats", "0"],
        ["run", "-i", "x.yaml", "throughput", "--timeout", "nan"],
    ],
)
def test_numeric_flags_are_validated(argv):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2

