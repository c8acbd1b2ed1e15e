"""The reliability report script runs the chosen fault scenarios and writes their outcomes as a table."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_report_lists_each_scenario_with_its_description_and_outcome(tmp_path):
    out = tmp_path / "reliability.md"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "reliability_report.py"),
            "--out",
            str(out),
            "-k",
            "write_errors or nan_loss_stops",
            "tests/test_faults.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| Training faults")]
    assert len(rows) == 2 and all("| passed |" in row for row in rows)
    assert any(
        "an error naming the file and the fix" in row for row in rows
    )  # the test's docstring is the description
    assert "2 of 2 scenarios passed" in out.read_text()
