"""The policy's look at a system: candidate pairs, their features, the context, the history
window; invariance to relabelling, translation, boosts, rotations and rescaling for N up to 32."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.features import (
    CONTEXT_FEATURES,
    LOOK_FEATURES,
    PAIR_FEATURES,
    ROW_WIDTH,
    SLOT_FEATURES,
    context_dim,
    energy_normalised_steps,
    history_row,
    kepler_step,
    look,
    quartic_step,
    quintic_step,
    system_context,
)
from aitimestepper.history import History
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.systems.families import hierarchical_triples, plummer_clusters
from aitimestepper.systems.kepler import KeplerElements, kepler_binary
from systems import binary

CANDIDATES = 8


def clusters(bodies: int, dim: int, softening=(0.0, 0.05)) -> State:
    (group,) = plummer_clusters(
        6, torch.Generator().manual_seed(bodies * 10 + dim), dim=dim, bodies=(bodies,), softening=softening
    )
    return group.state


def rebuilt(state: State, positions, velocities, masses, softening=None) -> State:
    return State.from_arrays(positions, velocities, masses, state.softening if softening is None else softening)


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    matrix, _ = torch.linalg.qr(
        torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return matrix


def assert_same_look(first, second, log_time_unit: float = 0.0, atol: float = 1e-9) -> None:
    torch.testing.assert_close(first.log_step + log_time_unit, second.log_step, rtol=0, atol=atol)
    torch.testing.assert_close(first.pair_features, second.pair_features, rtol=0, atol=atol)
    torch.testing.assert_close(first.context, second.context, rtol=0, atol=atol)
    # the rows: min log step (moves with the time unit), crowding, dimensionless rate (of any size)
    torch.testing.assert_close(first.rows[:, 0] + log_time_unit, second.rows[:, 0], rtol=0, atol=atol)
    torch.testing.assert_close(first.rows[:, 1:], second.rows[:, 1:], rtol=atol, atol=atol)
    # what the Kepler step reads: log k, phi, log tau - min log step, log share; the rest rate
    torch.testing.assert_close(first.kepler, second.kepler, rtol=0, atol=atol)
    torch.testing.assert_close(first.kepler_rest, second.kepler_rest, rtol=atol, atol=atol)
    log_threshold = torch.full((first.log_step.shape[0],), math.log(2e-4), dtype=torch.float64)
    for one, other in zip(kepler_step(first, log_threshold), kepler_step(second, log_threshold), strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("bodies", [3, 8, 32])
def test_look_is_invariant_to_relabelling_translation_boost_and_rotation(bodies, dim):
    state = clusters(bodies, dim)
    seen = look(state, CANDIDATES)
    order = torch.randperm(bodies, generator=torch.Generator().manual_seed(1))
    relabelled = rebuilt(state, state.positions[:, order], state.velocities[:, order], state.masses[:, order])
    assert_same_look(seen, look(relabelled, CANDIDATES))
    shift = torch.linspace(-7.0, 11.0, dim, dtype=torch.float64)
    boost = torch.linspace(2.0, -1.0, dim, dtype=torch.float64)
    moved = rebuilt(state, state.positions + shift, state.velocities + boost, state.masses)
    assert_same_look(seen, look(moved, CANDIDATES))
    rotation = random_rotation(dim, bodies)
    rotated = rebuilt(state, state.positions @ rotation.T, state.velocities @ rotation.T, state.masses)
    assert_same_look(seen, look(rotated, CANDIDATES))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(("length", "mass"), [(10.0, 100.0), (0.01, 1.0), (1.0, 1e-3)])
def test_look_is_invariant_to_length_and_mass_scale(length, mass, dim):
    state = clusters(16, dim)
    speed = math.sqrt(mass / length)
    scaled = rebuilt(
        state, state.positions * length, state.velocities * speed, state.masses * mass, state.softening * length
    )
    # every feature is dimensionless; the steps move by the time unit sqrt(L^3 / M)
    assert_same_look(look(state, CANDIDATES), look(scaled, CANDIDATES), math.log(math.sqrt(length**3 / mass)))


@pytest.mark.parametrize(("bodies", "candidates"), [(2, 8), (3, 8), (5, 8), (32, 8), (8, 3)])
def test_candidates_are_the_pairs_with_the_smallest_energy_normalised_steps(bodies, candidates):
    state = clusters(bodies, 3) if bodies > 2 else binary([0.3, 0.9])
    seen = look(state, candidates)
    pairs = bodies * (bodies - 1) // 2
    kept = min(pairs, candidates)
    assert seen.log_step.shape == (state.batch_size, kept)
    assert seen.pair_features.shape == (state.batch_size, kept, PAIR_FEATURES)
    assert seen.context.shape == (state.batch_size, LOOK_FEATURES)
    every = energy_normalised_steps(state).log()
    expected, _ = every.sort(dim=1)
    torch.testing.assert_close(seen.log_step, expected[:, :kept], rtol=0, atol=1e-13)
    assert torch.all(seen.pair_features[:, :, 2] >= 0) and torch.all(seen.pair_features[:, 0, 2] == 0)
    # crowding: -(1/3) log sum exp(-3 (log step - min)), <= 0, = 0 for one pair
    crowding = -torch.logsumexp(-3.0 * (every - every.amin(1, keepdim=True)), dim=1) / 3.0
    torch.testing.assert_close(seen.context[:, 0], crowding, rtol=0, atol=1e-13)
    assert torch.all(seen.context[:, 0] <= 0)


def test_binary_features_by_hand():
    """An equal-mass e = 0.9 binary at pericenter and apocenter: k = v^2 r / GM is 1 + e and 1 - e,
    the pair holds 2a / r of |E|, it is unperturbed, and its step is tau (|E| r / (G m m))^(1/3)."""
    e = 0.9
    for phase, radius, kinetic in ((0.0, 1.0 - e, 1.0 + e), (math.pi, 1.0 + e, 1.0 - e)):
        state = binary([e], phase=phase)
        seen = look(state, CANDIDATES)
        features = seen.pair_features[0, 0]
        assert features[0].item() == pytest.approx(math.log(kinetic), abs=1e-9)
        assert abs(features[1].item()) < 1e-9  # at an apsis r . v = 0
        assert features[3].item() == pytest.approx(math.log(2.0 / radius), abs=1e-9)
        assert features[4].item() == 0.0 and features[5].item() == 0.0  # unsoftened, equal masses
        assert features[6].item() == pytest.approx(math.log(1e-8), abs=1e-3)  # nothing else pulls
        tau = math.sqrt(radius**3 / 1.0)
        energy = 0.5 * 0.5 / (2 * 1.0)  # |E| = G m1 m2 / (2 a)
        expected = tau * (energy * radius / 0.25) ** (1.0 / 3.0)
        assert seen.log_step[0, 0].item() == pytest.approx(math.log(expected), abs=1e-12)


def test_softening_and_mass_ratio_features():
    elements = KeplerElements(*(torch.tensor([v], dtype=torch.float64) for v in (0.0, 1.0, 1.0, 0.25, 0.0)))
    state = kepler_binary(elements, softening=0.5)
    features = look(state, CANDIDATES).pair_features[0, 0]
    assert features[4].item() == pytest.approx(0.25 / 1.25, rel=1e-12)  # eps^2 / (r^2 + eps^2)
    assert features[5].item() == pytest.approx(math.log(0.25), rel=1e-12)


def test_a_third_body_perturbs_the_inner_pair():
    (triples,) = hierarchical_triples(8, torch.Generator().manual_seed(5), dim=3, period_ratio=(10.0, 10.0))
    seen = look(triples.state, CANDIDATES)
    inner = seen.pair_features[:, 0, 6]  # the inner pair decides the step
    assert torch.all(inner > math.log(1e-6)) and torch.all(inner < math.log(1.0))


def test_history_window_keeps_steps_most_recent_first_and_pads_with_zeros(cluster):
    length = 3
    history = History.empty(cluster.batch_size, length, ROW_WIDTH)
    state, rows = cluster, []
    fresh = look(state, CANDIDATES)
    log_threshold = torch.full((cluster.batch_size,), math.log(2e-4), dtype=torch.float64)
    padded = system_context(fresh, history, log_threshold)
    assert padded.shape == (cluster.batch_size, context_dim(length))
    assert torch.all(padded[:, CONTEXT_FEATURES:] == 0)  # nothing seen yet: exact zeros, flags 0
    assert history.warming_up().all()
    for step in range(4):
        seen = look(state, CANDIDATES)
        dt = 0.1 * seen.min_step * 2e-4 ** (1.0 / 3.0)
        state, error = step_energy_error(state, dt)
        row = history_row(seen.rows, dt, error, 2e-4)
        rows.insert(0, row)
        history = history.push(row)
        assert history.warming_up().tolist() == [step + 1 < length] * cluster.batch_size
    for slot in range(length):
        assert torch.equal(history.rows[:, slot], rows[slot])
    # the row: min log step, crowding, log error / threshold, log correction (0.1 here), rate
    torch.testing.assert_close(rows[0][:, 3], torch.full((4,), math.log(0.1), dtype=torch.float64), atol=1e-12, rtol=0)
    context = system_context(look(state, CANDIDATES), history, log_threshold)
    flags = context[:, CONTEXT_FEATURES::SLOT_FEATURES]
    assert torch.all(flags == 1)
    partly = History(history.rows, torch.tensor([0, 1, 2, 3]))
    partial = system_context(look(state, CANDIDATES), partly, log_threshold)
    partial = partial.view(4, -1)[:, CONTEXT_FEATURES:].view(4, length, -1)
    for system, filled in enumerate([0, 1, 2, 3]):
        assert torch.all(partial[system, filled:] == 0)
        assert torch.all(partial[system, :filled, 0] == 1)


def test_history_row_floors_and_caps_the_error():
    rows = torch.zeros(3, 3, dtype=torch.float64)
    dt = torch.ones(3, dtype=torch.float64)
    error = torch.tensor([0.0, 2e-4, 1.0], dtype=torch.float64)
    row = history_row(rows, dt, error, 2e-4)
    torch.testing.assert_close(row[:, 2], torch.tensor([math.log(1e-4), 0.0, math.log(5000.0)], dtype=torch.float64))
    assert torch.isfinite(row).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_the_leading_order_energy_error_predicts_a_small_step_and_is_invariant(dim):
    """Kick-drift-kick changes the energy by dt^3 R / 12 to leading order: the step h_1 the look
    predicts for the threshold (threshold 1: (12 |E| / |R|)^(1/3)) makes, shrunk by 30, an error of
    30^-3 of that threshold within 5% (the next order is smaller by about dt / time scale), on
    clusters (softened or not) and binaries, where the bodies' terms of R do not cancel (where
    they do, higher orders take over: that is what the cancellation feature tells the network)."""
    checked = 0
    for state in [clusters(5, dim), binary([0.3, 0.7], phase=1.0)]:
        seen = look(state, CANDIDATES)
        log_h1 = seen.context[:, 2] + seen.rows[:, 0]
        threshold = 1e-4
        dt = log_h1.exp() * threshold ** (1.0 / 3.0) / 30.0
        _, error = step_energy_error(state, dt)
        clean = seen.context[:, 3] > math.log(0.3)
        expected = torch.full_like(error[clean], 30.0**-3)
        torch.testing.assert_close(error[clean] / threshold, expected, rtol=0.05, atol=0)
        checked += int(clean.sum())
    assert checked >= 5
    # an isolated binary's bodies do not cancel one another's terms: log(1 + 1e-8)
    assert torch.all(look(binary([0.5]), CANDIDATES).context[:, 3].abs() < 1e-6)


@pytest.mark.parametrize("dim", [2, 3])
def test_the_quartic_and_quintic_steps_reach_the_threshold_closer_than_the_leading_order_one(dim):
    """After two steps at half the leading-order step, the quartic step (R extrapolated over the next
    step from its change over the last) and the quintic step (with its curvature over the last two)
    make errors ever closer to the threshold, on every batch; in the median over all within 5% and
    10% of it (measured: 1.7-3.3% and 3.7-7.0%, against 16-19% for the leading order; per batch,
    medians of |log(error / threshold)| 0.15-0.22 leading, 0.04-0.14 quartic, 0.009-0.036 quintic
    on clusters; on binaries 0.07-0.57, 0.01-0.32, 0.004-0.15, the largest near
    apocentre, where R is small)."""
    threshold = 1e-4
    binaries = [binary([0.3, 0.5, 0.7, 0.9, 0.95], phase=phase) for phase in (0.3, 1.0, 2.5)]
    names = ("leading", "quartic", "quintic")
    misses: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for state in [clusters(5, dim), clusters(8, dim), *binaries]:
        history = History.empty(state.batch_size, 2, ROW_WIDTH)
        for _ in range(2):
            before = look(state, CANDIDATES)
            dt = 0.5 * (before.context[:, 2] + before.rows[:, 0]).exp() * threshold ** (1.0 / 3.0)
            state, error = step_energy_error(state, dt)
            history = history.push(history_row(before.rows, dt, error, threshold))
        seen = look(state, CANDIDATES)
        steps = (seen.context[:, 2], quartic_step(seen.rows, history), quintic_step(seen.rows, history))
        for name, log_step in zip(names, steps, strict=True):
            assert torch.all(log_step.abs() < 3.0)  # not clipped: the comparison is the roots'
            dt = (log_step + seen.rows[:, 0]).exp() * threshold ** (1.0 / 3.0)
            _, error = step_energy_error(state, dt)
            misses[name].append((error / threshold).log().abs())
        medians = [misses[name][-1].median().item() for name in names]
        assert medians[2] < medians[1] < medians[0], medians
    leading, quartic, quintic = (torch.cat(misses[name]).median().item() for name in names)
    assert quintic < 0.05 and quartic < 0.1 and quintic < 0.6 * quartic < 0.4 * leading, (leading, quartic, quintic)


def test_the_quartic_step_is_the_smallest_root_and_the_leading_order_one_without_a_past():
    """The bisection against a dense scan of x**3 |u + w x / 2| on a log grid, for rates and changes
    of either sign spanning twelve decades; with an empty window (w = 0) it is (1 / |u|)**(1/3)."""
    generator = torch.Generator().manual_seed(3)
    rate = (
        torch.randn(400, generator=generator, dtype=torch.float64) * torch.randn(400, generator=generator).mul(3).exp()
    )
    change = (
        torch.randn(400, generator=generator, dtype=torch.float64) * torch.randn(400, generator=generator).mul(3).exp()
    )
    rows = torch.stack([torch.zeros_like(rate), torch.zeros_like(rate), rate], dim=1)
    past = torch.stack([torch.zeros_like(rate)] * 4 + [rate], dim=1)  # no change of min step, correction 0
    # w = (u - u_p) for d = c = 0: a past rate u - w gives the change w
    past[:, 4] = rate - change
    history = History(past.unsqueeze(1), torch.ones(400, dtype=torch.int64))
    root = quartic_step(rows, history)
    grid = torch.linspace(-3.0, 3.0, 60_001, dtype=torch.float64)
    scale = grid.exp()
    values = scale**3 * (rate[:, None] + change[:, None] * scale / 2).abs()
    reached = values >= 1.0
    first = torch.where(reached.any(1), grid[reached.to(torch.int64).argmax(1)], torch.tensor(3.0, dtype=torch.float64))
    assert (root - first).abs().max().item() <= 2e-4  # the grid's spacing
    assert (root.abs() < 3.0).sum() > 100  # most roots are inside the clip
    empty = quartic_step(rows, History.empty(400, 2, ROW_WIDTH))
    torch.testing.assert_close(empty, (-rate.abs().log() / 3.0).clamp(-3.0, 3.0), rtol=0, atol=1e-10)


def test_the_quintic_steps_crossing_is_the_first_on_a_dense_scan():
    """x**3 |c0 + c1 x + c2 x**2| >= 1 first reached, against a scan 2000 times finer than the grid,
    for coefficients of either sign over eight decades; the clip's edges where the scan starts
    above 1 or never reaches it."""
    from aitimestepper.features import _first_crossing

    generator = torch.Generator().manual_seed(4)

    def spread() -> torch.Tensor:
        magnitude = torch.randn(600, generator=generator, dtype=torch.float64).mul(2).exp()
        return torch.randn(600, generator=generator, dtype=torch.float64) * magnitude

    edges = torch.tensor([1e6, 1e-9], dtype=torch.float64)  # above 1 at x = e^-3; below it up to e^3
    c0 = torch.cat([spread(), edges])
    c1, c2 = (torch.cat([spread(), torch.zeros(2, dtype=torch.float64)]) for _ in range(2))
    crossing = _first_crossing(c0, c1, c2)
    grid = torch.linspace(-3.0, 3.0, 120_001, dtype=torch.float64)
    scale = grid.exp()
    reached = scale**3 * (c0[:, None] + c1[:, None] * scale + c2[:, None] * scale**2).abs() >= 1.0
    first = torch.where(reached.any(1), grid[reached.to(torch.int64).argmax(1)], torch.tensor(3.0, dtype=torch.float64))
    assert (crossing - first).abs().max().item() <= 1e-4  # the scan's spacing
    assert (crossing.abs() < 3.0).sum() > 500 and crossing[-2] == -3.0 and crossing[-1] == 3.0


def tidal_systems_of(dim: int) -> list[State]:
    """Binaries and 4- and 8-body clusters in tidal fields, static and circular hosts."""
    from aitimestepper.systems.families import tidal_systems

    return [group.state for group in tidal_systems(12, torch.Generator().manual_seed(dim), dim=dim)]


@pytest.mark.parametrize("dim", [2, 3])
def test_the_tidal_strength_reads_the_field_and_is_invariant_to_units_and_rotations_about_z(dim):
    """0 without a field; in one log(1 + chi / 1e-4) with chi = M s**2 / |R|**3 (s the smallest
    step), growing with the field; unchanged by a change of units (the host with the system) and by
    turning system and host together about z (the host's orbital axis); |E| is the gated one."""
    from aitimestepper.features import TIDAL_COLUMN, TIDAL_SCALE
    from aitimestepper.physics.external import TidalField

    for state in tidal_systems_of(dim):
        seen = look(state, CANDIDATES)
        bare = State.from_arrays(state.positions, state.velocities, state.masses, state.softening)
        assert torch.equal(look(bare, CANDIDATES).context[:, TIDAL_COLUMN], torch.zeros(state.batch_size))
        field = state.external
        distance = field.host_position.norm(dim=1)
        chi = field.host_mass / distance**3 * (2.0 * seen.rows[:, 0]).exp()
        torch.testing.assert_close(seen.context[:, TIDAL_COLUMN], (chi / TIDAL_SCALE).log1p(), rtol=1e-12, atol=0)
        stronger = TidalField(field.host_mass * 8.0, field.host_position, field.softening, field.rotation)
        pulled = State.from_arrays(state.positions, state.velocities, state.masses, state.softening, external=stronger)
        assert (look(pulled, CANDIDATES).context[:, TIDAL_COLUMN] > seen.context[:, TIDAL_COLUMN]).all()
        # the pair shares read the gated |E| (with the field's potential and -Omega L_z)
        share = seen.pair_features[:, 0, 3]
        gated = state.energy().abs().log()
        assert not torch.allclose(gated, look(bare, CANDIDATES).pair_features[:, 0, 3] - share + gated, atol=1e-6)
        length, mass = 10.0, 100.0
        scaled_field = field.scaled(length, mass)
        scaled = State.from_arrays(
            state.positions * length,
            state.velocities * math.sqrt(mass / length),
            state.masses * mass,
            state.softening * length,
            external=scaled_field,
        )
        assert_same_look(seen, look(scaled, CANDIDATES), math.log(math.sqrt(length**3 / mass)))
        angle = 0.7
        turn = torch.eye(dim, dtype=torch.float64)
        turn[:2, :2] = torch.tensor(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
        )
        turned_field = TidalField(field.host_mass, field.host_position @ turn.T, field.softening, field.rotation)
        turned = State.from_arrays(
            state.positions @ turn.T, state.velocities @ turn.T, state.masses, state.softening, external=turned_field
        )
        assert_same_look(seen, look(turned, CANDIDATES))
