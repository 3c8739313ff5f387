"""Compiled: the Kepler step, read from the two-body table (:mod:`aitimestepper.two_body`).

The one implementation of :func:`aitimestepper.features.kepler_step`, used by the torch path (one
call per batch, :func:`kepler_steps`) and by the compiled learned policy (per system,
:func:`kepler_step`): the same bits on both. No gradient flows through it (it is a feature).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aitimestepper.two_body import (
    K_POINTS,
    K_SPACING,
    LOG_K_MIN,
    LOG_X_MIN,
    PHI_POINTS,
    PHI_SPACING,
    X_POINTS,
    X_SPACING,
)

#: the Kepler step is searched in log x over +-STEP_CLIP step units (as the other steps are clipped)
STEP_CLIP = 3.0
#: its first crossing: a grid of log x over +-STEP_CLIP, then bisections
KEPLER_POINTS = 25
KEPLER_BISECTIONS = 12
#: what a pair's row holds: log k, phi, log tau - min log step, log share
KEPLER_PAIR = 4


@njit(cache=True)
def _cell(value, low, spacing, points):
    """The lower index of ``value``'s grid cell (clamped to the grid) and the upper node's weight."""
    u = min(max((value - low) / spacing, 0.0), points - 1.0)
    lower = min(math.floor(u), points - 2.0)
    return int(lower), u - lower


@njit(cache=True)
def _corners(log_k, phi, starts, weights):
    """The flat offsets of the four (k, phi) rows of a pair's cell into ``starts`` (4,) int64 and
    their bilinear weights into ``weights`` (4,) (log k and phi clamped to the grid)."""
    k0, kw = _cell(log_k, LOG_K_MIN, K_SPACING, K_POINTS)
    p0, pw = _cell(phi, 0.0, PHI_SPACING, PHI_POINTS)
    corner = 0
    for dk in range(2):
        wk = kw if dk == 1 else 1.0 - kw
        for dp in range(2):
            wp = pw if dp == 1 else 1.0 - pw
            starts[corner] = ((k0 + dk) * PHI_POINTS + (p0 + dp)) * X_POINTS
            weights[corner] = wk * wp
            corner += 1


@njit(cache=True)
def _read(table, starts, weights, log_x):
    """f at exp(log_x) from a pair's cell (linear in log x, clamped to the grid: below its smallest
    x, f / x**3 is held)."""
    x0, xw = _cell(log_x, LOG_X_MIN, X_SPACING, X_POINTS)
    value = 0.0
    for corner in range(4):
        start = starts[corner] + x0
        value += weights[corner] * (table[start] + xw * (table[start + 1] - table[start]))
    return value * math.exp(3.0 * log_x)


@njit(cache=True)
def pair_error(table, log_k, phi, log_x):
    """f(x; k, phi) of :func:`aitimestepper.two_body.step_error` read from the table (trilinear in
    log k, phi and log x)."""
    starts = np.empty(4, dtype=np.int64)
    weights = np.empty(4)
    _corners(log_k, phi, starts, weights)
    return _read(table, starts, weights, log_x)


@njit(cache=True)
def _reaches(table, starts, weights, shares, offsets, keep, rest, threshold, x):
    """The Kepler error of a step of exp(x) step units reaches the threshold: the candidates' own
    errors, share * f, plus the leading order of the rest, x**3 threshold * rest."""
    total = 0.0
    for k in range(keep):
        total += shares[k] * _read(table, starts[k], weights[k], x + offsets[k])
    return abs(total + math.exp(3.0 * x) * threshold * rest) >= threshold


@njit(cache=True)
def kepler_step(table, pairs, keep, rest, log_threshold):
    """log x of the first step (in step units s threshold**(1/3)) whose Kepler error reaches the
    threshold, in [-STEP_CLIP, STEP_CLIP]: the first point of the grid that reaches it, refined by
    bisection against the one before; -clip if the first point reaches it, +clip if none does.

    Args:
        table: :func:`aitimestepper.two_body.error_table`.
        pairs: (K, KEPLER_PAIR) float64 rows of the candidates, the first ``keep`` real.
        rest: (R - sum of the candidates' own R) s**3 / (12 |E|).
        log_threshold: log of the system's threshold.
    """
    starts = np.empty((keep, 4), dtype=np.int64)
    weights = np.empty((keep, 4))
    shares = np.empty(keep)
    offsets = np.empty(keep)
    for k in range(keep):
        _corners(pairs[k, 0], pairs[k, 1], starts[k], weights[k])
        shares[k] = math.exp(pairs[k, 3])
        offsets[k] = log_threshold / 3.0 - pairs[k, 2]
    threshold = math.exp(log_threshold)
    spacing = 2.0 * STEP_CLIP / (KEPLER_POINTS - 1)
    for g in range(KEPLER_POINTS):
        hi = -STEP_CLIP + g * spacing
        if _reaches(table, starts, weights, shares, offsets, keep, rest, threshold, hi):
            if g == 0:
                return -STEP_CLIP
            lo = -STEP_CLIP + (g - 1) * spacing
            for _ in range(KEPLER_BISECTIONS):
                middle = 0.5 * (lo + hi)
                if _reaches(table, starts, weights, shares, offsets, keep, rest, threshold, middle):
                    hi = middle
                else:
                    lo = middle
            return hi
    return STEP_CLIP


@njit(cache=True)
def kepler_steps(table, pairs, rest, log_threshold):
    """:func:`kepler_step` of B systems: (B, K, KEPLER_PAIR) rows, (B,) rests and log thresholds
    -> (B,) float64 (every candidate real)."""
    out = np.empty(pairs.shape[0])
    for b in range(pairs.shape[0]):
        out[b] = kepler_step(table, pairs[b], pairs.shape[1], rest[b], log_threshold[b])
    return out
