"""The families of initial conditions: physics of each family, seeding, grouping, scaling, files."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from aitimestepper.physics import gravity
from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.physics.state import State
from aitimestepper.systems import (
    FAMILIES,
    KeplerElements,
    SystemSet,
    binaries,
    binary_grid,
    crossing_time,
    democratic_triples,
    draw,
    group_by_size,
    hierarchical_triples,
    kepler_binary,
    load_systems,
    mardling_aarseth_limit,
    mean_anomaly_from_true,
    named_problems,
    orientation_matrix,
    osculating_elements,
    period,
    planetary_systems,
    plummer_clusters,
    relative_orbit,
    save_systems,
    solve_kepler,
    tidal_systems,
)
from aitimestepper.systems.families import _plummer_sphere
from invalid_systems import KINDS

DTYPE = torch.float64
DIMS = [2, 3]
# systems per family in the generic tests: enough to hit every body count of the grouped families
COUNTS = {"binary": 64, "hierarchical_triple": 64, "democratic_triple": 64, "planetary": 64, "plummer": 24, "tidal": 32}


def seeded(seed: int = 0) -> torch.Generator:
    """A torch generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def orbit(relative_position: torch.Tensor, relative_velocity: torch.Tensor, total_mass: torch.Tensor):
    """(a, e, period) of relative two-body motion from vis-viva and the Laplace-Runge-Lenz vector,
    written out here so that the tests do not rely on the code they test."""
    r = relative_position.norm(dim=-1)
    v2 = relative_velocity.square().sum(dim=-1)
    a = 1.0 / (2.0 / r - v2 / total_mass)
    rv = (relative_position * relative_velocity).sum(dim=-1, keepdim=True)
    e = ((v2 - total_mass / r).unsqueeze(-1) * relative_position - rv * relative_velocity).norm(dim=-1) / total_mass
    return a, e, 2 * math.pi * (a**3 / total_mass).sqrt()


def normal_of(relative_position: torch.Tensor, relative_velocity: torch.Tensor) -> torch.Tensor:
    """Unit orbit normals (B, 3) of 3-D relative motion."""
    normal = torch.linalg.cross(relative_position, relative_velocity, dim=-1)
    return normal / normal.norm(dim=-1, keepdim=True)


def column(system_set: SystemSet, key: str) -> torch.Tensor:
    return torch.tensor([label[key] for label in system_set.labels], dtype=DTYPE)


def integrate(state: State, dt: torch.Tensor, steps: int, every: int = 0, watch=None):
    """``steps`` leapfrog steps of (B,) sizes dt; calls ``watch(state)`` every ``every`` steps."""
    for step in range(steps):
        state = leapfrog_step(state, dt)
        if every and (step + 1) % every == 0:
            watch(state)
    return state


# ----------------------------------------------------------------------------------------------
# every family


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_centred_bound_normalised_and_grouped(family, dim):
    count = COUNTS[family]
    sets = draw(family, count, seeded(1), dim=dim, total_mass=2.5)
    assert sum(len(s) for s in sets) == count
    sizes = [s.num_bodies for s in sets]
    assert len(set(sizes)) == len(sizes) and sizes == sorted(sizes)  # one set per N, ascending
    for system_set in sets:
        state = system_set.state
        assert state.positions.shape == (len(system_set), system_set.num_bodies, dim)
        assert state.positions.dtype == DTYPE and system_set.time_scale.dtype == DTYPE
        weights = state.masses.unsqueeze(-1)
        centre = (weights * state.positions).sum(1).norm(dim=-1)
        assert (centre <= 1e-12 * (weights * state.positions.norm(dim=-1, keepdim=True)).sum((1, 2))).all()
        momentum = state.momentum().norm(dim=-1)
        assert (momentum <= 1e-12 * (weights * state.velocities.norm(dim=-1, keepdim=True)).sum((1, 2))).all()
        assert (state.energy() < 0).all()
        torch.testing.assert_close(state.masses.sum(-1), torch.full((len(system_set),), 2.5, dtype=DTYPE))
        assert (system_set.time_scale > 0).all() and system_set.time_scale.isfinite().all()
        assert system_set.family == family
        json.dumps(system_set.labels)  # JSON-ready
        for label in system_set.labels:
            assert label["family"] == family
            assert all(isinstance(value, str | int | float) for value in label.values())


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_seeded(family, dim):
    def drawn(seed):
        return draw(family, 12, seeded(seed), dim=dim)

    first, again, other = drawn(7), drawn(7), drawn(8)
    assert [s.num_bodies for s in first] == [s.num_bodies for s in again]
    for one, two in zip(first, again, strict=True):
        for name in ("positions", "velocities", "masses", "softening"):
            assert torch.equal(getattr(one.state, name), getattr(two.state, name))
        assert torch.equal(one.time_scale, two.time_scale) and one.labels == two.labels
    first_positions = torch.cat([s.state.positions.flatten() for s in first])
    other_positions = torch.cat([s.state.positions.flatten() for s in other])
    assert first_positions.shape != other_positions.shape or not torch.equal(first_positions, other_positions)


def test_draw_refuses_unknown_families_and_arguments():
    with pytest.raises(ValueError, match="unknown family 'cluster'; valid families: binary, hierarchical_triple"):
        draw("cluster", 4, seeded(), dim=2)
    with pytest.raises(ValueError, match=r"takes no argument \['eccentricity_range'\]"):
        draw("binary", 4, seeded(), dim=2, eccentricity_range=(0.1, 0.2))


