"""The greedy oracle's step search, compiled (the twin of :class:`aitimestepper.policies.Oracle`).

The search tries steps of one system: a scan of a logarithmic grid from small steps up to the
first failure, then bisections between the last passing and the first failing candidate. Two
searches return the same step, bit for bit:

- :func:`scalar_search` tries one step at a time (the :func:`aitimestepper.kernels.physics.leapfrog`
  step);
- :func:`lane_search` tries ``LANES`` steps side by side (:func:`lane_errors`, the same operations
  per step in the same order): the grid in blocks of ``LANES`` candidates, stopping at the first
  block with a failure, and the bisections ``BISECTION_LEVELS`` levels at a time (the midpoints of
  every branch those levels can take, of which the search then follows one path). For small
  systems the independent trial steps keep the core busy while one step waits on its square roots
  and divisions; for many bodies the extra trial steps cost more than that saves (measured, per
  search: 2.4x faster at N = 3, 1.2x at N = 8, 0.9x at N = 32).

:func:`search` picks the faster of the two by the number of bodies. Arrays as in
:mod:`aitimestepper.kernels.physics`: positions, velocities, accelerations (N, D) float64,
masses (N,), ``eps`` the Plummer softening length, ``before`` the energy of the state.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aitimestepper.kernels.physics import FIELD_MASS, TINY, leapfrog, min_energy_free_fall, relative_error

#: trial steps evaluated side by side
LANES = 8
#: the field row of a system without a field (host mass 0), for the field-free lane search
_NO_FIELD = np.zeros(1)
#: bisection levels resolved per batch of trial steps (2**3 - 1 = 7 midpoints fit in the lanes)
BISECTION_LEVELS = 3
#: :func:`search` tries steps side by side for systems of at most this many bodies
LANE_MAX_BODIES = 8


@njit(cache=True, error_model="numpy")
def lane_errors(positions, velocities, acc, masses, eps, steps, before, errors, scratch):
    """Fill ``errors`` (L,) with the relative energy error of one kick-drift-kick step of each
    size in ``steps`` (L,) from the same state (no tidal field), as :func:`relative_error` of
    :func:`aitimestepper.kernels.physics.leapfrog`'s energy, bit for bit. ``scratch``: the
    :func:`new_scratch` arrays of the system."""
    kicked, drifted, pulled, work = scratch
    count, dim = positions.shape
    lanes = steps.shape[0]
    for i in range(count):
        for d in range(dim):
            for k in range(lanes):
                velocity = velocities[i, d] + (0.5 * steps[k]) * acc[i, d]
                kicked[i, d, k] = velocity
                drifted[i, d, k] = positions[i, d] + steps[k] * velocity
                pulled[i, d, k] = 0.0
    inverse_cube, potential, speed, kinetic = work[0], work[1], work[2], work[3]
    for k in range(lanes):
        potential[k] = 0.0
        kinetic[k] = 0.0
    for i in range(count):
        for j in range(i + 1, count):
            for k in range(lanes):
                inverse_cube[k] = 0.0
            for d in range(dim):
                for k in range(lanes):
                    r = drifted[j, d, k] - drifted[i, d, k]
                    inverse_cube[k] += r * r
            for k in range(lanes):
                square = inverse_cube[k] + eps * eps
                root = math.sqrt(square)
                inverse_cube[k] = 1.0 / (square * root)
                potential[k] += masses[i] * masses[j] * (1.0 / root)
            for d in range(dim):
                for k in range(lanes):
                    pulled[i, d, k] += (masses[j] * inverse_cube[k]) * (drifted[j, d, k] - drifted[i, d, k])
                    pulled[j, d, k] += (masses[i] * inverse_cube[k]) * (drifted[i, d, k] - drifted[j, d, k])
    for i in range(count):
        for k in range(lanes):
            speed[k] = 0.0
        for d in range(dim):
            for k in range(lanes):
                velocity = kicked[i, d, k] + (0.5 * steps[k]) * pulled[i, d, k]
                speed[k] += velocity * velocity
        for k in range(lanes):
            kinetic[k] += masses[i] * speed[k]
    floor = max(abs(before), TINY)
    for k in range(lanes):
        after = 0.5 * kinetic[k] - potential[k]
        errors[k] = abs(after - before) / floor if math.isfinite(after) else math.inf


@njit(cache=True)
def new_scratch(count, dim):
    """The working arrays of :func:`lane_errors` for a system of ``count`` bodies in ``dim``
    dimensions: kicked velocities, drifted positions, new accelerations (N, D, LANES) and four
    rows of per-lane sums (4, LANES)."""
    shape = (count, dim, LANES)
    return np.empty(shape), np.empty(shape), np.empty(shape), np.empty((4, LANES))


@njit(cache=True)
def _passes(positions, velocities, acc, masses, eps, field, time, dt, before, threshold, x1, v1, a1):
    after = leapfrog(positions, velocities, acc, masses, eps, field, time, dt, x1, v1, a1)
    return relative_error(before, after) <= threshold


@njit(cache=True)
def scalar_search(
    positions, velocities, acc, masses, eps, field, time, before, threshold, grid, bisections, x1, v1, a1
):
    """The oracle's step, one trial step at a time (``x1``, ``v1``, ``a1``: (N, D) scratch;
    ``field``, ``time``: the system's tidal field and time, see
    :func:`aitimestepper.kernels.physics.leapfrog`)."""
    scale = min_energy_free_fall(positions, velocities, masses, eps, field, time) * threshold ** (1.0 / 3.0)
    points = grid.shape[0]
    failure = points
    for k in range(points):
        if not _passes(
            positions, velocities, acc, masses, eps, field, time, scale * grid[k], before, threshold, x1, v1, a1
        ):
            failure = k
            break
    low = scale * grid[min(max(failure - 1, 0), points - 1)]
    high = scale * grid[min(failure, points - 1)]
    if 0 < failure < points:
        for _ in range(bisections):
            middle = math.sqrt(low * high)
            if _passes(positions, velocities, acc, masses, eps, field, time, middle, before, threshold, x1, v1, a1):
                low = middle
            else:
                high = middle
    return low


@njit(cache=True)
def lane_search(positions, velocities, acc, masses, eps, before, threshold, grid, bisections, scratch):
    """The oracle's step, ``LANES`` trial steps at a time: the same step as :func:`scalar_search`."""
    steps, errors = np.empty(LANES), np.empty(LANES)
    lows, highs = np.empty(LANES), np.empty(LANES)
    scale = min_energy_free_fall(positions, velocities, masses, eps, _NO_FIELD, 0.0) * threshold ** (1.0 / 3.0)
    points = grid.shape[0]
    failure = points
    for start in range(0, points, LANES):
        for k in range(LANES):
            steps[k] = scale * grid[min(start + k, points - 1)]
        lane_errors(positions, velocities, acc, masses, eps, steps, before, errors, scratch)
        for k in range(min(LANES, points - start)):
            if not errors[k] <= threshold:
                failure = start + k
                break
        if failure < points:
            break
    low = scale * grid[min(max(failure - 1, 0), points - 1)]
    high = scale * grid[min(failure, points - 1)]
    if 0 < failure < points:
        left = bisections
        while left > 0:
            levels = min(left, BISECTION_LEVELS)
            # the midpoints of every branch, in heap order: node q bisects [lows[q], highs[q]]; its
            # children 2q + 1 and 2q + 2 bisect the lower half (q fails) and the upper half (q passes)
            nodes = (1 << levels) - 1
            lows[0], highs[0] = low, high
            for q in range(nodes):
                steps[q] = math.sqrt(lows[q] * highs[q])
                if 2 * q + 2 < nodes:
                    lows[2 * q + 1], highs[2 * q + 1] = lows[q], steps[q]
                    lows[2 * q + 2], highs[2 * q + 2] = steps[q], highs[q]
            lane_errors(positions, velocities, acc, masses, eps, steps[:nodes], before, errors, scratch)
            q = 0
            for _ in range(levels):
                if errors[q] <= threshold:
                    low, q = steps[q], 2 * q + 2
                else:
                    high, q = steps[q], 2 * q + 1
            left -= levels
    return low


@njit(cache=True)
def search(
    positions, velocities, acc, masses, eps, field, time, before, threshold, grid, bisections, x1, v1, a1, scratch
):
    """The oracle's step by the faster of :func:`lane_search` (up to ``LANE_MAX_BODIES`` bodies,
    no tidal field) and :func:`scalar_search`, which return the same step."""
    if positions.shape[0] <= LANE_MAX_BODIES and field[FIELD_MASS] == 0.0:
        return lane_search(positions, velocities, acc, masses, eps, before, threshold, grid, bisections, scratch)
    return scalar_search(
        positions, velocities, acc, masses, eps, field, time, before, threshold, grid, bisections, x1, v1, a1
    )
