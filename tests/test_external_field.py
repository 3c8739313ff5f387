"""The tidal field of a point-mass host (aitimestepper.physics.external): its pull is minus the
gradient of its potential, the leapfrog conserves the energy with it (static host) or the Jacobi
integral (host on a circular orbit) to second order, the Hill problem keeps a moon well inside
the Jacobi radius and loses one well outside, and bad field settings are refused by name."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from aitimestepper.physics.external import TidalField
from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.physics.state import State
from aitimestepper.policies import PRS23, EnergyFeedback, FixedStep, FreeFall, Oracle
from aitimestepper.rollout import rollout

DTYPE = torch.float64


def binary_in_field(dim: int, orbit: str, host_distance: float = 8.0, host_mass: float = 5.0) -> State:
    """An eccentric unit binary (e = 0.5 at apocentre) with its host at ``host_distance`` on a
    diagonal: tides of a few percent of the binary's own pull, which change its orbit over a few
    periods."""
    separation, mass = 1.5, 1.0
    speed = math.sqrt(2 * mass * (1 / separation - 1 / (2 * 1.0)))  # vis-viva, a = 1
    positions = torch.zeros(2, dim, dtype=DTYPE)
    velocities = torch.zeros(2, dim, dtype=DTYPE)
    positions[0, 0], positions[1, 0] = -separation / 2, separation / 2
    velocities[0, 1], velocities[1, 1] = -speed / 2, speed / 2
    if dim == 3:
        velocities[:, 2] = torch.tensor([0.05, -0.05])  # out of the host's orbital plane
    host = torch.zeros(dim, dtype=DTYPE)
    host[0], host[1] = host_distance / math.sqrt(2), host_distance / math.sqrt(2)
    field = TidalField.build(torch.tensor([host_mass]), host, orbit=orbit, softening=0.1)
    return State.from_arrays(positions, velocities, torch.full((2,), mass / 2, dtype=DTYPE), external=field)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("orbit", ["static", "circular"])
def test_the_tidal_pull_is_minus_the_gradient_of_its_potential(dim, orbit):
    state = binary_in_field(dim, orbit)
    time = torch.tensor([3.7], dtype=DTYPE)  # the circular host has moved
    shift = torch.randn(state.positions.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(dim))
    positions = (state.positions + 0.3 * shift).requires_grad_(True)
    potential = state.external.potential_energy(positions, state.masses, time)
    (gradient,) = torch.autograd.grad(potential.sum(), positions)
    pull = state.external.accelerations(positions.detach(), time)
    torch.testing.assert_close(pull * state.masses.unsqueeze(-1), -gradient, rtol=1e-12, atol=1e-14)
    assert pull.abs().max() > 0.002  # a field strong enough to matter (tides of a few percent)
    at_origin = state.external.accelerations(torch.zeros(1, 1, dim, dtype=DTYPE), time)
    assert at_origin.abs().max() < 1e-15  # the origin falls freely with the host's pull


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("orbit", ["static", "circular"])
def test_the_leapfrog_conserves_the_fields_integral_to_second_order(dim, orbit):
    """Halving the step divides the largest drift of the conserved quantity over 3 binary periods
    by about 4, and the drift of the energy without the field's terms is far larger."""
    state = binary_in_field(dim, orbit)
    drifts = []
    for dt in (0.02, 0.01):
        result = rollout(
            state, FixedStep(dt), torch.tensor([6 * math.pi]), energy_threshold=0.5, max_steps=10_000, record=True
        )
        assert bool(result.reached_end.all())
        drifts.append(result.max_energy_error.item())
    assert 3.5 < drifts[0] / drifts[1] < 4.5, drifts
    assert drifts[1] < 1e-3
    stepped, bare_drift = state, 0.0
    for _ in range(300):  # half a period: the field does work on the binary
        stepped = leapfrog_step(stepped, torch.tensor([0.01], dtype=DTYPE))
        bare_drift = max(bare_drift, abs(bare_energy(stepped) / bare_energy(state) - 1.0))
    assert bare_drift > 10 * drifts[1]


def bare_energy(state: State) -> float:
    """The binary's energy without the field's terms."""
    field = state.external
    without = state.energy() - field.potential_energy(state.positions, state.masses, state.time)
    return (without - field.rotation_term(state.positions, state.velocities, state.masses)).item()