@pytest.mark.parametrize(
    ("family", "arguments", "message"),
    [
        ("binary", {"eccentricity": (0.5, 0.2)}, r"eccentricity = \(0.5, 0.2\) is invalid: needs 0 <= low <= high < 1"),
        ("binary", {"eccentricity": (0.0, 1.0)}, r"eccentricity = \(0.0, 1.0\) is invalid: needs 0 <= low"),
        ("binary", {"mass_ratio": (0.0, 1.0)}, r"mass_ratio = \(0.0, 1.0\) is invalid: needs 0 < low"),
        ("binary", {"semi_major_axis": (1.0, math.inf)}, r"semi_major_axis = \(1.0, inf\) is invalid"),
        ("binary", {"start_phase": "periapsis"}, r"start_phase = 'periapsis' is invalid: needs one of"),
        ("binary", {"eccentricity": 0.5}, r"eccentricity = 0.5 is invalid: needs a \(low, high\) pair"),
        ("binary", {"total_mass": -1.0}, r"total_mass: -1.0 is invalid: needs a finite number > 0"),
        ("hierarchical_triple", {"period_ratio": (0.5, 100.0)}, r"period_ratio = \(0.5, 100.0\) is invalid: needs 1 <"),
        ("hierarchical_triple", {"mutual_inclination": (0.0, 200.0)}, r"mutual_inclination = \(0.0, 200.0\)"),
        ("hierarchical_triple", {"period_ratio": (2.0, 3.0), "outer_eccentricity": (0.8, 0.9)}, "admits no stable"),
        ("democratic_triple", {"softening": (0.0, 0.9)}, r"softening = \(0.0, 0.9\) is invalid: needs 0 <= low <="),
        ("democratic_triple", {"mass_spread": (0.0, 1.0)}, r"mass_spread = \(0.0, 1.0\) is invalid"),
        ("plummer", {"bodies": (1, 4)}, r"bodies = \(1, 4\) is invalid: needs a non-empty sequence"),
        ("plummer", {"bodies": (4, 4)}, "distinct"),
        ("planetary", {"planets": (0, 3)}, r"planets = \(0, 3\) is invalid: needs integers 1 <= low <= high"),
        ("planetary", {"hill_spacing": (2.0, 3.0)}, r"hill_spacing = \(2.0, 3.0\) is invalid: needs 2 sqrt\(3\) <"),
        ("planetary", {"planet_mass": (1e-6, 0.5)}, r"planet_mass = \(1e-06, 0.5\) is invalid"),
        ("planetary", {"planet_mass": (0.05, 0.1)}, "admits no neighbour of the heaviest planet"),
        ("planetary", {"planet_mass": (1e-6, 1e-6), "eccentricity": (0.2, 0.3), "planets": (3, 3)}, "low end"),
    ],
)
def test_bad_ranges_are_refused_naming_the_argument_value_and_rule(family, arguments, message):
    with pytest.raises(ValueError, match=message):
        draw(family, 8, seeded(), dim=3, **arguments)


@pytest.mark.parametrize(("count", "dim", "message"), [(0, 2, "count = 0"), (4, 4, "dim = 4"), (2.5, 2, "count")])
def test_bad_counts_and_dimensions_are_refused(count, dim, message):
    with pytest.raises(ValueError, match=message):
        binaries(count, seeded(), dim=dim)


# ----------------------------------------------------------------------------------------------
# Kepler orbits


def test_kepler_equation_is_solved_to_round_off():
    e = torch.tensor([0.0, 0.3, 0.9, 0.995, 0.9999], dtype=DTYPE).repeat_interleave(400)
    mean_anomaly = torch.linspace(-7.0, 13.0, 2000, dtype=DTYPE)
    anomaly = solve_kepler(mean_anomaly, e)
    residual = anomaly - e * torch.sin(anomaly) - torch.remainder(mean_anomaly, 2 * math.pi)
    assert residual.abs().max() < 1e-12


def test_mean_anomaly_from_true_inverts_the_orbit():
    e = torch.tensor([0.0, 0.5, 0.9, 0.99], dtype=DTYPE).repeat(25)
    true_anomaly = torch.linspace(-3.0, 3.0, 100, dtype=DTYPE)
    mean_anomaly = mean_anomaly_from_true(true_anomaly, e)
    assert (mean_anomaly >= 0).all() and (mean_anomaly < 2 * math.pi).all()
    anomaly = solve_kepler(mean_anomaly, e)
    recovered = 2 * torch.atan2((1 + e).sqrt() * torch.sin(anomaly / 2), (1 - e).sqrt() * torch.cos(anomaly / 2))
    difference = torch.remainder(recovered - true_anomaly + math.pi, 2 * math.pi) - math.pi
    assert difference.abs().max() < 1e-10


