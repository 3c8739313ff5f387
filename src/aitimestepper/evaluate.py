"""The evaluation stage: the learned policy against classical rules on held-out binaries.

Held-out suite: equal-mass and q = 0.1 Kepler binaries with e in {0.5, 0.9, 0.99}, starting at
apocenter and at pericenter, a = 1, M = 1, for ``evaluation.duration_periods`` periods. Every
policy uses the same leapfrog step and gate. The free-fall rule's eta is tuned once, on systems
drawn like the training systems (``seed``), to the largest value whose every step passes, then
frozen. Costs are force evaluations per orbit (rejected tries included) and their ratio to the
greedy oracle's.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from aitimestepper.atomic import write_json
from aitimestepper.config import Params
from aitimestepper.physics.initial_conditions import KeplerElements, kepler_binary
from aitimestepper.policies import FreeFall, Oracle, TimeStepPolicy
from aitimestepper.rollout import rollout
from aitimestepper.simulate import load_any_policy, threshold_of
from aitimestepper.training.sampler import SystemSampler

ECCENTRICITIES = (0.5, 0.9, 0.99)
PHASES = {"apocenter": math.pi, "pericenter": 0.0}
MASS_RATIOS = (1.0, 0.1)
_TUNING_SYSTEMS = 32
_TUNING_PERIODS = 2.0


def held_out_binaries() -> tuple[KeplerElements, list[dict[str, Any]]]:
    """The suite's elements (12 binaries) and a label dict per system."""
    labels = [
        {"eccentricity": e, "start": start, "mass_ratio": q}
        for q in MASS_RATIOS
        for start in PHASES
        for e in ECCENTRICITIES
    ]
    column = lambda key: torch.tensor([label[key] for label in labels], dtype=torch.float64)  # noqa: E731
    ones = torch.ones(len(labels), dtype=torch.float64)
    phase = torch.tensor([PHASES[label["start"]] for label in labels], dtype=torch.float64)
    return KeplerElements(column("eccentricity"), ones, ones, column("mass_ratio"), phase), labels


def tune_free_fall(params: Params, energy_threshold: float) -> float:
    """The largest eta (within 2%) whose every step passes on training-like systems."""
    sampler = SystemSampler(params, torch.Generator().manual_seed(params.seed))
    state, period = sampler.draw(_TUNING_SYSTEMS)
    low, high = 1e-4, 1.0
    while high / low > 1.02:
        middle = math.sqrt(low * high)
        result = rollout(
            state, FreeFall(middle), _TUNING_PERIODS * period, energy_threshold=energy_threshold, max_steps=1_000_000
        )
        if bool((result.steps_passed == result.steps).all()):
            low = middle
        else:
            high = middle
    return low


def run_policy(policy: TimeStepPolicy, elements: KeplerElements, params: Params, threshold: float, gated: bool = False):
    """Rollout of the suite with one policy; per-system dicts of costs and errors."""
    periods = params.evaluation.duration_periods
    result = rollout(
        kepler_binary(elements, dim=params.physics.dim),
        policy,
        periods * elements.period,
        energy_threshold=threshold,
        max_steps=params.simulation.max_steps,
        gated=gated,
    )
    steps = result.steps.double()
    return [
        {
            "steps_per_orbit": float(steps[k] / periods),
            "force_evaluations_per_orbit": float(result.force_evaluations[k] / periods),
            "gate_pass_rate": float(result.steps_passed[k] / steps[k].clamp_min(1)),
            "max_energy_error": float(result.max_energy_error[k]),
            "final_energy_error": float(result.final_energy_error[k]),
            "reached_end": bool(result.reached_end[k]),
        }
        for k in range(len(steps))
    ]


def evaluate(params: Params, source: str, progress=None) -> dict[str, Any]:
    """Evaluate the policy at ``source`` (checkpoint path or MLflow URI) against free-fall and
    the oracle; returns the JSON-ready report with a per-policy summary."""
    learned = load_any_policy(source, params)
    threshold = threshold_of(learned, params)
    elements, labels = held_out_binaries()
    eta = tune_free_fall(params, threshold)
    contenders = {
        "learned": (learned, False),
        "learned_gated": (learned, True),
        "free_fall": (FreeFall(eta), False),
        "oracle": (Oracle(threshold), False),
    }
    per_policy = {}
    for name, (policy, gated) in contenders.items():
        per_policy[name] = run_policy(policy, elements, params, threshold, gated=gated)
        if progress is not None:
            progress(name)
    oracle_cost = [s["force_evaluations_per_orbit"] for s in per_policy["oracle"]]
    systems = []
    for k, label in enumerate(labels):
        entry = dict(label)
        for name, results in per_policy.items():
            cost = results[k]["force_evaluations_per_orbit"]
            entry[name] = {**results[k], "ratio_to_oracle": cost / oracle_cost[k]}
        systems.append(entry)
    summary = {name: _policy_summary([s[name] for s in systems]) for name in contenders}
    return {
        "source": source,
        "energy_threshold": threshold,
        "duration_periods": params.evaluation.duration_periods,
        "free_fall_eta": eta,
        "summary": summary,
        "systems": systems,
    }


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The learned (ungated) policy's numbers that decide promotion."""
    learned = report["summary"]["learned"]
    return {
        "pass_rate": learned["gate_pass_rate"],
        "force_evaluations_per_orbit": learned["mean_force_evaluations_per_orbit"],
        "median_ratio_to_oracle": learned["median_ratio_to_oracle"],
    }


def write_report(report: dict[str, Any], output: Path, plots_dir: Path | None) -> None:
    """The report JSON and the cost-versus-accuracy plot."""
    write_json(output, report)
    if plots_dir is not None:
        from aitimestepper.plots import cost_vs_error

        cost_vs_error(report["summary"], Path(plots_dir) / "cost_vs_error.png", report["energy_threshold"])


def _policy_summary(results: list[dict[str, Any]]) -> dict[str, float]:
    steps = [r["steps_per_orbit"] for r in results]
    return {
        "gate_pass_rate": sum(r["gate_pass_rate"] * s for r, s in zip(results, steps, strict=True)) / sum(steps),
        "mean_force_evaluations_per_orbit": statistics.fmean(r["force_evaluations_per_orbit"] for r in results),
        "median_ratio_to_oracle": statistics.median(r["ratio_to_oracle"] for r in results),
        "max_energy_error": max(r["max_energy_error"] for r in results),
        "all_reached_end": float(all(r["reached_end"] for r in results)),
    }