def hill_system(dim: int, radius_in_jacobi_radii: float) -> tuple[State, float, float]:
    """A planet of mass m at the origin, its host (M = 1) at distance 10 on a circular orbit, and
    a moon of negligible mass on a circular orbit around the planet at the given multiple of the
    Jacobi radius r_J = 10 (m / 3)**(1/3) = 0.1, prograde. Returns the state, r_J and the moon's
    orbital period around the planet alone."""
    planet, jacobi = 3e-6, 0.1
    radius = radius_in_jacobi_radii * jacobi
    speed = math.sqrt(planet / radius)
    positions = torch.zeros(2, dim, dtype=DTYPE)
    velocities = torch.zeros(2, dim, dtype=DTYPE)
    positions[1, 0], velocities[1, 1] = radius, speed
    host = torch.zeros(dim, dtype=DTYPE)
    host[0] = -10.0
    field = TidalField.build(torch.tensor([1.0]), host, orbit="circular")
    masses = torch.tensor([planet, 1e-15], dtype=DTYPE)
    period = 2 * math.pi * math.sqrt(radius**3 / planet)
    return State.from_arrays(positions, velocities, masses, external=field), jacobi, period


@pytest.mark.parametrize("dim", [2, 3])
def test_a_moon_at_a_third_of_the_jacobi_radius_stays_bound_for_ten_orbits(dim):
    state, jacobi, period = hill_system(dim, 1 / 3)
    result = rollout(
        state, FixedStep(period / 400), torch.tensor([10 * period]), energy_threshold=0.5, max_steps=5_000, record=True
    )
    assert bool(result.reached_end.all())
    separation = (result.trajectory.positions[:, 0, 1] - result.trajectory.positions[:, 0, 0]).norm(dim=-1)
    assert separation.max() < 0.5 * jacobi and separation.min() > 0.2 * jacobi  # perturbed, bound


@pytest.mark.parametrize("dim", [2, 3])
def test_a_moon_well_outside_the_jacobi_radius_escapes(dim):
    state, jacobi, _ = hill_system(dim, 3.0)
    host_period = 2 * math.pi * math.sqrt(1000.0)
    result = rollout(
        state, FreeFall(0.02), torch.tensor([host_period]), energy_threshold=0.5, max_steps=20_000, record=True
    )
    assert bool(result.reached_end.all())
    separation = (result.trajectory.positions[:, 0, 1] - result.trajectory.positions[:, 0, 0]).norm(dim=-1)
    assert separation[-1] > 10 * jacobi  # carried off by the shear of the host's field


@pytest.mark.parametrize("orbit", ["static", "circular"])
@pytest.mark.parametrize("dim", [2, 3])
def test_the_compiled_rollout_in_a_field_equals_the_torch_reference(orbit, dim):
    """Every classical policy and the oracle (the shadow oracle too), gated and not: the same
    steps and costs on both engines, positions and errors equal to round-off."""
    state = State.concatenate([binary_in_field(dim, orbit), binary_in_field(dim, orbit, host_distance=4.0)])
    end = torch.tensor([2.0, 3.0], dtype=DTYPE)
    for policy, gated in (
        (FixedStep(0.01), False),
        (FreeFall(0.05), True),
        (EnergyFeedback(1e-4), True),
        (PRS23(0.05), False),
        (Oracle(1e-4), False),
    ):
        options = {"energy_threshold": 1e-4, "max_steps": 5_000, "gated": gated, "shadow": Oracle(1e-4)}
        reference = rollout(state, policy, end, engine="torch", **options)
        compiled = rollout(state, policy, end, engine="compiled", **options)
        for field in ("steps", "force_evaluations", "steps_passed", "failed", "reached_end"):
            assert torch.equal(getattr(reference, field), getattr(compiled, field)), (policy.name, field)
        torch.testing.assert_close(compiled.final_state.positions, reference.final_state.positions, rtol=0, atol=1e-9)
        for field in ("max_energy_error", "max_step_error", "oracle_steps"):
            torch.testing.assert_close(getattr(compiled, field), getattr(reference, field), rtol=1e-6, atol=1e-12)
    assert bool(reference.max_step_error.max() > 1e-5)  # the oracle's steps reach for the gate


