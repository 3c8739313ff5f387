"""One kick-drift-kick step of an isolated pair: its energy error, tabulated once per process.

A pair alone is a Kepler problem, and one kick-drift-kick step of it changes its specific energy
by an amount that, in the pair's own units (length |r|, time tau = sqrt(|r|**3 / G m), specific
energy G m / |r|, m = m_i + m_j), depends on three numbers only: k = v**2 |r| / (G m) (twice its
kinetic over potential energy), the angle phi between r and v, and the step x = dt / tau. The
pair then changes the system's energy by share * f(x; k, phi), share = G m_i m_j / (|r| |E|).

The leading order of f is x**3 R_pair / 12 (the pair's term of the rate R of
:mod:`aitimestepper.features`), but a step that is not small against the pair's own time (a
light planet, an eccentric binary's pericentre, a close pair in a cluster) leaves the Taylor
series; f itself does not. :func:`error_table` tabulates f / x**3 (smooth, R_pair / 12 as x ->
0) on a uniform grid of (log k, phi, log x); :mod:`aitimestepper.kernels.kepler` reads it back
by trilinear interpolation, a few dozen operations per pair and no force evaluation, whatever N.
The grid's coordinates come from Python's scalar ``math`` and the table from numpy's +, -, *, /
and sqrt (correctly rounded): the same bits on every machine.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: the table's grid: log k, phi in [0, pi] and log x, each uniform
LOG_K_MIN, LOG_K_MAX, K_POINTS = math.log(1e-4), math.log(1e3), 161
PHI_POINTS = 129
LOG_X_MIN, LOG_X_MAX, X_POINTS = math.log(1e-3), math.log(30.0), 121
K_SPACING = (LOG_K_MAX - LOG_K_MIN) / (K_POINTS - 1)
PHI_SPACING = math.pi / (PHI_POINTS - 1)
X_SPACING = (LOG_X_MAX - LOG_X_MIN) / (X_POINTS - 1)


def step_error(k: np.ndarray, cos_phi: np.ndarray, sin_phi: np.ndarray, x: np.ndarray) -> np.ndarray:
    """f(x; k, phi): the change of an isolated pair's specific energy in one kick-drift-kick step
    of x pair times, in units of G m / |r|, for k > 0 and x > 0 (float64 arrays that broadcast)."""
    speed = np.sqrt(k)
    vx = speed * cos_phi - 0.5 * x  # the first half kick: a = -r / |r|**3 = (-1, 0)
    vy = speed * sin_phi
    rx = 1.0 + x * vx
    ry = x * vy
    square = rx * rx + ry * ry
    distance = np.sqrt(square)
    pull = 0.5 * x / (square * distance)
    wx, wy = vx - pull * rx, vy - pull * ry  # the second half kick
    return 0.5 * (wx * wx + wy * wy) - 1.0 / distance - (0.5 * k - 1.0)


@functools.cache
def error_table() -> np.ndarray:
    """(K_POINTS * PHI_POINTS * X_POINTS,) float64 C-contiguous: f / x**3 on the grid, flattened
    in (k, phi, x) order (non-finite values, where a step passes through the origin, as 0); built
    on first use (2.5 million step errors, a fraction of a second) and cached. Read-only."""
    k = np.array([math.exp(LOG_K_MIN + i * K_SPACING) for i in range(K_POINTS)])
    cos_phi = np.array([math.cos(j * PHI_SPACING) for j in range(PHI_POINTS)])
    sin_phi = np.array([math.sin(j * PHI_SPACING) for j in range(PHI_POINTS)])
    x = np.array([math.exp(LOG_X_MIN + n * X_SPACING) for n in range(X_POINTS)])
    with np.errstate(all="ignore"):
        values = step_error(k[:, None, None], cos_phi[None, :, None], sin_phi[None, :, None], x) / (x * x * x)
    table = np.ascontiguousarray(np.where(np.isfinite(values), values, 0.0).ravel())
    table.flags.writeable = False
    return table
