"""Analytic jerk and snap, and the PRS23 time scale: finite differences, Kepler orbits, invariances."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from aitimestepper.physics import gravity
from aitimestepper.physics.derivatives import jerk_and_snap, prs23_body_time_scales, prs23_time_scale
from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.physics.state import State

DTYPE = torch.float64
SOFTENINGS = (0.0, 0.0, 0.1, 0.3)  # per system: half unsoftened, half softened comparably to separations
STEP = 1e-3  # finite-difference spacing; the shortest time scale of random_systems is about 0.05


def random_systems(num_bodies: int, dim: int, seed: int, repeats: int = 2) -> State:
    """len(SOFTENINGS) * repeats systems: positions in [-1, 1]^D with pair separations >= 0.25,
    velocities ~ N(0, 0.5^2), masses in [0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(SOFTENINGS) * repeats
    positions = []
    while len(positions) < batch:
        candidate = 2.0 * torch.rand((num_bodies, dim), generator=generator, dtype=DTYPE) - 1.0
        distances = torch.cdist(candidate, candidate) + torch.eye(num_bodies, dtype=DTYPE)
        if distances.min() >= 0.25:
            positions.append(candidate)
    velocities = 0.5 * torch.randn((batch, num_bodies, dim), generator=generator, dtype=DTYPE)
    masses = 0.5 + torch.rand((batch, num_bodies), generator=generator, dtype=DTYPE)
    softening = torch.tensor(SOFTENINGS * repeats, dtype=DTYPE)
    return State.from_arrays(torch.stack(positions), velocities, masses, softening)


def analytic(state: State) -> tuple[Tensor, Tensor]:
    return jerk_and_snap(state.positions, state.velocities, state.accelerations, state.masses, state.softening)


def time_scale(state: State) -> Tensor:
    return prs23_time_scale(state.positions, state.velocities, state.accelerations, state.masses, state.softening)


def five_point_derivatives(samples: list[Tensor], h: float) -> tuple[Tensor, Tensor]:
    """First and second derivatives at t = 0 from samples at t = -2h, -h, 0, h, 2h (error O(h^4))."""
    m2, m1, zero, p1, p2 = samples
    first = (m2 - 8.0 * m1 + 8.0 * p1 - p2) / (12.0 * h)
    second = (-m2 + 16.0 * m1 - 30.0 * zero + 16.0 * p1 - p2) / (12.0 * h * h)
    return first, second


def per_body_relative_error(approximate: Tensor, exact: Tensor) -> Tensor:
    """max over systems and bodies of |approximate_i - exact_i| / |exact_i|."""
    return ((approximate - exact).norm(dim=-1) / exact.norm(dim=-1)).max()


def leapfrog_accelerations(state: State, dt: float, steps: int) -> tuple[Tensor, Tensor]:
    """Accelerations after ``steps`` and ``2 * steps`` leapfrog steps of size dt (dt may be negative)."""
    step = torch.full((state.batch_size,), dt, dtype=DTYPE)
    for _ in range(steps):
        state = leapfrog_step(state, step)
    halfway = state.accelerations
    for _ in range(steps):
        state = leapfrog_step(state, step)
    return halfway, state.accelerations


CASES = [(3, 2), (3, 3), (8, 2), (8, 3)]


@pytest.mark.parametrize(("num_bodies", "dim"), CASES)
def test_jerk_and_snap_match_finite_differences_along_a_leapfrog_trajectory(num_bodies, dim):
    """a(t) at t = 0, +-h, +-2h from leapfrog with dt = h / 100 (its O(dt^2) error is smooth in t
    and changes the derivatives by ~1e-8), differentiated with five-point stencils."""
    state = random_systems(num_bodies, dim, seed=10 * num_bodies + dim)
    substeps = 100
    plus_one, plus_two = leapfrog_accelerations(state, STEP / substeps, substeps)
    minus_one, minus_two = leapfrog_accelerations(state, -STEP / substeps, substeps)
    jerk_fd, snap_fd = five_point_derivatives([minus_two, minus_one, state.accelerations, plus_one, plus_two], STEP)
    jerk, snap = analytic(state)
    assert per_body_relative_error(jerk_fd, jerk) < 1e-5
    assert per_body_relative_error(snap_fd, snap) < 1e-5


@pytest.mark.parametrize(("num_bodies", "dim"), CASES)
def test_jerk_and_snap_match_finite_differences_along_the_taylor_path(num_bodies, dim):
    """Along x(t) = x + v t + a t^2 / 2 the first two derivatives of a(x(t)) at t = 0 are exactly
    the jerk and the snap (they depend only on x'(0) = v and x''(0) = a): no integrator error."""
    state = random_systems(num_bodies, dim, seed=100 + 10 * num_bodies + dim)
    samples = []
    for k in (-2, -1, 0, 1, 2):
        t = k * STEP
        path = state.positions + t * state.velocities + 0.5 * t * t * state.accelerations
        samples.append(gravity.accelerations(path, state.masses, state.softening))
    jerk_fd, snap_fd = five_point_derivatives(samples, STEP)
    jerk, snap = analytic(state)
    assert per_body_relative_error(jerk_fd, jerk) < 1e-6
    assert per_body_relative_error(snap_fd, snap) < 1e-6


def test_softening_changes_the_derivatives():
    """The softened formulas are not the unsoftened ones (so the softened checks above test something)."""
    state = random_systems(3, 3, seed=7)
    unsoftened = State.from_arrays(state.positions, state.velocities, state.masses, 0.0)
    softened_mask = state.softening > 0
    for with_eps, without in zip(analytic(state), analytic(unsoftened), strict=True):
        assert per_body_relative_error(without[softened_mask], with_eps[softened_mask]) > 1e-2


def two_body(
    relative_position: Tensor, relative_velocity: Tensor, masses: tuple[float, float], softening: float = 0.0
) -> State:
    """One binary (B = 1) about its centre of mass from the relative orbit x_2 - x_1."""
    m1, m2 = masses
    total = m1 + m2
    positions = torch.stack([-m2 / total * relative_position, m1 / total * relative_position])
    velocities = torch.stack([-m2 / total * relative_velocity, m1 / total * relative_velocity])
    return State.from_arrays(positions, velocities, torch.tensor([m1, m2], dtype=DTYPE), softening)


def rotation(dim: int, seed: int) -> Tensor:
    """A random proper rotation matrix (D, D)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn((dim, dim), generator=generator, dtype=DTYPE))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(
    ("masses", "separation", "softening"), [((0.5, 0.5), 1.0, 0.0), ((1.0, 0.01), 2.5, 0.0), ((0.3, 0.9), 0.7, 0.2)]
)
def test_circular_binary_time_scale_is_period_over_two_pi(dim, masses, separation, softening):
    """On a circular orbit a_i = -omega^2 x_i, so |j| = omega |a|, |s| = omega^2 |a| and tau = 1 / omega,
    with omega^2 = G M / (r^2 + eps^2)^1.5 (a softened circular orbit is circular too)."""
    omega = math.sqrt(sum(masses) / (separation**2 + softening**2) ** 1.5)
    turn = rotation(dim, seed=dim)
    x_axis, y_axis = turn[:, 0], turn[:, 1]
    state = two_body(separation * x_axis, omega * separation * y_axis, masses, softening)
    jerk, snap = analytic(state)
    acceleration = state.accelerations.norm(dim=-1)
    torch.testing.assert_close(jerk.norm(dim=-1), omega * acceleration, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(snap.norm(dim=-1), omega**2 * acceleration, rtol=1e-12, atol=0.0)
    period = 2.0 * math.pi / omega
    assert abs(time_scale(state).item() / (period / (2.0 * math.pi)) - 1.0) < 1e-10


@pytest.mark.parametrize("eccentricity", [0.1, 1.0 / 3.0, 0.6, 0.9, 0.99])
def test_eccentric_binary_pericentre_and_apocentre_time_scales(eccentricity):
    """Closed forms at the apsides (alpha = 0 there): with r the apsidal distance and v^2 the vis-viva speed,
    |a| = M / r^2, |j| = M v / r^3, |s| = M |3 v^2 - 2 M / r| / r^4, so tau^2 = q^3 / (M (1 + 2e)) at
    pericentre q and 2 Q^3 / (M ((1 - e) + |1 - 3e|)) at apocentre Q."""
    masses, semi_major_axis = (0.7, 0.3), 1.3
    total = sum(masses)
    pericentre, apocentre = semi_major_axis * (1.0 - eccentricity), semi_major_axis * (1.0 + eccentricity)
    speed_peri = math.sqrt(total * (1.0 + eccentricity) / pericentre)
    speed_apo = math.sqrt(total * (1.0 - eccentricity) / apocentre)
    at_peri = two_body(
        torch.tensor([pericentre, 0.0, 0.0], dtype=DTYPE), torch.tensor([0.0, speed_peri, 0.0], dtype=DTYPE), masses
    )
    at_apo = two_body(
        torch.tensor([-apocentre, 0.0, 0.0], dtype=DTYPE), torch.tensor([0.0, -speed_apo, 0.0], dtype=DTYPE), masses
    )
    tau_peri, tau_apo = time_scale(at_peri).item(), time_scale(at_apo).item()
    expected_peri = math.sqrt(pericentre**3 / (total * (1.0 + 2.0 * eccentricity)))
    expected_apo = math.sqrt(2.0 * apocentre**3 / (total * ((1.0 - eccentricity) + abs(1.0 - 3.0 * eccentricity))))
    assert abs(tau_peri / expected_peri - 1.0) < 1e-10
    assert abs(tau_apo / expected_apo - 1.0) < 1e-10
    # ratio ~ ((1 - e) / (1 + e))^1.5 for e -> 1: much shorter at pericentre
    assert tau_peri / tau_apo < ((1.0 - eccentricity) / (1.0 + eccentricity)) ** 1.5 * 1.5
    if eccentricity >= 0.6:
        assert tau_peri < 0.1 * tau_apo


@pytest.mark.parametrize(("num_bodies", "dim"), [(2, 2), (5, 3), (8, 2)])
def test_batched_equals_unbatched_bit_for_bit(num_bodies, dim):
    state = random_systems(num_bodies, dim, seed=3)
    jerk, snap = analytic(state)
    tau = time_scale(state)
    for b in range(state.batch_size):
        alone = state.select(torch.tensor([b]))
        jerk_alone, snap_alone = analytic(alone)
        assert torch.equal(jerk_alone[0], jerk[b])
        assert torch.equal(snap_alone[0], snap[b])
        assert torch.equal(time_scale(alone)[0], tau[b])


@pytest.mark.parametrize("dim", [2, 3])
def test_time_scale_is_invariant_under_relabelling_translation_boost_and_rotation(dim):
    state = random_systems(6, dim, seed=20 + dim)
    tau = time_scale(state)
    generator = torch.Generator().manual_seed(dim)
    order = torch.randperm(state.num_bodies, generator=generator)
    shift = 3.0 * torch.randn(dim, generator=generator, dtype=DTYPE)
    boost = torch.randn(dim, generator=generator, dtype=DTYPE)
    turn = rotation(dim, seed=50 + dim)
    x, v, m, eps = state.positions, state.velocities, state.masses, state.softening
    variants = {
        "relabelled": State.from_arrays(x[:, order], v[:, order], m[:, order], eps),
        "translated": State.from_arrays(x + shift, v, m, eps),
        "boosted": State.from_arrays(x, v + boost, m, eps),
        "rotated": State.from_arrays(x @ turn.T, v @ turn.T, m, eps),
    }
    for name, variant in variants.items():
        torch.testing.assert_close(time_scale(variant), tau, rtol=1e-12, atol=0.0, msg=name)


@pytest.mark.parametrize(("length", "mass"), [(3.7, 0.2), (1e-3, 50.0)])
def test_time_scale_scales_as_sqrt_length_cubed_over_mass(length, mass):
    state = random_systems(4, 3, seed=30)
    scaled = State.from_arrays(
        length * state.positions,
        math.sqrt(mass / length) * state.velocities,
        mass * state.masses,
        length * state.softening,
    )
    torch.testing.assert_close(
        time_scale(scaled), math.sqrt(length**3 / mass) * time_scale(state), rtol=1e-12, atol=0.0
    )


def symmetric_triple(centre_velocity: tuple[float, float]) -> State:
    """Equal masses on a line, the centre body exactly unaccelerated by symmetry."""
    positions = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=DTYPE)
    velocities = torch.tensor([[0.0, 0.4], list(centre_velocity), [0.0, -0.4]], dtype=DTYPE)
    return State.from_arrays(positions, velocities, torch.ones(3, dtype=DTYPE))


@pytest.mark.parametrize("centre_velocity", [(0.0, 0.0), (0.3, 0.1)])
def test_unaccelerated_body_sets_no_time_scale_and_nothing_is_nan(centre_velocity):
    """The centre body has a = 0 (and, at rest, j = s = 0): it gets +inf, never NaN or 0, and the
    system's time scale is the outer bodies' one; gradients are finite too."""
    state = symmetric_triple(centre_velocity)
    assert torch.equal(state.accelerations[0, 1], torch.zeros(2, dtype=DTYPE))
    jerk, snap = analytic(state)
    if centre_velocity == (0.0, 0.0):
        assert torch.equal(jerk[0, 1], torch.zeros(2, dtype=DTYPE))
        assert torch.equal(snap[0, 1], torch.zeros(2, dtype=DTYPE))
    per_body = prs23_body_time_scales(state.accelerations, jerk, snap)
    assert per_body[0, 1].item() == math.inf
    assert bool(per_body[0, [0, 2]].isfinite().all()) and bool((per_body[0, [0, 2]] > 0).all())
    assert torch.equal(time_scale(state), per_body[0, [0, 2]].amin().view(1))

    positions = state.positions.clone().requires_grad_(True)
    velocities = state.velocities.clone().requires_grad_(True)
    softening = torch.tensor([0.0], dtype=DTYPE, requires_grad=True)
    accelerations = gravity.accelerations(positions, state.masses, softening)
    tau = prs23_time_scale(positions, velocities, accelerations, state.masses, softening)
    tau.sum().backward()
    for gradient in (positions.grad, velocities.grad, softening.grad):
        assert gradient is not None and bool(gradient.isfinite().all())


def test_no_body_with_a_time_scale_gives_inf():
    zeros = torch.zeros((2, 3, 3), dtype=DTYPE)
    per_body = prs23_body_time_scales(zeros, zeros, zeros)
    assert bool((per_body == math.inf).all())
    assert torch.equal(per_body.amin(dim=-1), torch.full((2,), math.inf, dtype=DTYPE))
    # two bodies so far apart that every pair term underflows to zero
    far = State.from_arrays(
        torch.tensor([[0.0, 0.0], [1e200, 0.0]], dtype=DTYPE),
        torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=DTYPE),
        torch.ones(2, dtype=DTYPE),
    )
    assert time_scale(far).item() == math.inf


def test_nan_input_propagates():
    state = random_systems(3, 2, seed=1, repeats=1)
    velocities = state.velocities.clone()
    velocities[0, 0, 0] = math.nan
    tau = prs23_time_scale(state.positions, velocities, state.accelerations, state.masses, state.softening)
    assert math.isnan(tau[0].item())
    assert bool(tau[1:].isfinite().all())
