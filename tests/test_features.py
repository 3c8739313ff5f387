"""Features: zero padding, invariance to order, translation, boosts and scale; dimensions."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.features import FEATURE_FAMILIES, compute_features, feature_dim, snapshot, snapshot_width
from aitimestepper.history import History
from aitimestepper.physics import gravity
from aitimestepper.physics.initial_conditions import virial_cluster
from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.physics.state import State
from systems import binary

HISTORY_LEN = 3


def advance(state: State, steps: int) -> tuple[State, list[State]]:
    """``steps`` leapfrog steps of dt = 0.01 free-fall times: the last state and the past ones,
    most recent first."""
    past = []
    for _ in range(steps):
        past.insert(0, state)
        state = leapfrog_step(state, 0.01 * state.free_fall_time())
    return state, past


def window(past: list[State], family: str, batch_size: int, length: int = HISTORY_LEN) -> History:
    """The history a policy builds while stepping through ``past`` (most recent first)."""
    history = History.empty(batch_size, length, snapshot_width(family))
    for state in reversed(past):
        history = history.push(snapshot(state, family).rows)
    return history


def features(state: State, past: list[State], family: str) -> torch.Tensor:
    return compute_features(state, window(past, family, state.batch_size), family)


def transformed(state: State, past: list[State], fn) -> tuple[State, list[State]]:
    """Apply fn(positions, velocities, masses) -> (positions, velocities, masses) to every state."""

    def apply(one: State) -> State:
        return State.from_arrays(*fn(one.positions, one.velocities, one.masses), one.softening)

    return apply(state), [apply(one) for one in past]


def test_history_keeps_what_the_policy_saw_most_recent_first(cluster):
    state, past = advance(cluster, 5)
    history = window(past, "basic", 4)
    assert history.filled.tolist() == [HISTORY_LEN] * 4
    for slot in range(HISTORY_LEN):
        assert torch.equal(history.rows[:, slot], snapshot(past[slot], "basic").rows)
    grown = history.push_where(torch.tensor([True, False, True, False]), snapshot(state, "basic").rows)
    assert torch.equal(grown.rows[0, 0], snapshot(state, "basic").rows[0])
    assert torch.equal(grown.rows[1], history.rows[1])
    assert torch.equal(grown.rows[0, 1:], history.rows[0, :-1])
    cleared = grown.reset_where(torch.tensor([True, False, False, False]))
    assert cleared.filled.tolist() == [0, HISTORY_LEN, HISTORY_LEN, HISTORY_LEN]
    assert torch.all(cleared.rows[0] == 0)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_dimension_matches_feature_dim(family, cluster):
    state, past = advance(cluster, 5)
    assert features(state, past, family).shape == (4, feature_dim(family, HISTORY_LEN))


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_zero_padding_gives_finite_features_and_flags_warm_up(family, cluster):
    for steps in range(HISTORY_LEN + 2):
        state, past = advance(cluster, steps)
        assert torch.isfinite(features(state, past, family)).all()
        assert window(past, family, 4).warming_up().tolist() == [steps < HISTORY_LEN] * 4
    fresh = features(cluster, [], family)
    current = 2 if family == "delta_mag" else feature_dim(family, 0)
    assert torch.all(fresh[:, current:] == 0)  # every past slot padded with exact zeros
    assert torch.all(fresh[:, :current].abs().sum(dim=1) > 0)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_features_invariant_to_particle_order(family, cluster):
    state, past = advance(cluster, 2)  # partly filled history: padding must permute too
    permutation = torch.tensor([2, 0, 3, 1])
    permuted = transformed(state, past, lambda p, v, m: (p[:, permutation], v[:, permutation], m[:, permutation]))
    assert torch.allclose(features(*permuted, family), features(state, past, family), atol=1e-12)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_features_invariant_to_translation_and_boost(family, cluster):
    state, past = advance(cluster, 5)
    shift = torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
    boost = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    moved = transformed(state, past, lambda p, v, m: (p + shift, v + boost, m))
    assert torch.allclose(features(*moved, family), features(state, past, family), atol=1e-9)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
@pytest.mark.parametrize(("length", "mass"), [(10.0, 100.0), (0.01, 1.0), (1.0, 1e-3)])
def test_features_invariant_to_length_and_mass_scale(family, length, mass):
    state, past = advance(binary([0.0, 0.5, 0.9, 0.99], phase=1.0), 5)
    speed = math.sqrt(mass / length)
    scaled = transformed(state, past, lambda p, v, m: (p * length, v * speed, m * mass))
    assert torch.allclose(features(*scaled, family), features(state, past, family), atol=1e-10)


def test_features_tell_binary_phases_apart():
    pericenter = features(binary([0.9], phase=0.0), [], "basic")
    apocenter = features(binary([0.9]), [], "basic")
    # k = v^2 r / GM is 1 + e at pericenter and 1 - e at apocenter
    assert pericenter[0, 0].item() == pytest.approx(math.log(1.9), abs=1e-9)
    assert apocenter[0, 0].item() == pytest.approx(math.log(0.1), abs=1e-9)


def test_rich_features_recover_the_eccentricity():
    states = binary([0.1, 0.5, 0.95], phase=2.0)
    rich = features(states, [], "rich")
    assert torch.allclose(rich[:, 2], torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64), atol=1e-10)


def test_unknown_family_is_refused(cluster):
    with pytest.raises(ValueError, match="basic"):
        compute_features(cluster, History.empty(4, 0, 2), "fancy")
    with pytest.raises(ValueError, match="basic"):
        feature_dim("fancy", 2)


@pytest.mark.parametrize(("bodies", "dim", "softening"), [(2, 2, 0.0), (3, 2, 0.01), (5, 3, 0.0), (8, 2, 0.05)])
def test_snapshot_reads_the_pair_with_the_shortest_free_fall_time(bodies, dim, softening):
    """The critical pair found over the pair list is the argmin of the full N x N free-fall
    matrix: the same free-fall time bit for bit, and (log k, cos phi) of that pair by hand."""
    state = virial_cluster(64, bodies, torch.Generator().manual_seed(bodies), dim=dim, softening=softening)
    look = snapshot(state, "basic")
    assert torch.equal(look.free_fall_time, state.free_fall_time())
    times = gravity.free_fall_times(state.positions, state.masses, softening).flatten(1)
    for k, pair in enumerate(times.argmin(dim=1).tolist()):
        i, j = divmod(pair, bodies)
        r = state.positions[k, j] - state.positions[k, i]
        v = state.velocities[k, j] - state.velocities[k, i]
        distance = (r.square().sum() + softening**2).sqrt()
        kinetic_ratio = v.square().sum() * distance / (state.masses[k, i] + state.masses[k, j])
        expected = torch.stack([(kinetic_ratio + 1e-12).log(), (r @ v) / (r.norm() * v.norm())])
        torch.testing.assert_close(look.rows[k], expected, rtol=1e-12, atol=1e-12)
