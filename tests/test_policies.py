"""Classical time-step policies: fixed, free-fall and the greedy oracle."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.history import History
from aitimestepper.physics.initial_conditions import kepler_binary, sample_kepler_elements
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.policies import FixedStep, FreeFall, Oracle, make_policy
from systems import binary

THRESHOLD = 2e-4


def sampled_states(generator, count=48):
    elements = sample_kepler_elements(
        count,
        generator,
        eccentricity_range=(0.0, 0.995),
        eccentricity_sampling="log_one_minus_e",
        semi_major_axis_range=(0.5, 2.0),
        mass_ratio_range=(0.1, 1.0),
        total_mass=1.0,
        start_phase="random",
    )
    return kepler_binary(elements)


def test_oracle_step_passes_and_five_percent_more_fails(generator, cluster):
    oracle = Oracle(THRESHOLD)
    for states in (sampled_states(generator), cluster):
        dt = oracle.propose(states, History.empty(states.batch_size, 0, 0))
        _, error = step_energy_error(states, dt)
        _, error_larger = step_energy_error(states, 1.05 * dt)
        assert torch.all(error <= THRESHOLD)
        assert torch.all(error_larger > THRESHOLD)
        assert torch.all(error > 0.5 * THRESHOLD)  # the largest passing step sits near the edge


def test_oracle_steps_shrink_with_the_threshold(generator):
    states = sampled_states(generator, 16)
    loose = Oracle(1e-3).propose(states, History.empty(states.batch_size, 0, 0))
    tight = Oracle(1e-5).propose(states, History.empty(states.batch_size, 0, 0))
    assert torch.all(tight < loose)
    # leapfrog's one-step energy error scales as dt^3 (mostly): dt ratio near 100^(1/3) = 4.6
    assert 2.5 < (loose / tight).median().item() < 8.0


def test_free_fall_step_is_eta_times_the_pair_time():
    states = binary([0.0, 0.9], semi_major_axis=2.0, total_mass=4.0)
    dt = FreeFall(0.1).propose(states, History.empty(states.batch_size, 0, 0))
    separation = torch.tensor([2.0, 2.0 * 1.9], dtype=torch.float64)  # apocenter a (1 + e)
    assert torch.allclose(dt, 0.1 * (separation**3 / 4.0).sqrt(), rtol=1e-12)


def test_fixed_step_is_constant(cluster):
    assert torch.equal(
        FixedStep(0.25).propose(cluster, History.empty(cluster.batch_size, 0, 0)),
        torch.full((4,), 0.25, dtype=torch.float64),
    )


def test_make_policy_lists_valid_names():
    assert isinstance(make_policy("oracle", energy_threshold=1e-4, fixed_dt=1.0, eta=0.1), Oracle)
    with pytest.raises(ValueError, match="free_fall"):
        make_policy("rk4", energy_threshold=1e-4, fixed_dt=1.0, eta=0.1)
    with pytest.raises(ValueError, match="eta"):
        FreeFall(-1.0)
    with pytest.raises(ValueError, match="energy_threshold"):
        Oracle(math.inf)
