"""Validation orbits: choose which snapshot of the oscillating training to keep.

The validation binaries are disjoint from the held-out evaluation suite (e in {0.5, 0.9, 0.99},
apocenter and pericenter starts): model selection never sees a system it is then scored on.
"""

from __future__ import annotations

import math

import torch

from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.initial_conditions import KeplerElements, kepler_binary
from aitimestepper.physics.state import State
from aitimestepper.rollout import rollout

VALIDATION_ECCENTRICITIES = (0.4, 0.7, 0.85, 0.95, 0.985, 0.993)
#: start phases (mean anomaly): apocenter, pericenter, and a quarter period out, where a policy with a
#: history window starts on padded features in the middle of a fast change
VALIDATION_PHASES = (math.pi, 0.0, 0.5 * math.pi)
#: pass rates at or above this count as equal, so fewer steps decide between them
PASS_RATE_TARGET = 0.999
#: a policy needing more steps than this per period is not worth finishing the orbit for
_MAX_STEPS_PER_PERIOD = 5000


def validation_binaries(params: Params) -> KeplerElements:
    """Equal-mass a = 1 binaries: every eccentricity of ``VALIDATION_ECCENTRICITIES`` at every
    start phase of ``VALIDATION_PHASES``."""
    e = torch.tensor(VALIDATION_ECCENTRICITIES * len(VALIDATION_PHASES), dtype=torch.float64)
    phase = torch.tensor(VALIDATION_PHASES, dtype=torch.float64).repeat_interleave(len(VALIDATION_ECCENTRICITIES))
    ones = torch.ones_like(e)
    return KeplerElements(e, ones, ones * params.initial_conditions.total_mass, ones, phase)


def validation_thresholds(params: Params) -> tuple[float, ...]:
    """The thresholds a model is validated at: ``energy_threshold``, and the lowest training
    threshold when the training range extends below it."""
    lowest = params.energy_threshold * params.training.threshold_factor_min
    return (params.energy_threshold,) if lowest == params.energy_threshold else (params.energy_threshold, lowest)


def validate(policy: LearnedPolicy, params: Params) -> dict[str, float]:
    """Ungated rollout of the validation binaries for ``training.validation_periods`` periods,
    at every threshold of :func:`validation_thresholds` (one batch).

    Returns:
        ``pass_rate`` (fraction of all steps under the threshold), ``worst_pass_rate`` (the
        lowest fraction of one system: a few failing steps of a low-eccentricity orbit, which
        takes few steps, hardly move the overall rate), ``steps_per_orbit`` (mean),
        ``max_energy_error``, ``reached_end`` (fraction of systems).
    """
    elements = validation_binaries(params)
    periods = params.training.validation_periods
    state = kepler_binary(elements, dim=params.physics.dim, softening=params.physics.softening)
    levels = validation_thresholds(params)
    thresholds = torch.tensor(levels, dtype=torch.float64).repeat_interleave(state.batch_size)
    result = rollout(
        State.concatenate([state] * len(levels)),
        policy.at_threshold(thresholds),
        (periods * elements.period).repeat(len(levels)),
        energy_threshold=thresholds,
        max_steps=int(_MAX_STEPS_PER_PERIOD * periods),
    )
    steps = result.steps.double()
    return {
        "pass_rate": float(result.steps_passed.sum() / steps.sum().clamp_min(1)),
        "worst_pass_rate": float((result.steps_passed / steps.clamp_min(1)).min()),
        "steps_per_orbit": float(steps.mean() / periods),
        "max_energy_error": float(result.max_energy_error.max()),
        "reached_end": float(result.reached_end.double().mean()),
    }


def score(metrics: dict[str, float]) -> tuple[float, float]:
    """Sort key, larger is better: the worst system's pass rate (capped at the target), then
    fewer steps."""
    reached = metrics["reached_end"] == 1.0
    return (min(metrics["worst_pass_rate"], PASS_RATE_TARGET) if reached else -1.0, -metrics["steps_per_orbit"])
