"""Tuning the classical baselines of one family, on training-seed systems, before they are frozen.

- free-fall, energy-normalised free-fall and PRS23: the largest eta (within ``TOLERANCE``) whose
  every step passes the gate on every tuning system, ungated (bisection in log eta);
- the energy-feedback controller: the target fraction of ``evaluation.controller_targets`` with
  the fewest force evaluations, gated, rejected tries counted;
- fixed dt: the smallest step the greedy oracle takes on the tuning systems (a fixed dt must
  survive the hardest state).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from aitimestepper.config import Params
from aitimestepper.evaluation.runs import run_family
from aitimestepper.evaluation.suite import Family
from aitimestepper.policies import PRS23, EnergyFeedback, EnergyFreeFall, FreeFall, Oracle, TimeStepPolicy
from aitimestepper.rollout import rollout

#: bisection stops when the bracket is narrower than this factor
TOLERANCE = 1.03
#: bisection brackets of eta per rule (wide enough for every family at 1e-5 to 1e-3)
ETA_BRACKETS: dict[str, tuple[type[TimeStepPolicy], float, float]] = {
    "free_fall": (FreeFall, 1e-4, 1.0),
    "energy_free_fall": (EnergyFreeFall, 1e-3, 10.0),
    "prs23": (PRS23, 1e-4, 3.0),
}


def _passes_everywhere(family: Family, policy: TimeStepPolicy, threshold: float, max_steps: int) -> bool:
    rows = run_family(family, policy, energy_threshold=threshold, gated=False, max_steps=max_steps)
    return all(row["gate_pass_rate"] == 1.0 and row["reached_end"] and not row["failed"] for row in rows)


def tune_eta(
    make: Callable[[float], TimeStepPolicy], family: Family, threshold: float, low: float, high: float, max_steps: int
) -> float:
    """The largest eta in [low, high] (within ``TOLERANCE``) whose every step passes on ``family``;
    ``low`` if none does."""
    if _passes_everywhere(family, make(high), threshold, max_steps):
        return high
    while high / low > TOLERANCE:
        middle = math.sqrt(low * high)
        low, high = (middle, high) if _passes_everywhere(family, make(middle), threshold, max_steps) else (low, middle)
    return low


def tune_controller(family: Family, threshold: float, targets: tuple[float, ...], max_steps: int) -> float:
    """The target with the fewest force evaluations per time scale over ``family``, gated."""

    def cost(target: float) -> float:
        rows = run_family(
            family,
            EnergyFeedback(threshold, target=target),
            energy_threshold=threshold,
            gated=True,
            max_steps=max_steps,
        )
        return sum(row["force_evaluations_per_time_scale"] for row in rows)

    return min(targets, key=cost)


def tune_fixed_step(family: Family, threshold: float, max_steps: int) -> float:
    """The smallest step the oracle proposes along the runs of ``family``."""
    oracle = Oracle(threshold)
    return min(
        float(
            rollout(
                group.state, oracle, family.duration * group.time_scale, energy_threshold=threshold, max_steps=max_steps
            ).proposed_dt_min.min()
        )
        for group in family.groups
    )


def tuned_values(params: Params, family: Family, threshold: float) -> dict[str, float]:
    """The frozen parameters of every classical rule for one family (tuning systems) and threshold."""
    max_steps = params.simulation.max_steps
    values = {
        name: tune_eta(make, family, threshold, low, high, max_steps)
        for name, (make, low, high) in ETA_BRACKETS.items()
    }
    values["energy_feedback"] = tune_controller(family, threshold, params.evaluation.controller_targets, max_steps)
    values["fixed"] = tune_fixed_step(family, threshold, max_steps)
    return values