def test_a_model_trained_without_a_tidal_family_refuses_a_field_on_either_engine():
    """Its tidal-strength input was 0 on every training state: it refuses a field by name; a model
    whose mixture holds the tidal family steps the same system on both engines alike."""
    from aitimestepper.model import LearnedPolicy, build_network
    from training_params import tiny_params

    state = State.concatenate([binary_in_field(2, "static"), binary_in_field(2, "circular", host_distance=4.0)])
    without = tiny_params(**{"systems.tidal.weight": 0.0})
    assert not without.trained_in_field
    for engine in ("torch", "compiled"):
        with pytest.raises(ValueError, match="trained without systems in a tidal field"):
            rollout(
                state,
                LearnedPolicy(build_network(without), without),
                torch.tensor([1.0, 1.0]),
                energy_threshold=2e-4,
                max_steps=10,
                engine=engine,
            )
    params = tiny_params()
    assert params.trained_in_field
    policy = LearnedPolicy(build_network(params), params)
    options = {"energy_threshold": 2e-4, "max_steps": 2_000, "gated": False}
    end = torch.tensor([3.0, 3.0], dtype=DTYPE)
    reference = rollout(state, policy, end, engine="torch", **options)
    compiled = rollout(state, policy, end, engine="compiled", **options)
    assert bool(reference.reached_end.all())
    assert torch.equal(reference.steps, compiled.steps)
    torch.testing.assert_close(compiled.final_state.positions, reference.final_state.positions, rtol=0, atol=1e-7)
    torch.testing.assert_close(compiled.max_step_error, reference.max_step_error, rtol=1e-3, atol=1e-12)


def test_selections_and_joins_carry_the_field():
    """Systems in a field and systems without one share a batch: a host of mass 0 means none."""
    one = binary_in_field(2, "circular")
    two = State.concatenate([one, one.select(torch.tensor([0]))])
    assert two.external.host_mass.shape == (2,) and torch.equal(two.energy(), one.energy().repeat(2))
    bare = State.from_arrays(one.positions, one.velocities, one.masses)
    mixed = State.concatenate([one, bare])
    assert mixed.external.present.tolist() == [True, False]
    assert torch.equal(mixed.energy(), torch.cat([one.energy(), bare.energy()]))
    after = leapfrog_step(mixed, torch.tensor([0.01, 0.01], dtype=DTYPE))
    alone = leapfrog_step(bare, torch.tensor([0.01], dtype=DTYPE))
    assert torch.equal(after.positions[1:], alone.positions) and torch.equal(after.velocities[1:], alone.velocities)
    assert torch.equal(
        mixed.where(torch.tensor([False, True]), bare.repeat_interleave(2)).external.present,
        torch.tensor([False, False]),
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"host_mass": torch.tensor([0.0])}, "host_mass must be finite and > 0"),
        ({"host_mass": torch.tensor([float("nan")])}, "host_mass must be finite and > 0"),
        ({"host_position": torch.tensor([float("inf"), 0.0])}, "host_position must be finite"),
        ({"host_position": torch.tensor([1.0, 0.0, 0.0, 0.0])}, "host_position must have shape"),
        ({"host_position": torch.tensor([0.0, 0.0])}, "host_position must not be the origin"),
        ({"orbit": "elliptic"}, "orbit must be one of"),
        ({"softening": -0.1}, "softening must be finite and >= 0"),
    ],
)
def test_bad_field_settings_are_refused_by_name(settings, message):
    arguments = {"host_mass": torch.tensor([1.0]), "host_position": torch.tensor([10.0, 0.0]), **settings}
    with pytest.raises(ValueError, match=message):
        TidalField.build(**arguments)


