"""Acceptance of the default training: safe and more efficient than the best free-fall rule.

Trains with the shipped params.yaml (the default pipeline's model) and integrates held-out
Kepler binaries (e = 0.5, 0.9, 0.99, apocenter and pericenter starts, 10 periods) ungated.
"""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.config import load_params
from aitimestepper.physics.initial_conditions import KeplerElements, kepler_binary
from aitimestepper.policies import FreeFall, TimeStepPolicy
from aitimestepper.rollout import rollout
from aitimestepper.training.trainer import train
from training_params import REPO

PERIODS = 10.0


def held_out(policy: TimeStepPolicy, threshold: float) -> tuple[float, torch.Tensor]:
    """(fraction of steps passing the gate, steps per orbit of each system)."""
    e = torch.tensor([0.5, 0.9, 0.99] * 2, dtype=torch.float64)
    phase = torch.tensor([math.pi] * 3 + [0.0] * 3, dtype=torch.float64)
    ones = torch.ones_like(e)
    elements = KeplerElements(e, ones, ones, ones, phase)
    result = rollout(
        kepler_binary(elements), policy, PERIODS * elements.period, energy_threshold=threshold, max_steps=100_000
    )
    assert result.reached_end.all()
    return float(result.steps_passed.sum() / result.steps.sum()), result.steps.double() / PERIODS


def best_passing_free_fall(threshold: float) -> tuple[float, torch.Tensor]:
    """The largest free-fall eta (within 2%) whose every step passes, and its steps per orbit."""
    low, high = 1e-3, 0.1
    while high / low > 1.02:
        middle = math.sqrt(low * high)
        passing, _ = held_out(FreeFall(middle), threshold)
        low, high = (middle, high) if passing == 1.0 else (low, middle)
    return low, held_out(FreeFall(low), threshold)[1]


@pytest.mark.slow
def test_default_model_is_safe_and_beats_the_best_free_fall_rule(tmp_path):
    params = load_params(REPO / "params.yaml")
    result = train(params, tmp_path)
    from aitimestepper.checkpoint import load_policy

    learned = load_policy(result.model_path)
    pass_rate, learned_steps = held_out(learned, params.energy_threshold)
    eta, free_fall_steps = best_passing_free_fall(params.energy_threshold)
    print(f"learned pass rate {pass_rate}, steps/orbit {learned_steps.tolist()}")
    print(f"free-fall eta {eta:.4f}, steps/orbit {free_fall_steps.tolist()}")
    assert pass_rate >= 0.999
    assert (learned_steps < free_fall_steps).all()