def test_relative_orbit_is_oriented_by_the_euler_rotation():
    g = seeded(3)
    count = 50
    inclination, node, pericenter = (math.pi * torch.rand(count, generator=g, dtype=DTYPE) for _ in range(3))
    e = 0.8 * torch.rand(count, generator=g, dtype=DTYPE)
    ones = torch.ones(count, dtype=DTYPE)
    elements = KeplerElements(
        e, 2 * ones, 3 * ones, ones, torch.zeros(count, dtype=DTYPE), inclination, node, pericenter
    )
    position, velocity = relative_orbit(elements, dim=3)
    expected_normal = torch.stack(
        [torch.sin(inclination) * torch.sin(node), -torch.sin(inclination) * torch.cos(node), torch.cos(inclination)],
        -1,
    )
    torch.testing.assert_close(normal_of(position, velocity), expected_normal, rtol=0, atol=1e-12)
    rotation = orientation_matrix(inclination, node, pericenter)
    torch.testing.assert_close(position, (2 * (1 - e)).unsqueeze(-1) * rotation[:, :, 0], rtol=0, atol=1e-12)
    a, eccentricity = osculating_elements(position, velocity, 3 * ones)
    torch.testing.assert_close(a, 2 * ones, rtol=1e-12, atol=0)
    torch.testing.assert_close(eccentricity, e, rtol=0, atol=1e-12)


def test_two_dimensional_orbits_are_coplanar_and_mirror_when_retrograde():
    ones = torch.ones(2, dtype=DTYPE)
    phase = torch.tensor([1.0, 1.0], dtype=DTYPE)
    prograde = KeplerElements(0.5 * ones, ones, ones, ones, phase, torch.zeros(2, dtype=DTYPE))
    retrograde = KeplerElements(0.5 * ones, ones, ones, ones, phase, torch.full((2,), math.pi, dtype=DTYPE))
    (p, v), (pr, vr) = relative_orbit(prograde, 2), relative_orbit(retrograde, 2)
    torch.testing.assert_close(pr, p * torch.tensor([1.0, -1.0], dtype=DTYPE), rtol=0, atol=1e-15)
    assert (p[:, 0] * v[:, 1] - p[:, 1] * v[:, 0] > 0).all() and (pr[:, 0] * vr[:, 1] - pr[:, 1] * vr[:, 0] < 0).all()
    tilted = KeplerElements(0.5 * ones, ones, ones, ones, phase, torch.full((2,), 0.3, dtype=DTYPE))
    with pytest.raises(ValueError, match="inclination 0 .* or pi"):
        relative_orbit(tilted, 2)


@pytest.mark.parametrize("dim", DIMS)
def test_kepler_binary_masses_centre_and_period(dim):
    ones = torch.ones(3, dtype=DTYPE)
    e = torch.tensor([0.0, 0.6, 0.99], dtype=DTYPE)
    elements = KeplerElements(e, 1.5 * ones, 3.0 * ones, 0.25 * ones, torch.zeros(3, dtype=DTYPE))
    state = kepler_binary(elements, dim=dim)
    torch.testing.assert_close(state.masses, torch.tensor([[2.4, 0.6]] * 3, dtype=DTYPE))
    assert (state.masses.unsqueeze(-1) * state.positions).sum(1).abs().max() < 1e-15
    assert state.momentum().abs().max() < 1e-15
    separation = (state.positions[:, 1] - state.positions[:, 0]).norm(dim=-1)
    torch.testing.assert_close(separation, 1.5 * (1 - e), rtol=1e-13, atol=0)  # pericenter on +x
    assert (state.positions[:, 1, 0] > 0).all()
    torch.testing.assert_close(elements.period, period(1.5, 3.0) * ones, rtol=1e-15, atol=0)
    assert period(1.5, 3.0).item() == pytest.approx(2 * math.pi * math.sqrt(1.5**3 / 3.0), rel=1e-15)


# ----------------------------------------------------------------------------------------------
# binaries


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("sampling", ["uniform", "log_one_minus_e"])
def test_binary_elements_are_recovered_from_the_state(dim, sampling):
    (system_set,) = binaries(
        200,
        seeded(2),
        dim=dim,
        eccentricity=(0.0, 0.99),
        eccentricity_sampling=sampling,
        semi_major_axis=(0.5, 2.0),
        mass_ratio=(0.1, 1.0),
        start_phase="random_true_anomaly",
        total_mass=3.0,
    )
    state = system_set.state
    a, e, orbital_period = orbit(
        state.positions[:, 1] - state.positions[:, 0],
        state.velocities[:, 1] - state.velocities[:, 0],
        state.masses.sum(-1),
    )
    torch.testing.assert_close(a, column(system_set, "a"), rtol=1e-10, atol=0)
    torch.testing.assert_close(e, column(system_set, "e"), rtol=0, atol=1e-10)
    torch.testing.assert_close(orbital_period, system_set.time_scale, rtol=1e-10, atol=0)
    torch.testing.assert_close(state.masses[:, 1] / state.masses[:, 0], column(system_set, "q"), rtol=1e-12, atol=0)
    assert e.max() < 0.99 and a.min() >= 0.5 and a.max() <= 2.0


def test_log_one_minus_e_sampling_covers_eccentric_orbits():
    (system_set,) = binaries(20_000, seeded(4), eccentricity=(0.5, 0.995), eccentricity_sampling="log_one_minus_e")
    e = column(system_set, "e")
    # log-uniform in 1 - e: the fraction above 0.95 is log(0.5 / 0.05) / log(0.5 / 0.005) = 1/2
    assert (e > 0.95).double().mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    ("start", "separation"), [("pericenter", lambda a, e: a * (1 - e)), ("apocenter", lambda a, e: a * (1 + e))]
)
def test_fixed_start_phases(start, separation):
    (system_set,) = binaries(50, seeded(5), dim=3, start_phase=start)
    distance = (system_set.state.positions[:, 1] - system_set.state.positions[:, 0]).norm(dim=-1)
    torch.testing.assert_close(
        distance, separation(column(system_set, "a"), column(system_set, "e")), rtol=1e-12, atol=0
    )


