"""Shareable reports (`--report FILE.html|FILE.md`): rendered from real results,
then loaded in a real headless Chromium (Debian's package): a screenshot is
taken, the DOM has its tables and embedded images, and Chromium's own network
log shows that the page requested nothing (a control page proves it would)."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sparkctl.agent import node_facts as nf
from sparkctl.checks import ClusterSpec, NodeSpec, check_cluster
from sparkctl.probes.allreduce import ProbeOptions, ProbeResult, ProbeRow, analyse
from sparkctl.report import Report, Section, Table, write_report
from sparkctl.report.check import check_report
from sparkctl.report.probe import probe_report
from tests.conftest import REPO, sparkctl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/install-system-deps.sh)")
QUIET_BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--disable-default-apps"]


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.srcs += [v or "" for k, v in attrs if k in ("src", "href")]


def load_in_chromium(page: Path, tmp_path: Path) -> tuple[_Dom, list[str]]:
    """(the DOM Chromium built, the URLs the page itself requested), from --dump-dom and --log-net-log."""
    netlog = tmp_path / f"{page.stem}-netlog.json"
    done = subprocess.run([CHROMIUM, *QUIET_BROWSER, f"--log-net-log={netlog}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # Chromium's own background requests carry no page origin ("not an origin"); the page's do.
    starts = [e.get("params") or {} for e in log["events"] if e["type"] == start_job]
    requested = [p["url"] for p in starts if "url" in p and p.get("initiator") != "not an origin"
                 and not p["url"].startswith(("file:", "data:"))]
    return dom, requested


def screenshot(page: Path, out: Path) -> bytes:
    done = subprocess.run([CHROMIUM, *QUIET_BROWSER, f"--screenshot={out}", "--window-size=1280,1800", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return out.read_bytes()


@pytest.fixture
def stream_url():
    proc = subprocess.Popen([sys.executable, "-m", "tests.stream_server", "--port", "0", "--ttft-ms", "30",
                             "--itl-ms", "4"], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        yield "http://127.0.0.1:" + line.split()[-1]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@needs_chromium
def test_bench_report_is_self_contained_and_reads_in_chromium(stream_url, tmp_path):
    pytest.importorskip("matplotlib")
    page, md = tmp_path / "bench.html", tmp_path / "bench.md"
    args = ["bench", "--url", stream_url, "--concurrency", "1,4", "--input-len", "24", "--output-len", "12",
            "--num-prompts", "12", "--warmup", "1", "-q", "--slo", "ttft=500"]
    done = sparkctl(*args, "--report", str(page), timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"report: {page}"
    assert sparkctl(*args, "--report", str(md), timeout=180).returncode == 0

    text = page.read_text()
    assert len(text) < 400_000  # small enough to attach to a forum post
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text) and "<script" not in text
    assert "sparkctl bench --url" in text and "c=4 in=24 out=12" in text  # the command line and the steps

    dom, requested = load_in_chromium(page, tmp_path)
    assert dom.tags.get("table", 0) >= 3 and dom.tags.get("img") == 1
    assert all(src.startswith("data:image/png;base64,") for src in dom.srcs)
    assert requested == []
    png = screenshot(page, tmp_path / "bench.png")
    assert png.startswith(b"\x89PNG") and len(png) > 20_000

    markdown = md.read_text()
    assert "| STEP | OK |" in markdown and "c=1 in=24 out=12" in markdown and "<img" not in markdown


@needs_chromium
def test_the_network_check_would_catch_an_external_resource(tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><table><tr><td>1</td></tr></table><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, requested = load_in_chromium(page, tmp_path)
    assert requested == ["http://127.0.0.1:9/x.png"]


def _pair_check_report(monkeypatch):
    facts = {}
    for name, tree in (("spark-a", "spark-healthy-a"), ("spark-b", "mtu-1500")):
        monkeypatch.setenv(nf.SYSFS_ENV, str(REPO / "tests" / "fixtures" / "sysfs" / tree))
        facts[name] = nf.gather({"sections": ["system", "rdma", "netdevs", "env"], "env": {}})
    monkeypatch.delenv(nf.SYSFS_ENV)
    spec = ClusterSpec(nodes=(NodeSpec("spark-a", role="head", host="192.168.1.163"),
                              NodeSpec("spark-b", host="192.168.1.164")), cluster="pair <&> test")
    return check_cluster(spec, facts)


@needs_chromium
def test_check_report_shows_findings_with_hints_and_the_plan(monkeypatch, tmp_path):
    report = _pair_check_report(monkeypatch)
    built = check_report(report, command="sparkctl check -i pair.yaml --report out.html", created="2026-11-29 12:00")
    page = Path(write_report(built, str(tmp_path / "check.html")))
    text = page.read_text()
    assert "net.mtu-match" in text and "hint:" in text and "NCCL_IB_HCA" in text
    assert "pair &lt;&amp;&gt; test" in text  # escaped, never markup
    dom, requested = load_in_chromium(page, tmp_path)
    assert dom.tags.get("table", 0) >= 3 and requested == []
    screenshot(page, tmp_path / "check.png")
    md = Path(write_report(built, str(tmp_path / "check.md"))).read_text()
    assert "| FAIL | (cluster) | net.mtu-match |" in md


def test_probe_report_has_the_sweep_verdict_and_token_cost(tmp_path):
    rows = [ProbeRow(size, "eager", 100, p50, p50 * 1.5, p50 * 0.9, p50, size / p50 / 1e3, size / p50 / 1e3, True)
            for size, p50 in ((8, 18.0), (8192, 27.8), (256 * 2**20, 12538.0))]
    result = ProbeResult(world_size=2, backend="nccl", rows=rows, modes=["eager"], ranks_agree=True)
    report = analyse(result, {"spark-a": "", "spark-b": ""}, ProbeOptions())
    built = probe_report(report, command="sparkctl nccl-probe -i pair.yaml", created="now", cluster="pair")
    assert built.verdict.headline == f"verdict: {report.verdict}"
    html_text = Path(write_report(built, str(tmp_path / "probe.html"))).read_text()
    assert "All-reduce sweep, eager mode" in html_text and "256 MiB" in html_text
    md = Path(write_report(built, str(tmp_path / "probe.md"))).read_text()
    assert "| 8 KiB |" in md or "| 8K |" in md or "8 KiB" in md


def test_a_report_name_without_html_or_md_is_refused_before_measuring(tmp_path):
    done = sparkctl("bench", "--url", "http://127.0.0.1:9", "--report", str(tmp_path / "out.pdf"))
    assert done.returncode == 2 and "must end in .html or .md" in done.stderr
    done = sparkctl("bench", "--url", "http://127.0.0.1:9", "--report", str(tmp_path / "missing" / "out.html"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_markdown_escapes_table_pipes():
    from sparkctl.report.markdown import render_markdown

    report = Report("t", "sparkctl x", "now", (("k", "a|b"),), None,
                    (Section("s", (Table(("h",), (("x|y",),)),)),))
    assert "a\\|b" in render_markdown(report) and "x\\|y" in render_markdown(report)


@pytest.mark.vllm  # torch from the repo's .venv runs the gloo probe on the built-in local pair
@pytest.mark.timeout(300)
def test_nccl_probe_report_from_a_real_probe_on_the_local_pair(tmp_path):
    page = tmp_path / "probe.html"
    done = sparkctl("nccl-probe", "-i", str(REPO / "inventories" / "local.yaml"), "--python",
                    str(REPO / ".venv" / "bin" / "python"), "--sizes", "8,4K", "--modes", "eager", "--time-budget",
                    "0.05", "-q", "--report", str(page), timeout=280)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"report: {page}"
    text = page.read_text()
    assert "All-reduce sweep, eager mode" in text and "gloo" in text and "verdict: inconclusive" in text
    assert "4 KiB" in text and "<script" not in text
