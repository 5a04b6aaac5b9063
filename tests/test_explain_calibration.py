"""The calibration table in docs/ is what the code computes, and meets the bar."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sparkctl.perf.calibration import decode_rows, evaluate, load_measurements, summarize

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = ROOT / "docs" / "explain" / "measurements.yaml"
CONFIGS = ROOT / "tests" / "fixtures" / "model-configs"


def test_docs_table_matches_the_code():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "explain_calibration.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_calibration_meets_the_requirement():
    rows = evaluate(load_measurements(str(MEASUREMENTS)), str(CONFIGS))
    summary = summarize(decode_rows(rows))
    assert summary.cases >= 15
    assert summary.median_abs_error <= 0.20
    assert summary.within_25 >= 0.70


def test_required_measurements_are_in_the_table():
    ids = {c.id for c in load_measurements(str(MEASUREMENTS))}
    assert {"seed000-llama70b-bf16-tp2", "seed002-llama3b-t4-bs1", "seed002-llama3b-t4-bs8",
            "lmsys-llama8b-fp8-c1", "sparkarena-gptoss120b-tp1", "issue10-gptoss120b-tp2"} <= ids


def test_every_case_names_a_source_and_an_existing_config():
    for case in load_measurements(str(MEASUREMENTS)):
        assert case.source
        assert (CONFIGS / f"{case.model}.json").exists(), case.model