def test_three_dimensional_binaries_are_isotropic():
    (system_set,) = binaries(2000, seeded(6), dim=3)
    state = system_set.state
    normal = normal_of(state.positions[:, 1] - state.positions[:, 0], state.velocities[:, 1] - state.velocities[:, 0])
    # cos i uniform in [-1, 1]: mean 0 (standard error 0.013), mean square 1/3; same for x and y
    for axis in range(3):
        assert abs(normal[:, axis].mean().item()) < 0.05
        assert normal[:, axis].square().mean().item() == pytest.approx(1 / 3, abs=0.03)
    torch.testing.assert_close(torch.rad2deg(torch.acos(normal[:, 2])), column(system_set, "inclination_deg"))


def test_two_dimensional_binaries_are_randomly_oriented_both_ways():
    (system_set,) = binaries(2000, seeded(7), dim=2)
    state = system_set.state
    r, v = state.positions[:, 1] - state.positions[:, 0], state.velocities[:, 1] - state.velocities[:, 0]
    retrograde = (r[:, 0] * v[:, 1] - r[:, 1] * v[:, 0]) < 0
    assert retrograde.double().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.equal(retrograde, column(system_set, "inclination_deg") == 180.0)
    direction = r / r.norm(dim=-1, keepdim=True)
    assert direction.mean(0).norm().item() < 0.06


def test_binary_grid_has_every_combination_in_order():
    grid = binary_grid([0.5, 0.9, 0.99], ["pericenter", "apocenter"], [1.0, 0.5], dim=3)
    assert len(grid) == 12 and grid.state.positions.shape == (12, 2, 3)
    assert [(label["q"], label["start"], label["e"]) for label in grid.labels[:4]] == [
        (1.0, "pericenter", 0.5),
        (1.0, "pericenter", 0.9),
        (1.0, "pericenter", 0.99),
        (1.0, "apocenter", 0.5),
    ]
    e, a = column(grid, "e"), column(grid, "a")
    distance = (grid.state.positions[:, 1] - grid.state.positions[:, 0]).norm(dim=-1)
    apocenter = torch.tensor([label["start"] == "apocenter" for label in grid.labels])
    torch.testing.assert_close(distance, torch.where(apocenter, a * (1 + e), a * (1 - e)), rtol=1e-12, atol=0)
    torch.testing.assert_close(grid.time_scale, torch.full((12,), 2 * math.pi, dtype=DTYPE), rtol=1e-15, atol=0)
    assert grid.state.positions[..., 2].abs().max() == 0
    with pytest.raises(ValueError, match="starts: 'random' is invalid"):
        binary_grid([0.5], ["random"], [1.0])


# ----------------------------------------------------------------------------------------------
# hierarchical triples


def triple_orbits(system_set: SystemSet):
    """Inner and outer osculating orbits (a, e, period) and the mutual inclination (degrees)."""
    x, v, m = system_set.state.positions, system_set.state.velocities, system_set.state.masses
    inner_mass = m[:, :2].sum(-1)
    inner_centre = (m[:, :2, None] * x[:, :2]).sum(1) / inner_mass[:, None]
    inner_drift = (m[:, :2, None] * v[:, :2]).sum(1) / inner_mass[:, None]
    r_in, v_in = x[:, 1] - x[:, 0], v[:, 1] - v[:, 0]
    r_out, v_out = x[:, 2] - inner_centre, v[:, 2] - inner_drift
    inner, outer = orbit(r_in, v_in, inner_mass), orbit(r_out, v_out, m.sum(-1))
    if x.shape[-1] == 3:
        cosine = (normal_of(r_in, v_in) * normal_of(r_out, v_out)).sum(-1).clamp(-1, 1)
    else:
        cosine = torch.sign(
            (r_in[:, 0] * v_in[:, 1] - r_in[:, 1] * v_in[:, 0])
            * (r_out[:, 0] * v_out[:, 1] - r_out[:, 1] * v_out[:, 0])
        )
    return inner, outer, torch.rad2deg(torch.acos(cosine))


@pytest.mark.parametrize("dim", DIMS)
def test_hierarchical_triples_are_mardling_aarseth_stable_as_labelled(dim):
    (system_set,) = hierarchical_triples(300, seeded(8), dim=dim)
    (a_in, e_in, p_in), (a_out, e_out, p_out), inclination = triple_orbits(system_set)
    masses = system_set.state.masses
    q_out = masses[:, 2] / masses[:, :2].sum(-1)
    assert ((a_out / a_in) > mardling_aarseth_limit(q_out, e_out, inclination)).all()
    torch.testing.assert_close(p_out / p_in, column(system_set, "period_ratio"), rtol=0.01, atol=0)
    torch.testing.assert_close(p_in, system_set.time_scale, rtol=1e-10, atol=0)
    torch.testing.assert_close(e_in, column(system_set, "e_in"), rtol=0, atol=1e-9)
    torch.testing.assert_close(e_out, column(system_set, "e_out"), rtol=0, atol=1e-9)
    torch.testing.assert_close(inclination, column(system_set, "inclination_deg"), rtol=0, atol=1e-5)
    torch.testing.assert_close(q_out, column(system_set, "q_out"), rtol=1e-12, atol=0)
    torch.testing.assert_close(masses[:, 1] / masses[:, 0], column(system_set, "q_in"), rtol=1e-12, atol=0)
    ratio = column(system_set, "period_ratio")
    assert ratio.min() >= 10 and ratio.max() <= 1000 and (column(system_set, "stability_margin") > 1).all()
    if dim == 2:
        assert set(inclination.round().tolist()) == {0.0, 180.0}
    else:  # isotropic mutual inclinations (cos i uniform, mean near 0) and orientations in space
        assert abs(torch.cos(torch.deg2rad(inclination)).mean().item()) < 0.12
        x, v = system_set.state.positions, system_set.state.velocities
        inner_normal = normal_of(x[:, 1] - x[:, 0], v[:, 1] - v[:, 0])
        assert inner_normal.mean(0).abs().max() < 0.15
        third = torch.full((3,), 1 / 3, dtype=DTYPE)
        torch.testing.assert_close(inner_normal.square().mean(0), third, rtol=0, atol=0.08)


