"""The isolated pair's kick-drift-kick error: the exact map, its table, and the Kepler step it gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitimestepper import two_body
from aitimestepper.features import kepler_step, look
from aitimestepper.kernels.kepler import pair_error
from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.policies import Oracle
from aitimestepper.systems.families import binaries

THRESHOLD = 2e-4


def random_binaries(dim: int, seed: int):
    (group,) = binaries(64, torch.Generator().manual_seed(seed), dim=dim, eccentricity=(0.0, 0.95))
    return group.state


def exact(k, phi, x):
    return two_body.step_error(k, np.cos(phi), np.sin(phi), x)


@pytest.mark.parametrize("dim", [2, 3])
def test_a_binarys_step_error_is_its_share_times_the_pair_map(dim):
    """One leapfrog step of a binary (any masses, orientation, phase) changes E by share * f(x; k,
    phi) |E|, read from the look's Kepler rows: the units and the frame of the map are right."""
    state = random_binaries(dim, seed=dim)
    seen = look(state, 8)
    log_k, phi, log_tau, log_share = seen.kepler[:, 0].unbind(1)
    x = torch.linspace(0.01, 0.5, state.batch_size, dtype=torch.float64)
    dt = x * (log_tau + seen.log_step[:, 0]).exp()
    energy = state.energy()
    actual = (leapfrog_step(state, dt).energy() - energy) / energy.abs()
    predicted = log_share.exp() * torch.from_numpy(exact(log_k.exp().numpy(), phi.numpy(), x.numpy()))
    torch.testing.assert_close(predicted, actual, rtol=1e-6, atol=1e-14)


def test_the_map_starts_as_the_leading_order_rate():
    """f grows as x**3 at small x (the leading order, R_pair / 12), and for a circular orbit
    (k = 1, phi = pi / 2) that order vanishes: kick-drift-kick keeps a circle's energy better."""
    small = np.array([1e-3, 2e-3])
    circular = exact(1.0, math.pi / 2, small)
    radial = exact(0.5, 0.3, small)
    assert np.abs(circular / small**3).max() < 1e-2 * np.abs(radial / small**3).min()
    growth = (radial / small**3)[1] / (radial / small**3)[0]
    assert growth == pytest.approx(1.0, rel=1e-2)


def test_the_table_reads_the_map_to_a_fraction_of_a_percent():
    table = two_body.error_table()
    generator = np.random.default_rng(3)
    count = 20_000
    log_k = generator.uniform(math.log(1e-2), math.log(10.0), count)
    phi = generator.uniform(0.0, math.pi, count)
    log_x = generator.uniform(math.log(3e-3), math.log(0.5), count)
    read = np.array([pair_error(table, a, b, c) for a, b, c in zip(log_k, phi, log_x, strict=True)])
    truth = exact(np.exp(log_k), phi, np.exp(log_x))
    relative = np.abs(read - truth) / np.abs(truth)
    assert np.median(relative) < 1e-3
    assert np.quantile(relative, 0.9) < 1e-2


def test_the_table_is_built_from_correctly_rounded_operations_only():
    """Two builds give the same bits (the grid from scalar math, the values from numpy arithmetic
    and sqrt), and the table is read-only."""
    first = two_body.error_table()
    two_body.error_table.cache_clear()
    second = two_body.error_table()
    assert first.tobytes() == second.tobytes()
    with pytest.raises(ValueError):
        second[0] = 1.0


@pytest.mark.parametrize("dim", [2, 3])
def test_a_binarys_kepler_step_is_the_oracles_step(dim):
    """For a binary the Kepler step is the greedy oracle's step (the first that reaches the
    threshold), found from the table without a trial step: within 1% on 90% of random states,
    within 10% on all but a few."""
    state = random_binaries(dim, seed=10 + dim)
    seen = look(state, 8)
    log_threshold = torch.full((state.batch_size,), math.log(THRESHOLD), dtype=torch.float64)
    kepler = (seen.log_step[:, 0] + log_threshold / 3.0 + kepler_step(seen, log_threshold)).exp()
    oracle = Oracle(THRESHOLD).propose(state, None)
    ratio = (kepler / oracle).log().abs()
    assert ratio.quantile(0.9) < 0.01
    assert (ratio < 0.1).double().mean() >= 0.95
