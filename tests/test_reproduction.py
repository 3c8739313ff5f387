"""The reproduction check: metrics compared exactly, wall times aside."""

from __future__ import annotations

import json
import subprocess
import sys

from aitimestepper.reproduction import PIPELINE_METRICS, compare_metrics, differences

DOCUMENT = {"wall_time_s": 1.0, "summary": {"steps_per_second": 5.0, "pass": 0.999}, "rows": [{"cost": 1.25}]}


def test_timings_are_ignored_and_every_other_value_compared_exactly():
    rerun = {"wall_time_s": 9.0, "summary": {"steps_per_second": 7.0, "pass": 0.999}, "rows": [{"cost": 1.25}]}
    assert differences(DOCUMENT, rerun) == []
    assert differences(DOCUMENT, {**rerun, "rows": [{"cost": 1.2500000000000002}]}) == [
        "rows[0].cost: 1.25 against 1.2500000000000002"
    ]
    assert differences(DOCUMENT, {**rerun, "rows": []}) == ["rows: 1 items against 0"]
    assert differences(DOCUMENT, {**rerun, "extra": None}) == ["extra: only in the run"]


def test_the_command_exits_1_on_a_difference_and_0_when_identical(tmp_path):
    for name in ("reference", "same", "other"):
        (tmp_path / name).mkdir()
        for metrics in PIPELINE_METRICS:
            value = 0.5 if name == "other" and metrics == "evaluate.json" else 0.25
            (tmp_path / name / metrics).write_text(json.dumps({"wall_time_s": len(name), "value": value}))
    assert compare_metrics(tmp_path / "reference", tmp_path / "other")["evaluate.json"] == ["value: 0.25 against 0.5"]

    def command(run: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "aitimestepper", "compare-metrics", "reference", run],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert command("same").returncode == 0
    different = command("other")
    assert different.returncode == 1 and "evaluate.json: 1 difference(s)" in different.stdout