@pytest.mark.parametrize("dim", DIMS)
def test_close_hierarchical_triples_stay_hierarchical_for_three_outer_periods(dim):
    (system_set,) = hierarchical_triples(
        3, seeded(9), dim=dim, period_ratio=(10.0, 12.0), inner_eccentricity=(0.0, 0.5)
    )
    steps_per_inner_period = 400
    steps = int(3 * column(system_set, "period_ratio").max().item() * steps_per_inner_period)
    extremes = []

    def watch(state):
        (a_in, _, _), (a_out, e_out, _), _ = triple_orbits(
            SystemSet("t", state, system_set.time_scale, system_set.labels)
        )
        extremes.append((a_in.min(), a_in.max(), (a_out > 0).all() & (e_out < 1).all()))

    integrate(system_set.state, system_set.time_scale / steps_per_inner_period, steps, every=200, watch=watch)
    assert min(low for low, _, _ in extremes) > 0.9 and max(high for _, high, _ in extremes) < 1.1
    assert all(bound for _, _, bound in extremes)  # the third body stays bound to the inner binary


# ----------------------------------------------------------------------------------------------
# democratic triples and Plummer clusters


def virialized_sets(dim: int, total_mass: float = 1.0) -> list[SystemSet]:
    softening = (0.0, 0.08)
    return [
        *democratic_triples(40, seeded(10), dim=dim, softening=softening, total_mass=total_mass),
        *plummer_clusters(40, seeded(11), dim=dim, softening=softening, mass_spread=(0.5, 1.0), total_mass=total_mass),
    ]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("total_mass", [1.0, 2.0])
def test_virialized_families_are_in_henon_units_with_their_softening(dim, total_mass):
    sets = virialized_sets(dim, total_mass)
    assert {s.num_bodies for s in sets} == {3, 4, 8, 16, 32}
    for system_set in sets:
        state = system_set.state
        kinetic = gravity.kinetic_energy(state.velocities, state.masses)
        potential = gravity.potential_energy(state.positions, state.masses, state.softening)
        torch.testing.assert_close(2 * kinetic, -potential, rtol=1e-12, atol=0)
        expected_energy = torch.full_like(kinetic, -(total_mass**2) / 4)
        torch.testing.assert_close(state.energy(), expected_energy, rtol=1e-12, atol=0)
        virial_radius = state.masses.sum(-1) ** 2 / (-2 * potential)
        torch.testing.assert_close(virial_radius, torch.ones_like(kinetic), rtol=1e-12, atol=0)
        assert (state.softening >= 0).all() and (state.softening <= 0.08).all()
        assert state.softening.unique().numel() == len(system_set)  # drawn per system
        torch.testing.assert_close(state.softening, column(system_set, "softening"), rtol=0, atol=0)
        expected_time = total_mass**2.5 / (total_mass**2 / 2) ** 1.5 * torch.ones_like(kinetic)
        torch.testing.assert_close(system_set.time_scale, expected_time, rtol=1e-11, atol=0)
        torch.testing.assert_close(crossing_time(state), system_set.time_scale, rtol=0, atol=0)


def test_unsoftened_virialized_systems_are_allowed():
    (system_set,) = democratic_triples(16, seeded(12), dim=3, softening=(0.0, 0.0))
    assert (system_set.state.softening == 0).all()
    torch.testing.assert_close(system_set.state.energy(), torch.full((16,), -0.25, dtype=DTYPE), rtol=1e-12, atol=0)


def test_plummer_sampler_follows_the_plummer_model():
    positions, velocities = _plummer_sphere(seeded(13), 1, 4000)
    radius = positions.norm(dim=-1)
    truncation = 10.0**3 / 101.0**1.5
    for r in (0.5, 1.0, 2.0):  # cumulative mass fraction r**3 / (1 + r**2)**1.5, truncated at 10
        expected = r**3 / (1 + r**2) ** 1.5 / truncation
        assert (radius < r).double().mean().item() == pytest.approx(expected, abs=0.025)
    assert radius.max() <= 10.0
    escape = math.sqrt(2.0) * (1 + radius.square()) ** -0.25
    assert (velocities.norm(dim=-1) < escape).all()
    masses = torch.full((1, 4000), 1 / 4000, dtype=DTYPE)
    kinetic = gravity.kinetic_energy(velocities, masses)
    potential = gravity.potential_energy(positions, masses, torch.zeros(1, dtype=DTYPE))
    assert (2 * kinetic / -potential).item() == pytest.approx(1.0, abs=0.06)  # in equilibrium
    assert kinetic.item() == pytest.approx(3 * math.pi / 64, rel=0.06)  # K = 3 pi / 64 (G = M = a = 1)


# ----------------------------------------------------------------------------------------------
# planetary systems


