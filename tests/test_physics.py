"""Physics: Kepler orbits, convergence order, reversibility, batching, conservation, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.physics import gravity
from aitimestepper.physics.integrator import leapfrog_step, relative_energy_error, step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.systems.kepler import kepler_binary
from systems import binary, binary_elements, integrate_fixed

TWO_PI = 2.0 * math.pi  # period of an a = 1, M = 1 binary


@pytest.mark.parametrize(("eccentricity", "steps_per_orbit", "bound"), [(0.0, 200, 1e-4), (0.9, 4000, 1e-2)])
def test_energy_error_stays_bounded_over_ten_periods(eccentricity, steps_per_orbit, bound):
    state = binary([eccentricity])
    _, worst_first = integrate_fixed(state, TWO_PI / steps_per_orbit, steps_per_orbit)
    _, worst_all = integrate_fixed(state, TWO_PI / steps_per_orbit, 10 * steps_per_orbit)
    assert worst_all.item() < bound
    # symplectic: no secular growth, ten periods are about as bad as the first
    assert worst_all.item() < 1.5 * worst_first.item()


@pytest.mark.parametrize(("eccentricity", "steps_per_orbit"), [(0.0, 100), (0.9, 2000)])
def test_leapfrog_is_second_order(eccentricity, steps_per_orbit):
    """Halving dt divides the return-to-start error by about 4, and the energy error too.

    On a circular orbit leapfrog's modified energy differs from E by a constant, so the energy
    error there is fourth order (ratio 16) while the phase error stays second order.
    """
    start = binary([eccentricity])
    energy_errors, position_errors = [], []
    for refinement in (1, 2, 4):
        steps = steps_per_orbit * refinement
        end, worst = integrate_fixed(start, TWO_PI / steps, steps)
        energy_errors.append(worst.item())
        position_errors.append((end.positions - start.positions).norm().item())
    energy_ratio = 4.0 if eccentricity > 0 else 16.0
    for errors, ratio in ((energy_errors, energy_ratio), (position_errors, 4.0)):
        assert 0.9 * ratio < errors[0] / errors[1] < 1.1 * ratio, errors
        assert 0.9 * ratio < errors[1] / errors[2] < 1.1 * ratio, errors


@pytest.mark.parametrize("eccentricity", [0.0, 0.9])
def test_orbit_returns_to_start_after_one_period(eccentricity):
    start = binary([eccentricity])
    steps = 20_000
    end, _ = integrate_fixed(start, TWO_PI / steps, steps)
    separation = (start.positions[0, 1] - start.positions[0, 0]).norm()
    # second-order phase error: C (dt / T)^2 with C of order 10-1000 for these orbits
    assert (end.positions - start.positions).norm() / separation < 1e-4
    assert (end.velocities - start.velocities).norm() / start.velocities.norm() < 1e-4
    assert end.time.item() == pytest.approx(TWO_PI, rel=1e-12)


def test_time_reversibility(cluster):
    forward, _ = integrate_fixed(cluster, 1e-3, 500)
    flipped = State(
        forward.positions, -forward.velocities, forward.masses, forward.accelerations, forward.time, forward.softening
    )
    back, _ = integrate_fixed(flipped, 1e-3, 500)
    assert torch.allclose(back.positions, cluster.positions, rtol=0, atol=1e-11)
    assert torch.allclose(-back.velocities, cluster.velocities, rtol=0, atol=1e-11)


def test_batched_equals_unbatched_bit_for_bit(cluster):
    steps = torch.tensor([1e-3, 2e-3, 5e-4, 3e-3], dtype=torch.float64)
    batched = cluster
    for _ in range(200):
        batched = leapfrog_step(batched, steps)
    for k in range(cluster.batch_size):
        alone = cluster.select(torch.tensor([k]))
        for _ in range(200):
            alone = leapfrog_step(alone, steps[k : k + 1])
        assert torch.equal(alone.positions, batched.positions[k : k + 1])
        assert torch.equal(alone.velocities, batched.velocities[k : k + 1])
        assert torch.equal(alone.energy(), batched.energy()[k : k + 1])


def test_batched_binaries_equal_unbatched_bit_for_bit():
    states = binary([0.0, 0.5, 0.9, 0.99])
    steps = torch.full((4,), 1e-3, dtype=torch.float64)
    batched = states
    for _ in range(300):
        batched = leapfrog_step(batched, steps)
    for k in range(4):
        alone = binary([[0.0, 0.5, 0.9, 0.99][k]])
        for _ in range(300):
            alone = leapfrog_step(alone, steps[:1])
        assert torch.equal(alone.positions, batched.positions[k : k + 1])


def test_momentum_conserved_to_round_off(cluster):
    start_momentum, start_angular = cluster.momentum(), cluster.angular_momentum()
    end, _ = integrate_fixed(cluster, 1e-3, 1000)
    scale = (cluster.masses.unsqueeze(-1) * cluster.velocities).abs().sum()
    assert (end.momentum() - start_momentum).abs().max() < 1e-13 * scale
    # leapfrog conserves angular momentum exactly for central forces (up to round-off)
    assert (end.angular_momentum() - start_angular).abs().max() < 1e-12 * scale


def test_energy_error_gradient_matches_finite_differences():
    state = binary([0.7], phase=1.0)
    dt = torch.tensor([0.05], dtype=torch.float64, requires_grad=True)
    _, error = step_energy_error(state, dt)
    (gradient,) = torch.autograd.grad(error.sum(), dt)
    h = 1e-6
    plus = step_energy_error(state, torch.tensor([0.05 + h], dtype=torch.float64))[1]
    minus = step_energy_error(state, torch.tensor([0.05 - h], dtype=torch.float64))[1]
    finite_difference = (plus - minus) / (2 * h)
    assert error.item() > 0
    assert gradient.item() == pytest.approx(finite_difference.item(), rel=1e-6)


def test_zero_step_leaves_state_unchanged():
    state = binary([0.5, 0.9])
    after = leapfrog_step(state, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(after.positions, state.positions)
    assert torch.equal(after.velocities, state.velocities)


def test_non_finite_systems_are_detected_per_system():
    # system 1 is aimed so that its drift puts both bodies exactly on one point (infinite force)
    positions = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    velocities = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [-1.5, 0.0]]], dtype=torch.float64)
    state = State.from_arrays(positions, velocities, torch.ones(2, 2, dtype=torch.float64))
    after, error = step_energy_error(state, torch.tensor([0.01, 0.5], dtype=torch.float64))
    assert after.finite_mask().tolist() == [True, False]
    assert math.isfinite(error[0].item())
    assert error[1].item() == math.inf


def test_relative_energy_error_is_safe():
    before = torch.tensor([-1.0, 0.0, -2.0], dtype=torch.float64)
    after = torch.tensor([-1.1, 1e-3, float("nan")], dtype=torch.float64)
    error = relative_energy_error(before, after)
    assert error[0].item() == pytest.approx(0.1)
    assert math.isfinite(error[1].item()) and error[1].item() > 1e100
    assert error[2].item() == math.inf


def test_energies_of_a_kepler_binary_match_the_analytic_values():
    elements = binary_elements([0.3, 0.8], phase=0.7, semi_major_axis=2.0, total_mass=3.0, mass_ratio=0.5)
    state = kepler_binary(elements)
    m1, m2 = 3.0 / 1.5, 1.5 / 1.5
    expected = -m1 * m2 / (2 * 2.0)  # E = -G m1 m2 / (2 a)
    assert torch.allclose(state.energy(), torch.full((2,), expected, dtype=torch.float64), rtol=1e-13)
    assert torch.allclose(state.momentum(), torch.zeros(2, 2, dtype=torch.float64), atol=1e-15)


def test_softening_bounds_the_force():
    positions = torch.tensor([[[0.0, 0.0], [1e-8, 0.0]]], dtype=torch.float64)
    masses = torch.ones(1, 2, dtype=torch.float64)
    softening = torch.tensor([0.1], dtype=torch.float64)
    soft = gravity.accelerations(positions, masses, softening)
    assert soft.abs().max() < 1e-8 / 0.1**3 * 1.0001
    assert torch.isfinite(gravity.potential_energy(positions, masses, softening)).all()


def test_each_system_has_its_own_softening():
    """A batch with softening lengths (0, 0.1, 0.5): each system's forces equal those of the
    system integrated alone with its own softening."""
    positions = torch.tensor([[[0.0, 0.0], [0.2, 0.0], [0.0, 0.3]]], dtype=torch.float64).repeat(3, 1, 1)
    velocities = torch.zeros_like(positions)
    masses = torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64).repeat(3, 1)
    softening = torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64)
    batch = State.from_arrays(positions, velocities, masses, softening)
    for k, eps in enumerate(softening.tolist()):
        alone = State.from_arrays(positions[k : k + 1], velocities[k : k + 1], masses[k : k + 1], eps)
        assert torch.equal(alone.accelerations, batch.accelerations[k : k + 1])
        assert torch.equal(alone.energy(), batch.energy()[k : k + 1])
    # more softening, weaker pull
    pull = batch.accelerations.norm(dim=-1)[:, 1]
    assert pull[0] > pull[1] > pull[2]


def test_coincident_bodies_are_refused_without_softening_only():
    positions = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64)
    masses = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="system 1: bodies 0 and 1 are at the same position"):
        State.from_arrays(positions, torch.zeros_like(positions), masses)
    softened = State.from_arrays(positions, torch.zeros_like(positions), masses, torch.tensor([0.0, 0.1]))
    assert torch.isfinite(softened.accelerations).all() and torch.isfinite(softened.energy()).all()
    with pytest.raises(ValueError, match="softening must be finite and >= 0"):
        State.from_arrays(positions, torch.zeros_like(positions), masses, torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="one value or one per system"):
        State.from_arrays(positions, torch.zeros_like(positions), masses, torch.tensor([0.1, 0.1, 0.1]))


def test_state_refuses_bad_arrays():
    good = torch.zeros(1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="system 0: the mass of body 1 must be > 0"):
        State.from_arrays(good + torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]), good, torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="velocities must have the shape"):
        State.from_arrays(good, torch.zeros(1, 3, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="finite"):
        State.from_arrays(good + float("nan"), good, torch.ones(1, 2))
