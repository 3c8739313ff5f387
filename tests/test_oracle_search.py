"""The compiled oracle's two searches (aitimestepper.kernels.oracle): trial steps side by side give
the same errors and the same step as one at a time, bit for bit, on either side of the body count
where :func:`search` switches between them."""

from __future__ import annotations

import numpy as np
import pytest

from aitimestepper import fast
from aitimestepper.policies import Oracle

#: bodies on both sides of LANE_MAX_BODIES (8)
BODIES = (2, 3, 5, 8, 9, 12)
#: the kernels' tidal-field row of a system in no field (host mass 0), per dimension
NO_FIELD = {dim: np.zeros(3 + dim) for dim in (2, 3)}


@pytest.fixture(scope="module")
def kernels():
    fast._kernels()  # the numba cache directory of this source
    from aitimestepper.kernels import oracle, physics

    return oracle, physics


def random_system(physics, count: int, dim: int, seed: int, eps: float):
    """Bodies scattered over a unit ball with random velocities (bound or not), their accelerations
    and energy: a varied state, not a realistic one."""
    rng = np.random.default_rng(seed)
    positions = rng.normal(size=(count, dim))
    velocities = 0.6 * rng.normal(size=(count, dim))
    masses = rng.uniform(0.01, 1.0, count)
    acc = np.empty((count, dim))
    physics.accelerations(positions, masses, eps, acc)
    return positions, velocities, acc, masses, physics.energy(positions, velocities, masses, eps, NO_FIELD[dim], 0.0)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_trial_steps_side_by_side_have_the_leapfrog_steps_errors_bit_for_bit(kernels, dim, eps):
    oracle, physics = kernels
    for count in BODIES:
        x, v, a, m, before = random_system(physics, count, dim, seed=count, eps=eps)
        steps = np.geomspace(1e-6, 10.0, oracle.LANES)  # up to steps that wreck the energy
        errors = np.empty(oracle.LANES)
        oracle.lane_errors(x, v, a, m, eps, steps, before, errors, oracle.new_scratch(count, dim))
        x1, v1, a1 = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        none = NO_FIELD[dim]
        expected = [
            physics.relative_error(before, physics.leapfrog(x, v, a, m, eps, none, 0.0, dt, x1, v1, a1)) for dt in steps
        ]
        assert errors.tolist() == expected
        assert errors[0] < 1e-9 < errors[-1]  # the range spans passing and failing steps


@pytest.mark.parametrize(
    ("threshold", "fractions", "points", "bisections", "outcome"),
    [
        (2e-4, (1e-4, 100.0), 64, 12, "inside"),  # the evaluation's oracle
        (1e-4, (1e-4, 100.0), 10, 5, "inside"),  # a coarse grid, a partial last block, 3 + 2 levels
        (1e-2, (1e-4, 100.0), 64, 1, "inside"),
        (2e-4, (1e-4, 100.0), 64, 0, "inside"),  # the grid's bracket only
        (2e-4, (1e4, 1e6), 64, 12, "smallest"),  # the smallest candidate already fails
        (2e-4, (1e-6, 1e-3), 64, 12, "largest"),  # every candidate passes
    ],
)
def test_the_search_side_by_side_finds_the_same_step_bit_for_bit(
    kernels, threshold, fractions, points, bisections, outcome
):
    oracle, physics = kernels
    grid = Oracle(0.5, min_fraction=fractions[0], max_fraction=fractions[1], grid_points=points).grid.numpy()
    for count in BODIES:
        for dim in (2, 3):
            for seed in range(10):
                eps = 0.02 * (seed % 2)
                x, v, a, m, before = random_system(physics, count, dim, seed=100 * count + seed, eps=eps)
                x1, v1, a1 = np.empty_like(x), np.empty_like(x), np.empty_like(x)
                scratch = oracle.new_scratch(count, dim)
                none = NO_FIELD[dim]
                one_at_a_time = oracle.scalar_search(
                    x, v, a, m, eps, none, 0.0, before, threshold, grid, bisections, x1, v1, a1
                )
                side_by_side = oracle.lane_search(x, v, a, m, eps, before, threshold, grid, bisections, scratch)
                chosen = oracle.search(
                    x, v, a, m, eps, none, 0.0, before, threshold, grid, bisections, x1, v1, a1, scratch
                )
                assert side_by_side == one_at_a_time == chosen, (count, dim, seed)
                scale = physics.min_energy_free_fall(x, v, m, eps, none, 0.0) * threshold ** (1 / 3)
                if outcome == "smallest":
                    assert one_at_a_time == scale * grid[0]
                elif outcome == "largest":
                    assert one_at_a_time == scale * grid[-1]
                else:  # inside the grid, and a step that passes
                    assert scale * grid[0] < one_at_a_time < scale * grid[-1]
                    after = physics.leapfrog(x, v, a, m, eps, none, 0.0, one_at_a_time, x1, v1, a1)
                    error = physics.relative_error(before, after)
                    assert error <= threshold