def jacobi_orbits(system_set: SystemSet):
    """(a, e) (B, k) of every planet about the centre of mass of the star and the planets inside it,
    and the planets' inclinations (degrees; zeros in 2-D)."""
    x, v, m = system_set.state.positions, system_set.state.velocities, system_set.state.masses
    a, e, inclination = [], [], []
    for j in range(1, x.shape[1]):
        interior = m[:, :j].sum(-1, keepdim=True)
        centre = (m[:, :j, None] * x[:, :j]).sum(1) / interior
        drift = (m[:, :j, None] * v[:, :j]).sum(1) / interior
        r, u = x[:, j] - centre, v[:, j] - drift
        a_j, e_j, _ = orbit(r, u, interior[:, 0] + m[:, j])
        a.append(a_j)
        e.append(e_j)
        tilt = torch.rad2deg(torch.acos(normal_of(r, u)[:, 2])) if x.shape[-1] == 3 else torch.zeros_like(a_j)
        inclination.append(tilt)
    return torch.stack(a, -1), torch.stack(e, -1), torch.stack(inclination, -1)


@pytest.mark.parametrize("dim", DIMS)
def test_planetary_systems_are_hill_spaced_as_drawn(dim):
    sets = planetary_systems(200, seeded(14), dim=dim)
    assert [s.num_bodies for s in sets] == [2, 3, 4, 5, 6]
    for system_set in sets:
        k = system_set.num_bodies - 1
        masses = system_set.state.masses
        mu = masses[:, 1:] / masses[:, :1]
        a, e, inclination = jacobi_orbits(system_set)
        for j in range(k):
            torch.testing.assert_close(a[:, j], column(system_set, f"a_{j + 1}"), rtol=1e-10, atol=0)
            torch.testing.assert_close(e[:, j], column(system_set, f"e_{j + 1}"), rtol=0, atol=1e-10)
            torch.testing.assert_close(mu[:, j], column(system_set, f"mass_ratio_{j + 1}"), rtol=1e-12, atol=0)
            torch.testing.assert_close(
                inclination[:, j], column(system_set, f"inclination_deg_{j + 1}"), rtol=0, atol=1e-6
            )
        assert (mu >= 1e-6).all() and (mu <= 1e-2).all() and (e >= 0).all() and (e <= 0.3).all()
        assert (inclination <= 5.0 + 1e-6).all()
        torch.testing.assert_close(a[:, 0], torch.ones_like(a[:, 0]), rtol=1e-10, atol=0)
        torch.testing.assert_close(
            system_set.time_scale,
            orbit(
                system_set.state.positions[:, 1] - system_set.state.positions[:, 0],
                system_set.state.velocities[:, 1] - system_set.state.velocities[:, 0],
                masses[:, :2].sum(-1),
            )[2],
            rtol=1e-10,
            atol=0,
        )
        for j in range(k - 1):
            hill = ((mu[:, j] + mu[:, j + 1]) / 3) ** (1 / 3) * (a[:, j] + a[:, j + 1]) / 2
            spacing = column(system_set, f"hill_spacing_{j + 1}")
            assert (spacing >= 10).all() and (spacing <= 14).all()
            torch.testing.assert_close((a[:, j + 1] - a[:, j]) / hill, spacing, rtol=1e-8, atol=0)
            assert (a[:, j + 1] * (1 - e[:, j + 1]) > a[:, j] * (1 + e[:, j]) + 3 * hill).all()  # no crossing


@pytest.mark.parametrize(
    ("dim", "arguments"),
    [(3, {"planets": (5, 5)}), (2, {"planets": (3, 3), "planet_mass": (1e-3, 1e-2), "eccentricity": (0.1, 0.3)})],
)
def test_planetary_systems_are_stable_for_ten_inner_periods(dim, arguments):
    (system_set,) = planetary_systems(6, seeded(15), dim=dim, **arguments)
    a0, _, _ = jacobi_orbits(system_set)
    worst = []

    def watch(state):
        a, _, _ = jacobi_orbits(SystemSet("p", state, system_set.time_scale, system_set.labels))
        worst.append(((a - a0) / a0).abs().max().item())

    steps_per_period = 2000
    integrate(system_set.state, system_set.time_scale / steps_per_period, 10 * steps_per_period, every=500, watch=watch)
    assert len(worst) == 40 and max(worst) < 0.05


# ----------------------------------------------------------------------------------------------
# named problems


def test_figure_eight_returns_to_its_start_after_one_period():
    figure_eight, _ = named_problems(dim=2)
    assert figure_eight.family == "figure_eight" and figure_eight.labels == [
        {"family": "figure_eight", "name": "figure_eight"}
    ]
    steps = 20_000
    final = integrate(figure_eight.state, figure_eight.time_scale / steps, steps)
    # measured 1.9e-7 at this step (the period and the initial values are given to 8 digits)
    assert (final.positions - figure_eight.state.positions).abs().max() < 1e-5
    assert (final.velocities - figure_eight.state.velocities).abs().max() < 1e-5


