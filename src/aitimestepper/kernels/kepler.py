"""Compiled: the Kepler step, from the exact kick-drift-kick error of each candidate pair alone.

A pair alone, softened or not, is a one-body problem in its relative coordinates. In units of its
softened distance s, of G (m_i + m_j) and of its free-fall time tau = sqrt(s**3 / (G (m_i +
m_j))), its state is three numbers: k = v**2 s / (G (m_i + m_j)), the angle phi between r and v,
and the softening sigma = eps**2 / s**2; one kick-drift-kick step of x tau changes its energy by
f(x; k, phi, sigma) times its binding energy G m_i m_j / s (:func:`pair_error`, the step itself in
a dozen operations; no expansion in x, so it holds where x is not small: a pericentre passage, a
light planet's short orbit, a softened core).

The one implementation of :func:`aitimestepper.features.kepler_step`, used by the torch path (one
call per batch, :func:`kepler_steps`) and by the compiled learned policy (per system,
:func:`kepler_step`): the same bits on both. No gradient flows through it (it is a feature).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: the Kepler step is searched in log x over +-STEP_CLIP step units (as the other steps are clipped)
STEP_CLIP = 3.0
#: its first crossing: a grid of log x over +-STEP_CLIP, then bisections
KEPLER_POINTS = 25
KEPLER_BISECTIONS = 12
#: what a pair's row holds: log k, phi, log tau - min log step, log share, sigma
KEPLER_PAIR = 5


@njit(cache=True)
def pair_error(log_k, phi, softening, log_x):
    """f(x; k, phi, sigma): the energy change of one kick-drift-kick step of x = exp(log_x) free-fall
    times of a pair alone, over its binding energy G m_i m_j / s (signed, float).

    The pair starts at r = (sqrt(1 - sigma), 0), v = sqrt(k) (cos phi, sin phi) with s = 1 and
    G (m_i + m_j) = 1. The change is summed from differences (the kinetic one from the kicks, the
    potential one from the drift's change of s**2), not taken between two energies of order 1, so
    it keeps its relative precision at small x (rounding ~1e-16 / x**2 instead of / x**3)."""
    h = math.exp(log_x)
    speed = math.exp(0.5 * log_k)
    rx, ry = math.sqrt(1.0 - softening), 0.0
    vx, vy = speed * math.cos(phi), speed * math.sin(phi)
    ax, ay = -rx, -ry  # s = 1 at the start
    half_x, half_y = vx + 0.5 * h * ax, vy + 0.5 * h * ay
    dx, dy = h * half_x, h * half_y
    nx, ny = rx + dx, ry + dy
    square = nx * nx + ny * ny + softening
    distance = math.sqrt(square)
    cube = square * distance
    kick_x, kick_y = ax - nx / cube, ay - ny / cube  # a_start + a_end
    kinetic = 0.5 * h * (kick_x * vx + kick_y * vy) + 0.125 * h * h * (kick_x * kick_x + kick_y * kick_y)
    potential = (2.0 * (rx * dx + ry * dy) + dx * dx + dy * dy) / (distance * (1.0 + distance))
    return kinetic + potential


@njit(cache=True)
def _reaches(pairs, keep, offsets, shares, rest, threshold, x):
    """The Kepler error of a step of exp(x) step units reaches the threshold: the candidates' own
    errors, share * f, plus the leading order of the rest, x**3 threshold * rest."""
    total = 0.0
    for k in range(keep):
        total += shares[k] * pair_error(pairs[k, 0], pairs[k, 1], pairs[k, 4], x + offsets[k])
    return abs(total + math.exp(3.0 * x) * threshold * rest) >= threshold


@njit(cache=True)
def kepler_step(pairs, keep, rest, log_threshold):
    """log x of the first step (in step units s threshold**(1/3)) whose Kepler error reaches the
    threshold, in [-STEP_CLIP, STEP_CLIP]: the first point of the grid that reaches it, refined by
    bisection against the one before; -clip if the first point reaches it, +clip if none does.

    Args:
        pairs: (K, KEPLER_PAIR) float64 rows of the candidates, the first ``keep`` real.
        rest: (R - sum of the candidates' own R) s**3 / (12 |E|).
        log_threshold: log of the system's threshold.
    """
    shares = np.empty(keep)
    offsets = np.empty(keep)
    for k in range(keep):
        shares[k] = math.exp(pairs[k, 3])
        offsets[k] = log_threshold / 3.0 - pairs[k, 2]
    threshold = math.exp(log_threshold)
    spacing = 2.0 * STEP_CLIP / (KEPLER_POINTS - 1)
    for g in range(KEPLER_POINTS):
        hi = -STEP_CLIP + g * spacing
        if _reaches(pairs, keep, offsets, shares, rest, threshold, hi):
            if g == 0:
                return -STEP_CLIP
            lo = -STEP_CLIP + (g - 1) * spacing
            for _ in range(KEPLER_BISECTIONS):
                middle = 0.5 * (lo + hi)
                if _reaches(pairs, keep, offsets, shares, rest, threshold, middle):
                    hi = middle
                else:
                    lo = middle
            return hi
    return STEP_CLIP


@njit(cache=True)
def kepler_steps(pairs, rest, log_threshold):
    """:func:`kepler_step` of B systems: (B, K, KEPLER_PAIR) rows, (B,) rests and log thresholds
    -> (B,) float64 (every candidate real)."""
    out = np.empty(pairs.shape[0])
    for b in range(pairs.shape[0]):
        out[b] = kepler_step(pairs[b], pairs.shape[1], rest[b], log_threshold[b])
    return out
