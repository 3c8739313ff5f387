"""Does a run reproduce the committed metrics? Two metrics documents compared, wall times aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: keys whose values measure the machine, not the science: left out of the comparison
TIMINGS = frozenset({"wall_time_s", "steps_per_second"})
#: the metrics the DVC pipeline writes (metrics/bench.json is written by `make bench`, not by it)
PIPELINE_METRICS = ("train.json", "simulate.json", "evaluate.json")


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """JSON paths where two documents differ (values compared exactly), timings aside."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual)):
            if key in TIMINGS:
                continue
            path = f"{where}.{key}" if where else key
            if key not in expected or key not in actual:
                found.append(f"{path}: only in {'the run' if key in actual else 'the reference'}")
            else:
                found += differences(expected[key], actual[key], path)
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items against {len(actual)}"]
        return [
            line
            for k, (a, b) in enumerate(zip(expected, actual, strict=True))
            for line in differences(a, b, f"{where}[{k}]")
        ]
    return [] if expected == actual else [f"{where}: {expected!r} against {actual!r}"]


def compare_metrics(reference: Path, run: Path) -> dict[str, list[str]]:
    """Per pipeline metrics file of ``reference`` (a metrics directory), where ``run``'s differs."""
    return {
        name: differences(json.loads((reference / name).read_text()), json.loads((run / name).read_text()))
        if (run / name).is_file()
        else [f"{run / name} does not exist"]
        for name in PIPELINE_METRICS
    }