@pytest.mark.parametrize("dim", DIMS)
def test_named_problems_are_centred_at_rest_and_embedded(dim):
    figure_eight, pythagorean = named_problems(dim)
    for system_set in (figure_eight, pythagorean):
        state = system_set.state
        assert state.positions.shape == (1, 3, dim)
        assert (state.masses.unsqueeze(-1) * state.positions).sum(1).abs().max() < 1e-15
        assert state.momentum().abs().max() < 1e-15 and (state.softening == 0).all()
        if dim == 3:
            assert state.positions[..., 2].abs().max() == 0 and state.velocities[..., 2].abs().max() == 0
    torch.testing.assert_close(figure_eight.time_scale, torch.tensor([6.32591398], dtype=DTYPE))
    assert torch.equal(pythagorean.state.masses, torch.tensor([[3.0, 4.0, 5.0]], dtype=DTYPE))
    assert pythagorean.state.velocities.abs().max() == 0
    potential = -(3 * 4 / 5 + 3 * 5 / 4 + 4 * 5 / 3)  # the sides opposite the masses 5, 4 and 3
    expected = 12**2.5 / (2 * abs(potential)) ** 1.5
    assert pythagorean.time_scale.item() == pytest.approx(expected, rel=1e-14)


# ----------------------------------------------------------------------------------------------
# SystemSet


def test_scaled_copies_follow_the_same_dynamics_in_dimensionless_units():
    length, mass = 3.7, 0.2
    time = math.sqrt(length**3 / mass)
    for original in (
        binaries(4, seeded(16), dim=2, eccentricity=(0.5, 0.9))[0],
        democratic_triples(4, seeded(17), dim=3, softening=(0.01, 0.05))[0],
        tidal_systems(6, seeded(21), dim=3, bodies=(4,), orbits=("circular",))[0],
    ):
        scaled = original.scaled(length, mass)
        torch.testing.assert_close(scaled.time_scale, original.time_scale * time, rtol=1e-15, atol=0)
        torch.testing.assert_close(scaled.state.softening, original.state.softening * length, rtol=1e-15, atol=0)
        torch.testing.assert_close(
            scaled.state.energy(), original.state.energy() * mass**2 / length, rtol=1e-13, atol=0
        )
        assert scaled.labels[0]["length_unit"] == length and scaled.labels[0]["mass_unit"] == mass
        steps = 400
        one = integrate(original.state, original.time_scale / 500, steps)
        two = integrate(scaled.state, scaled.time_scale / 500, steps)
        for name, unit in (("positions", length), ("velocities", math.sqrt(mass / length))):
            expected, got = getattr(one, name), getattr(two, name) / unit
            assert ((got - expected).norm(dim=-1) <= 1e-10 * expected.norm(dim=-1).amax(-1, keepdim=True)).all()
        torch.testing.assert_close(two.time / time, one.time, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="length = 0.0 is invalid"):
        original.scaled(0.0, 1.0)


@pytest.mark.parametrize("dim", DIMS)
def test_tidal_systems_sit_at_their_drawn_fraction_of_the_jacobi_radius(dim):
    """r / r_J = jacobi_fraction with r_J = R (m / (3 M))**(1/3), r the binary's apocentre
    separation or the cluster's virial radius; M / m the drawn ratio; the host in the x-y plane,
    static or turning at sqrt(M / R**3); both orbits drawn; the energy gated is the Jacobi one."""
    sets = tidal_systems(40, seeded(22), dim=dim, jacobi_fraction=(0.2, 0.6), host_mass_ratio=(1e3, 1e5))
    assert [s.num_bodies for s in sets] == [2, 4, 8]
    orbits = set()
    for system_set in sets:
        state, field = system_set.state, system_set.state.external
        mass = state.masses.sum(dim=-1)
        distance = field.host_position.norm(dim=-1)
        if dim == 3:
            assert torch.equal(field.host_position[:, 2], torch.zeros(len(system_set), dtype=torch.float64))
        jacobi = distance * (mass / (3.0 * field.host_mass)) ** (1.0 / 3.0)
        for k, label in enumerate(system_set.labels):
            size = label["a"] * (1 + label["e"]) if label["system"] == "binary" else 1.0
            assert size / jacobi[k].item() == pytest.approx(label["jacobi_fraction"], rel=1e-12)
            assert 0.2 <= label["jacobi_fraction"] <= 0.6 and 1e3 <= label["host_mass_ratio"] <= 1e5
            assert field.host_mass[k].item() == pytest.approx(label["host_mass_ratio"] * mass[k].item(), rel=1e-12)
            spin = math.sqrt(field.host_mass[k].item() / distance[k].item() ** 3)
            assert field.rotation[k].item() == (pytest.approx(spin, rel=1e-12) if label["orbit"] == "circular" else 0)
            orbits.add(label["orbit"])
        bare = gravity.total_energy(state.positions, state.velocities, state.masses, state.softening)
        circular = field.rotation > 0
        assert not torch.allclose(state.energy()[circular], bare[circular])  # -Omega L_z and the tide
    assert orbits == {"static", "circular"}
    with pytest.raises(ValueError, match="orbits"):
        tidal_systems(4, seeded(0), dim=dim, orbits=("elliptic",))
    with pytest.raises(ValueError, match="jacobi_fraction"):
        tidal_systems(4, seeded(0), dim=dim, jacobi_fraction=(0.5, 0.1))