def test_a_field_of_another_dimension_or_count_is_refused():
    positions = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=DTYPE)
    velocities = torch.tensor([[0.0, -0.5], [0.0, 0.5]], dtype=DTYPE)
    masses = torch.tensor([0.5, 0.5], dtype=DTYPE)
    in_3d = TidalField.build(torch.tensor([1.0]), torch.tensor([10.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="3 components, the systems 2"):
        State.from_arrays(positions, velocities, masses, external=in_3d)
    two_hosts = TidalField.build(torch.tensor([1.0, 2.0]), torch.tensor([[10.0, 0.0], [0.0, 10.0]]))
    with pytest.raises(ValueError, match="2 hosts for 1 systems"):
        State.from_arrays(positions, velocities, masses, external=two_hosts)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_a_field_round_trips_through_initial_condition_files(tmp_path, suffix):
    from aitimestepper.systems.files import load_systems, save_systems

    state = State.concatenate([binary_in_field(3, "circular")] * 2)
    loaded = load_systems(save_systems(tmp_path / f"ics{suffix}", state))
    for name in ("host_mass", "host_position", "softening", "rotation"):
        assert torch.equal(getattr(loaded.external, name), getattr(state.external, name)), name
    assert torch.equal(loaded.energy(), state.energy())


@pytest.mark.parametrize(
    ("external", "message"),
    [
        ({"host_mass": 1.0}, r"missing keys \['host_position'\]"),
        ({"host_mass": 1.0, "host_position": [10.0, 0.0], "mass": 2.0}, r"unknown keys \['mass'\]"),
        ({"host_mass": -1.0, "host_position": [10.0, 0.0]}, "host_mass must be finite and > 0"),
        ({"host_mass": 1.0, "host_position": [10.0, 0.0], "orbit": "elliptic"}, "orbit must be one of"),
        ({"host_mass": 1.0, "host_position": [10.0, 0.0, 0.0]}, "3 components, the systems 2"),
        ([1.0, 10.0], "external must be an object"),
    ],
)
def test_bad_fields_in_files_are_refused_naming_the_file_and_key(tmp_path, external, message):
    from aitimestepper.systems.files import load_systems

    path = tmp_path / "ics.json"
    path.write_text(json.dumps({**BINARY, "external": external}))
    with pytest.raises(ValueError, match=message) as caught:
        load_systems(path)
    assert str(path) in str(caught.value)


BINARY = {"masses": [0.5, 0.5], "positions": [[-0.75, 0.0], [0.75, 0.0]], "velocities": [[0.0, -0.29], [0.0, 0.29]]}


def test_aits_simulate_integrates_a_system_in_a_field_from_a_file(tmp_path, tiny_checkpoint):
    field = {"host_mass": 5.0, "host_position": [5.657, 5.657], "orbit": "circular", "softening": 0.1}
    path = tmp_path / "ics.json"
    path.write_text(json.dumps({**BINARY, "external": field}))
    output = tmp_path / "run" / "metrics.json"
    done = subprocess.run(
        [sys.executable, "-m", "aitimestepper", "simulate", "--model", "energy_feedback", "--gated"]
        + ["--ics", str(path), "--time-scales", "2", "--output", str(output), "--plots-dir", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(output.read_text())
    assert metrics["tidal_field"] == "circular"
    assert metrics["summary"]["gate_pass_rate"] == 1.0 and metrics["summary"]["all_reached_end"]
    assert metrics["summary"]["max_momentum_drift"] > 1e-3  # the host pulls on the binary
    learned = subprocess.run(
        [sys.executable, "-m", "aitimestepper", "simulate", "--model", str(tiny_checkpoint), "--ics", str(path)]
        + ["--time-scales", "1", "--output", str(tmp_path / "learned" / "metrics.json"), "--gated"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert learned.returncode == 0, learned.stderr
    metrics = json.loads((tmp_path / "learned" / "metrics.json").read_text())
    assert metrics["tidal_field"] == "circular" and metrics["summary"]["all_reached_end"]
    assert metrics["summary"]["max_step_energy_error"] <= 2e-4 * (1 + 1e-9)  # gated at the model's threshold


def test_the_field_keeps_its_digits_far_from_the_host():
    """A host of 10**6 at 10**3: the pull and potential subtract terms of size M / R that the tide is
    (|x| / R)**2 of. Against 50-digit arithmetic both keep 1e-12 relative (the plain form of the
    potential measured 4e-11)."""
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    host, mass, body = (1000.0, 0.0), 1e6, (0.3, 0.2)
    field = TidalField.build(torch.tensor([mass]), torch.tensor(host, dtype=DTYPE))
    positions = torch.tensor([[body]], dtype=DTYPE)
    R = [Decimal(v) for v in host]
    x = [Decimal(v) for v in body]
    M = Decimal(mass)
    toward = [r - p for r, p in zip(R, x, strict=True)]
    d = sum(t * t for t in toward).sqrt()
    r = sum(v * v for v in R).sqrt()
    along = sum(p * v for p, v in zip(x, R, strict=True))
    phi = -M * (1 / d - 1 / r - along / r**3)
    pull = [M * (t / d**3 - v / r**3) for t, v in zip(toward, R, strict=True)]
    potential = field.potential_energy(positions, torch.ones(1, 1, dtype=DTYPE), torch.zeros(1))
    assert abs(float((Decimal(potential.item()) - phi) / phi)) < 1e-12
    acceleration = field.accelerations(positions, torch.zeros(1))[0, 0]
    for component, exact in zip(acceleration.tolist(), pull, strict=True):
        assert abs(float((Decimal(component) - exact) / exact)) < 1e-12
