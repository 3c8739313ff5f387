"""Features: zero padding, invariance to order, translation, boosts and scale; dimensions."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.features import FEATURE_FAMILIES, compute_features, feature_dim
from aitimestepper.history import History
from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.physics.state import State
from systems import binary

HISTORY_LEN = 3


def advance(state: State, steps: int, history_len: int = HISTORY_LEN) -> tuple[State, History]:
    """``steps`` leapfrog steps of dt = 0.01 free-fall times, recording the history."""
    history = History.empty(state, history_len)
    for _ in range(steps):
        history = history.push(state)
        state = leapfrog_step(state, 0.01 * state.free_fall_time())
    return state, history


def transformed(state: State, history: History, fn) -> tuple[State, History]:
    """Apply fn(positions, velocities, masses) -> (positions, velocities, masses) to state and history."""
    positions, velocities, masses = fn(state.positions, state.velocities, state.masses)
    new_state = State.from_arrays(positions, velocities, masses, state.softening)
    past_p, past_v, _ = fn(
        history.positions.flatten(0, 1),
        history.velocities.flatten(0, 1),
        state.masses.repeat_interleave(history.length, 0),
    )
    shape = history.positions.shape
    filled_mask = (torch.arange(history.length)[None] < history.filled[:, None]).view(shape[0], shape[1], 1, 1)
    return new_state, History(past_p.view(shape) * filled_mask, past_v.view(shape) * filled_mask, history.filled)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_dimension_matches_feature_dim(family, cluster):
    state, history = advance(cluster, 5)
    assert compute_features(state, history, family).shape == (4, feature_dim(family, HISTORY_LEN))


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_zero_padding_gives_finite_features_and_flags_warm_up(family, cluster):
    for steps in range(HISTORY_LEN + 2):
        state, history = advance(cluster, steps)
        features = compute_features(state, history, family)
        assert torch.isfinite(features).all()
        assert history.warming_up().tolist() == [steps < HISTORY_LEN] * 4
    fresh = compute_features(cluster, History.empty(cluster, HISTORY_LEN), family)
    current = 2 if family == "delta_mag" else feature_dim(family, 0)
    assert torch.all(fresh[:, current:] == 0)  # every past slot padded with exact zeros
    assert torch.all(fresh[:, :current].abs().sum(dim=1) > 0)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_features_invariant_to_particle_order(family, cluster):
    state, history = advance(cluster, 2)  # partly filled history: padding must permute too
    permutation = torch.tensor([2, 0, 3, 1])
    permuted = transformed(state, history, lambda p, v, m: (p[:, permutation], v[:, permutation], m[:, permutation]))
    assert torch.allclose(compute_features(*permuted, family), compute_features(state, history, family), atol=1e-12)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_features_invariant_to_translation_and_boost(family, cluster):
    state, history = advance(cluster, 5)
    shift = torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
    boost = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    moved = transformed(state, history, lambda p, v, m: (p + shift, v + boost, m))
    assert torch.allclose(compute_features(*moved, family), compute_features(state, history, family), atol=1e-9)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
@pytest.mark.parametrize(("length", "mass"), [(10.0, 100.0), (0.01, 1.0), (1.0, 1e-3)])
def test_features_invariant_to_length_and_mass_scale(family, length, mass):
    state, history = advance(binary([0.0, 0.5, 0.9, 0.99], phase=1.0), 5)
    speed = math.sqrt(mass / length)
    scaled = transformed(state, history, lambda p, v, m: (p * length, v * speed, m * mass))
    assert torch.allclose(compute_features(*scaled, family), compute_features(state, history, family), atol=1e-10)


def test_features_tell_binary_phases_apart():
    pericenter = compute_features(binary([0.9], phase=0.0), History.empty(binary([0.9]), 0), "basic")
    apocenter = compute_features(binary([0.9]), History.empty(binary([0.9]), 0), "basic")
    # k = v^2 r / GM is 1 + e at pericenter and 1 - e at apocenter
    assert pericenter[0, 0].item() == pytest.approx(math.log(1.9), abs=1e-9)
    assert apocenter[0, 0].item() == pytest.approx(math.log(0.1), abs=1e-9)


def test_rich_features_recover_the_eccentricity():
    states = binary([0.1, 0.5, 0.95], phase=2.0)
    features = compute_features(states, History.empty(states, 0), "rich")
    assert torch.allclose(features[:, 2], torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64), atol=1e-10)


def test_unknown_family_is_refused(cluster):
    with pytest.raises(ValueError, match="basic"):
        compute_features(cluster, History.empty(cluster, 0), "fancy")
    with pytest.raises(ValueError, match="basic"):
        feature_dim("fancy", 2)