def test_system_sets_concatenate_select_and_group():
    triples = draw("hierarchical_triple", 5, seeded(18), dim=2)
    democratic = draw("democratic_triple", 3, seeded(19), dim=2)
    planets = draw("planetary", 20, seeded(20), dim=2, planets=(1, 2))
    merged = group_by_size([*triples, *democratic, *planets])
    assert [(s.num_bodies, len(s)) for s in merged] == [(3, 8 + len(planets[1])), (2, len(planets[0]))]
    assert merged[0].family == "hierarchical_triple+democratic_triple+planetary"
    assert [label["family"] for label in merged[0].labels[4:6]] == ["hierarchical_triple", "democratic_triple"]
    both = SystemSet.concatenate([*triples, *democratic])
    torch.testing.assert_close(both.time_scale[5:], democratic[0].time_scale, rtol=0, atol=0)
    picked = both.select(torch.tensor([True, False, False, False, False, True, False, False]))
    assert len(picked) == 2 and picked.labels == [both.labels[0], both.labels[5]]
    assert torch.equal(picked.state.positions, both.state.positions[[0, 5]])
    assert len(both.select(3)) == 1 and both.select(slice(2, 5)).labels == both.labels[2:5]
    with pytest.raises(ValueError, match=r"equal \(N, D\)"):
        SystemSet.concatenate([triples[0], planets[0]])
    with pytest.raises(ValueError, match="time_scale must have shape"):
        SystemSet("x", triples[0].state, triples[0].time_scale[:2], triples[0].labels)


# ----------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_systems_round_trip_through_files(tmp_path, suffix):
    state = planetary_systems(8, seeded(21), dim=3, planets=(2, 2))[0].state
    path = save_systems(tmp_path / f"systems{suffix}", state)
    loaded = load_systems(path)
    for name in ("positions", "velocities", "masses", "softening", "accelerations"):
        assert torch.equal(getattr(loaded, name), getattr(state, name)), name
    softened = democratic_triples(5, seeded(22), dim=2, softening=(0.01, 0.05))[0].state
    loaded = load_systems(save_systems(tmp_path / f"softened{suffix}", softened))
    assert torch.equal(loaded.softening, softened.softening) and torch.equal(loaded.positions, softened.positions)
    assert torch.equal(load_systems(path, softening=0.25).softening, torch.full((8,), 0.25, dtype=DTYPE))


def test_single_systems_and_softening_lists_load(tmp_path):
    system = {"masses": [1.0, 0.5], "positions": [[-0.5, 0.0], [1.0, 0.0]], "velocities": [[0.0, -0.3], [0.0, 0.6]]}
    (tmp_path / "one.json").write_text(json.dumps({**system, "softening": 0.01}))
    one = load_systems(tmp_path / "one.json")
    assert one.positions.shape == (1, 2, 2) and one.softening.tolist() == [0.01]
    stacked = {key: np.stack([np.array(value)] * 3) for key, value in system.items()}
    np.savez(tmp_path / "many.npz", **stacked, softening=np.array([0.0, 0.1, 0.2]))
    many = load_systems(tmp_path / "many.npz")
    assert many.batch_size == 3 and many.softening.tolist() == [0.0, 0.1, 0.2]
    assert torch.equal(many.positions[1], one.positions[0])
    (tmp_path / "list.json").write_text(
        json.dumps({**{k: v.tolist() for k, v in stacked.items()}, "softening": [0.1, 0.2, 0.3]})
    )
    assert load_systems(tmp_path / "list.json").softening.tolist() == [0.1, 0.2, 0.3]


GOOD = {"masses": [1, 1], "positions": [[0, 0], [1, 0]], "velocities": [[0, 0], [0, 1]]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"masses": [1, 1], "positions": [[0, 0], [1, 0]]}', r"lacks \['velocities'\]"),
        (json.dumps({**GOOD, "softenning": 0.1}), r"unknown keys \['softenning'\]"),
        (json.dumps({**GOOD, "positions": [[0, 0], [1, "a"]]}), "positions must be a rectangular array of numbers"),
        (json.dumps({**GOOD, "softening": [0.1, 0.2]}), r"softening must be one value or one per system \(1\)"),
        ("[1, 2]", "must hold a JSON object"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_json_files_are_refused_naming_the_file_and_rule(tmp_path, content, message):
    path = tmp_path / "ics.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path))) as refused:
        load_systems(path)
    assert re.search(message, str(refused.value)), str(refused.value)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kind_of_invalid_system_is_refused_naming_the_file_system_and_rule(tmp_path, kind):
    path = tmp_path / "ics.json"
    path.write_text(json.dumps(kind.system))
    with pytest.raises(ValueError) as refused:
        load_systems(path)
    message = str(refused.value)
    assert str(path) in message and kind.loader in message, message
    if "body" in kind.loader or "energy" in kind.loader:
        assert "system 0" in message or "system(s) [0]" in message, message


def test_coincident_bodies_load_with_softening(tmp_path):
    path = tmp_path / "ics.json"
    path.write_text(json.dumps({**GOOD, "positions": [[0, 0], [0, 0]], "softening": 0.1}))
    assert load_systems(path).accelerations.abs().max() == 0


def test_bad_paths_and_archives_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_systems(tmp_path / "missing.json")
    (tmp_path / "ics.yaml").write_text("masses: [1]")
    with pytest.raises(ValueError, match=r"ics.yaml must end in .json or .npz"):
        load_systems(tmp_path / "ics.yaml")
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="broken.npz is not a readable NPZ archive"):
        load_systems(tmp_path / "broken.npz")
    np.savez(
        tmp_path / "text.npz", masses=np.array(["a", "b"]), positions=np.zeros((2, 2)), velocities=np.zeros((2, 2))
    )
    with pytest.raises(ValueError, match="text.npz: masses must hold numbers"):
        load_systems(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="must end in .json or .npz"):
        save_systems(tmp_path / "out.csv", binaries(1, seeded())[0].state)
