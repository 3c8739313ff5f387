"""Initial conditions: Kepler binaries, samplers, virial clusters and files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aitimestepper.physics import gravity
from aitimestepper.physics.initial_conditions import (
    kepler_binary,
    load_systems,
    sample_kepler_elements,
    solve_kepler,
    virial_cluster,
)
from systems import binary_elements

SAMPLER = dict(
    semi_major_axis_range=(0.8, 1.2),
    mass_ratio_range=(0.1, 1.0),
    total_mass=2.0,
    start_phase="random",
)


def test_kepler_equation_is_solved_to_round_off():
    e = torch.tensor([0.0, 0.5, 0.9, 0.995, 0.999], dtype=torch.float64).repeat_interleave(50)
    mean_anomaly = torch.linspace(-3.0, 9.0, 250, dtype=torch.float64)
    anomaly = solve_kepler(mean_anomaly, e)
    residual = anomaly - e * torch.sin(anomaly) - torch.remainder(mean_anomaly, 2 * math.pi)
    assert residual.abs().max() < 1e-12


@pytest.mark.parametrize("dim", [2, 3])
def test_binary_has_the_requested_orbit(dim):
    elements = binary_elements([0.0, 0.6, 0.99], phase=0.0, semi_major_axis=1.5, total_mass=3.0, mass_ratio=0.1)
    state = kepler_binary(elements, dim=dim)
    assert state.positions.shape == (3, 2, dim)
    separation = (state.positions[:, 1] - state.positions[:, 0]).norm(dim=-1)
    assert torch.allclose(separation, 1.5 * (1 - elements.eccentricity), rtol=1e-12)  # pericenter
    assert torch.allclose(state.masses[:, 1] / state.masses[:, 0], torch.full((3,), 0.1, dtype=torch.float64))
    com = (state.masses.unsqueeze(-1) * state.positions).sum(1)
    assert com.abs().max() < 1e-15 and state.momentum().abs().max() < 1e-15
    # vis-viva: v^2 = G M (2 / r - 1 / a)
    speed = (state.velocities[:, 1] - state.velocities[:, 0]).norm(dim=-1)
    assert torch.allclose(speed**2, 3.0 * (2 / separation - 1 / 1.5), rtol=1e-12)
    assert torch.allclose(elements.period, 2 * math.pi * torch.full((3,), math.sqrt(1.5**3 / 3.0), dtype=torch.float64))


def test_apocenter_start_is_at_the_largest_separation():
    state = kepler_binary(binary_elements([0.9], phase=math.pi))
    separation = (state.positions[0, 1] - state.positions[0, 0]).norm()
    assert separation.item() == pytest.approx(1.9, rel=1e-13)


@pytest.mark.parametrize("sampling", ["uniform", "log_one_minus_e"])
def test_eccentricity_sampling_laws(sampling):
    elements = sample_kepler_elements(
        20_000,
        torch.Generator().manual_seed(0),
        eccentricity_range=(0.5, 0.995),
        eccentricity_sampling=sampling,
        **SAMPLER,
    )
    e = elements.eccentricity
    assert e.min() >= 0.5 and e.max() <= 0.995
    above = (e > 0.95).double().mean().item()
    if sampling == "uniform":
        assert above == pytest.approx(0.045 / 0.495, abs=0.01)
    else:  # log-uniform in 1 - e: fraction log(0.5/0.05) / log(0.5/0.005) = 0.5
        assert above == pytest.approx(0.5, abs=0.02)
    assert elements.semi_major_axis.min() >= 0.8 and elements.semi_major_axis.max() <= 1.2


def test_sampling_is_seeded():
    draw = lambda seed: sample_kepler_elements(  # noqa: E731
        8,
        torch.Generator().manual_seed(seed),
        eccentricity_range=(0.5, 0.99),
        eccentricity_sampling="uniform",
        **SAMPLER,
    )
    assert torch.equal(draw(3).eccentricity, draw(3).eccentricity)
    assert not torch.equal(draw(3).mean_anomaly, draw(4).mean_anomaly)


@pytest.mark.parametrize("dim", [2, 3])
def test_cluster_is_virialized_and_at_rest(dim, generator):
    state = virial_cluster(16, 5, generator, dim=dim, total_mass=3.0, mass_ratio_range=(0.5, 1.0), softening=0.01)
    kinetic = gravity.kinetic_energy(state.velocities, state.masses)
    potential = gravity.potential_energy(state.positions, state.masses, 0.01)
    assert torch.allclose(2 * kinetic, -potential, rtol=1e-12)
    assert torch.allclose(state.masses.sum(1), torch.full((16,), 3.0, dtype=torch.float64))
    assert state.momentum().abs().max() < 1e-13
    assert state.softening == 0.01


def test_systems_load_from_json_and_npz(tmp_path):
    system = {"masses": [1.0, 0.5], "positions": [[-0.5, 0.0], [1.0, 0.0]], "velocities": [[0.0, -0.3], [0.0, 0.6]]}
    (tmp_path / "one.json").write_text(json.dumps({**system, "softening": 0.01}))
    state = load_systems(tmp_path / "one.json")
    assert state.positions.shape == (1, 2, 2) and state.softening == 0.01
    np.savez(tmp_path / "many.npz", **{k: np.stack([np.array(v)] * 3) for k, v in system.items()})
    many = load_systems(tmp_path / "many.npz")
    assert many.batch_size == 3
    assert torch.equal(many.positions[1], state.positions[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"masses": [1, 1], "positions": [[0, 0], [1, 0]]}', "lacks \\['velocities'\\]"),
        ('{"masses": [1, -1], "positions": [[0, 0], [1, 0]], "velocities": [[0, 0], [0, 1]]}', "masses must be > 0"),
        ('{"masses": [1, 1], "positions": [[0, 0], [1]], "velocities": [[0, 0], [0, 1]]}', "rectangular"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "ics.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_systems(path)
