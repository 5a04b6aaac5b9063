"""parse_nccl_tests on every fixture in tests/fixtures/nccl-tests (row count, first and
last rows, average, verdict), format variants, and robustness properties."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sparkctl.probes.nccl_tests import busbw_factor, collective_from_name, human_bytes, parse_nccl_tests

FIXTURES = Path(__file__).parent / "fixtures" / "nccl-tests"
GIB = 1 << 30


def read(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


# name -> (collective, source, rows, (first size, first oop busbw), (last size, last oop busbw),
#          avg busbw, avg source, verdict)
EXPECTED = {
    "all_gather-1G-4G-healthy-2.18.3.txt":
        ("all_gather", "header", 3, (GIB, 19.73), (4 * GIB, 22.14), 21.4033, "footer", "ok"),
    "all_gather-512M-16G-twins-2.19.6.txt":
        ("all_gather", "header", 6, (512 << 20, 18.39), (16 * GIB, 23.74), 22.1205, "footer", "ok"),
    # cut after the row: the average is computed the way nccl-tests does (both placements)
    "all_gather-16G-mtu1500-2.17.6.txt":
        ("all_gather", "header", 1, (16 * GIB, 18.94), (16 * GIB, 18.94), 19.945, "computed", "ok"),
    "all_reduce-256M-4G-jp-nccl-rebuilt.txt":
        ("all_reduce", "header", 5, (256 << 20, 21.41), (4 * GIB, 24.11), 23.21, "footer", "ok"),
    "all_reduce-8B-16M-latency-noise-2.20.0.txt":
        ("all_reduce", "header", 22, (8, 0.0), (16 << 20, 11.43), 2.4832, "footer", "inconclusive"),
    "all_reduce-1G-c0-degraded-min-bw-2.19.4.txt":
        ("all_reduce", "header", 1, (GIB, 2.81), (GIB, 2.81), 2.815, "footer", "degraded"),
    "all_reduce-256M-1G-per-iter-tabs-one-twin.txt":
        ("all_reduce", "header", 3, (256 << 20, 12.91), (GIB, 13.41), 13.2, "footer", "degraded"),
    "all_gather-8G-16G-socket-exponent-2.18.3.txt":
        ("all_gather", "header", 2, (8 * GIB, 0.78), (16 * GIB, 0.76), 0.77, "footer", "degraded"),
    "reduce_scatter-rows-only-no-header.txt":
        ("reduce_scatter", "layout", 3, (GIB, 22.71), (4 * GIB, 23.88), 23.4283, "computed", "ok"),
    "all_reduce-old-layout-no-root-column.txt":
        ("all_reduce", "layout", 4, (32 << 20, 72.39), (256 << 20, 78.88), 76.4325, "footer", "ok"),
}


def test_every_fixture_has_expectations():
    files = sorted(p.name for p in FIXTURES.glob("*.txt"))
    assert files == sorted(EXPECTED)
    sources = (FIXTURES / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_numbers_and_verdict(name: str):
    coll, source, nrows, first, last, avg, avg_source, verdict = EXPECTED[name]
    rep = parse_nccl_tests(read(name))
    assert (rep.collective, rep.collective_source) == (coll, source)
    assert len(rep.rows) == nrows
    assert (rep.rows[0].size_bytes, rep.rows[0].out.busbw_gbs) == first
    assert (rep.rows[-1].size_bytes, rep.rows[-1].out.busbw_gbs) == last
    assert rep.avg_busbw_gbs == pytest.approx(avg, abs=1e-4)
    assert rep.avg_busbw_source == avg_source
    assert rep.verdict == verdict
    assert rep.verdict_reason.endswith(".") and len(rep.verdict_reason.split(". ")) == 1  # one sentence
    d = rep.to_dict()
    json.dumps(d)
    row = d["rows"][0]
    assert set(row) >= {"size_bytes", "count", "type", "redop", "root", "time_us", "algbw_gbs", "busbw_gbs",
                        "wrong", "inplace"}
    assert set(row["inplace"]) >= {"time_us", "algbw_gbs", "busbw_gbs", "wrong"}
    sizes = [r.size_bytes for r in rep.rows]
    assert sizes == sorted(sizes)


def test_verbatim_2_18_3_in_detail():
    rep = parse_nccl_tests(read("all_gather-1G-4G-healthy-2.18.3.txt"))
    assert rep.version == {"nccl_tests": "2.18.3", "git": None, "nccl_headers": 22809, "nccl_library": 22809,
                           "nccl": "2.28.9"}
    assert rep.params["iters"] == 50 and rep.params["warmup_iters"] == 10 and rep.params["unalign"] == 0
    assert [(d["rank"], d["host"], d["bus_id"], d["name"]) for d in rep.devices] == [
        (0, "spark-fb97", "000f:01:00", "NVIDIA GB10"), (1, "spark-4440", "000f:01:00", "NVIDIA GB10")]
    assert (rep.nranks, rep.nnodes, rep.busbw_factor) == (2, 2, 0.5)
    assert rep.rows[1].to_dict() == {
        "size_bytes": 2147483648, "count": 268435456, "type": "float", "redop": "none", "root": -1,
        "time_us": 50573.4, "algbw_gbs": 42.46, "busbw_gbs": 21.23, "wrong": 0,
        "inplace": {"time_us": 48690.4, "algbw_gbs": 44.1, "busbw_gbs": 22.05, "wrong": 0}}
    assert (rep.out_of_bounds, rep.wrong_total, rep.concluded, rep.problems) == (0, 0, True, [])
    # all_gather at n=2: busbw = algbw * (n-1)/n
    for r in rep.rows:
        assert r.out.busbw_gbs == pytest.approx(r.out.algbw_gbs * rep.busbw_factor, abs=0.01)
    assert "22.14 GB/s" in rep.verdict_reason and "4 GiB" in rep.verdict_reason


def test_2_17_6_header_without_unalign_and_cut_footer():
    rep = parse_nccl_tests(read("all_gather-16G-mtu1500-2.17.6.txt"))
    assert rep.params["unalign"] is None and rep.params["graph"] == 0
    assert rep.version["nccl"] == "2.28.3"  # nccl-headers=22803, not the playbook's 2.28.9
    assert rep.devices[0]["host"] == "spark"  # right-aligned in 10 columns
    assert rep.rows[0].out.time_us == 453650  # integer time column
    assert not rep.concluded and rep.out_of_bounds is None
    assert any("Collective test concluded" in p for p in rep.problems)


def test_expectation_is_a_parameter():
    text = read("all_gather-16G-mtu1500-2.17.6.txt")
    assert parse_nccl_tests(text, expect_busbw_gbs=22.0).verdict == "ok"  # 18.94 >= 17.6
    strict = parse_nccl_tests(text, expect_busbw_gbs=24.0)  # 80% = 19.2
    assert strict.verdict == "degraded"
    assert "18.94 GB/s" in strict.verdict_reason and "19.20 GB/s" in strict.verdict_reason


def test_c0_na_columns_and_failed_average():
    rep = parse_nccl_tests(read("all_reduce-1G-c0-degraded-min-bw-2.19.4.txt"))
    (row,) = rep.rows
    assert (row.out.wrong, row.inplace.wrong, rep.wrong_total) == (None, None, None)
    assert (row.out.time_us, row.inplace.time_us) == (382114, 381002)
    assert rep.avg_busbw_check == "FAILED" and rep.params["validation"] == 0
    assert rep.busbw_factor == 1.0  # all_reduce at n=2
    assert "13%" in rep.verdict_reason


def test_per_iteration_columns_and_tabs():
    text = read("all_reduce-256M-1G-per-iter-tabs-one-twin.txt")
    assert "\t" in text
    rep = parse_nccl_tests(text)
    last = rep.rows[-1].to_dict()
    assert last["per_iter"] == {"i_min_us": 77668.1, "i_max_us": 84874.4, "i_p99_us": 84073.7, "i_cv_pct": 1.84}
    assert last["inplace"]["per_iter"]["i_cv_pct"] == 1.61
    assert rep.version["git"] == "b4d5bee"


def test_exponent_time_and_noise_lines():
    rep = parse_nccl_tests(read("all_gather-8G-16G-socket-exponent-2.18.3.txt"))
    assert rep.rows[0].out.time_us == 5541893
    assert rep.rows[1].out.time_us == 1.1e7 and rep.rows[1].inplace.time_us == 1.1e7
    noisy = parse_nccl_tests(read("all_reduce-8B-16M-latency-noise-2.20.0.txt"))
    assert noisy.version["nccl_runtime"] == "2.28.9+cuda13.0"
    assert "-b 1G" in noisy.verdict_reason and noisy.verdict_size_bytes == 16 << 20


def test_layout_inference_and_hints():
    rows_only = read("reduce_scatter-rows-only-no-header.txt")
    rep = parse_nccl_tests(rows_only)
    assert rep.nranks == 2 and rep.busbw_factor == 0.5  # from count * 4 * n == size
    hinted = parse_nccl_tests(rows_only, source_name="runs/all_reduce_perf-1G.log")
    assert (hinted.collective, hinted.collective_source) == ("all_reduce", "hint")
    old = parse_nccl_tests(read("all_reduce-old-layout-no-root-column.txt"))
    assert all(r.root is None for r in old.rows) and old.rows[0].out.wrong == 0
    assert old.nnodes == 1 and old.nranks == 2 and old.devices[0]["group"] is None
    # without the '#' lines the old layout is still read as "no root column", even with integer times
    bare = [ln for ln in read("all_reduce-old-layout-no-root-column.txt").splitlines() if not ln.startswith("#")]
    bare.append("  1073741824     268435456   float     sum   145000    7.41    7.41  0e+00   144000    7.46    7.46  0e+00")
    headerless = parse_nccl_tests("\n".join(bare))
    assert len(headerless.rows) == 5 and all(r.root is None for r in headerless.rows)
    assert headerless.rows[-1].out.time_us == 145000 and headerless.collective == "all_reduce"
    # the binary name on an echoed command line names the test
    cmd = "mpirun -np 2 ./build/alltoall_perf -b 1G -e 1G\n" + rows_only
    assert parse_nccl_tests(cmd).collective_source == "command"


def test_helpers():
    assert busbw_factor("all_reduce", 2) == 1.0 and busbw_factor("all_reduce", 8) == pytest.approx(1.75)
    assert busbw_factor("all_gather", 2) == 0.5 and busbw_factor("all_gather", 4) == 0.75
    assert busbw_factor("broadcast", 4) == 1.0 and busbw_factor("all_reduce", None) is None
    assert collective_from_name("# Collective test starting: reduce_scatter_perf") == "reduce_scatter"
    assert collective_from_name("all_reduce_perf") == "all_reduce" and collective_from_name("foo") is None
    assert human_bytes(16 * GIB) == "16 GiB" and human_bytes(8) == "8 B" and human_bytes(3 << 19) == "1.5 MiB"


# ------------------------------------------------------------------ properties

NOISE = [
    "Authorization required, but no authorization protocol specified",
    "spark-a1:5120:5180 [0] NCCL INFO Channel 00/1 : 0[0] -> 1[0] [send] via NET/IB/0/Shared",
    "[spark-a1:20925] 1 more process has sent help message help-mpi-btl-openib.txt / error in device init",
    "--------------------------------------------------------------------------",
    "  Local host:   spark-b2",
    "",
    "\t",
    "12 34 56",
    "1073741824 268435456 float sum -1 oops",
]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_noise_lines_do_not_change_the_result(name: str):
    base = parse_nccl_tests(read(name), source_name=name).to_dict()
    for seed in range(5):
        rng = random.Random(seed)
        lines = read(name).splitlines()
        for _ in range(10):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(NOISE))
        noisy = parse_nccl_tests("\r\n".join(lines), source_name=name).to_dict()
        assert noisy == base


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_truncated_last_row_is_ignored(name: str):
    lines = read(name).splitlines()
    rep = parse_nccl_tests("\n".join(lines))
    idx = max(i for i, ln in enumerate(lines) if ln.strip() and ln.split()[0].isdigit() and len(ln.split()) >= 12)
    row = lines[idx].rstrip()
    n = len(rep.rows)
    last_cell = len(row) - len(row.split()[-1])
    for cut in range(len(row)):
        if "\t" in row and cut > last_cell:
            continue  # known limit: with tabs there is no column width to tell "1" from a cut "1.61"
        part = parse_nccl_tests("\n".join(lines[:idx] + [row[:cut]]))
        assert len(part.rows) == n - 1, (cut, row[:cut])
    whole = parse_nccl_tests("\n".join(lines[:idx] + [row]))
    assert len(whole.rows) == n and "The last row is cut short and was ignored." not in whole.problems


def test_footer_average_matches_nccl_tests_definition():
    text = read("all_gather-1G-4G-healthy-2.18.3.txt")
    footerless = "\n".join(ln for ln in text.splitlines() if "Avg bus bandwidth" not in ln)
    rep = parse_nccl_tests(footerless)
    assert rep.avg_busbw_source == "computed"
    assert rep.avg_busbw_gbs == pytest.approx(21.4033, abs=0.01)  # mean over both placements


def test_timestamps_wrong_results_and_errors():
    lines = read("all_gather-1G-4G-healthy-2.18.3.txt").splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("  2147483648"))
    lines[i] = lines[i][:-1] + "3" + "  2025-11-23 17:02:11"  # in-place #wrong 3, then a -Z timestamp
    lines = [ln.replace("Out of bounds values : 0 OK", "Out of bounds values : 3 FAILED") for ln in lines]
    lines.insert(-2, "# error: remote process exited or there was a network error")
    rep = parse_nccl_tests("\n".join(lines) + "\n")
    assert rep.rows[1].timestamp == "2025-11-23 17:02:11" and rep.rows[1].inplace.wrong == 3
    assert (rep.wrong_total, rep.out_of_bounds) == (3, 3)
    assert rep.errors == ["remote process exited or there was a network error"]
    assert rep.problems == ["3 wrong element(s) reported: results are not correct.", "Out of bounds values: 3.",
                            "error: remote process exited or there was a network error"]
    assert rep.verdict == "ok"  # bandwidth verdict stays separate from correctness


def test_mangled_footer_falls_back_to_computed_average():
    text = read("all_gather-1G-4G-healthy-2.18.3.txt")
    for bad in ("oops", "-nan", "nan FAILED"):
        rep = parse_nccl_tests(text.replace("21.4033 ", bad))
        assert len(rep.rows) == 3 and rep.avg_busbw_source == "computed"
        assert rep.avg_busbw_gbs == pytest.approx(21.4033, abs=0.01)


def test_nothing_to_parse():
    for text in ("", "Authorization required\n", "# nccl-tests version 2.18.3 nccl-headers=22809 nccl-library=22809\n"):
        rep = parse_nccl_tests(text)
        assert rep.rows == [] and rep.verdict == "inconclusive" and rep.avg_busbw_gbs is None
        assert rep.verdict_reason == "No result rows were found, so bandwidth cannot be judged."


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_terminal_decoration_does_not_change_the_result(name: str):
    """Colour codes, terminal hyperlinks (OSC 8) and Ray's process tags, as a
    terminal copy of a Ray job's output carries them."""
    base = parse_nccl_tests(read(name), source_name=name).to_dict()
    decorated = [
        f"(RayWorkerWrapper pid=4242, ip=10.0.0.2) \x1b[32m{line}\x1b[0m" if i % 2 else
        f"\x1b]8;;file:///tmp/log\x1b\\{line}\x1b]8;;\x1b\\"
        for i, line in enumerate(read(name).splitlines())
    ]
    assert parse_nccl_tests("\n".join(decorated), source_name=name).to_dict() == base
