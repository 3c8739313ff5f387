"""The compiled rollout: every system of a batch integrated on its own, in parallel over systems,
with the same step, gate, policies and bookkeeping as :func:`aitimestepper.rollout.rollout`.

Policies are chosen by ``kind`` (see ``KINDS``) with their numbers in ``scalars``:
fixed [dt], free_fall / energy_free_fall / prs23 [eta], energy_feedback [target, safety,
initial fraction of the energy-normalised free-fall step at the threshold], oracle [bisections]
with its grid of step fractions in ``grid``, learned (network arrays in the ``learned_*`` args).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from aitimestepper.features import ERROR_CAP, ERROR_FLOOR, ROW_WIDTH
from aitimestepper.kernels.learned import look_and_step
from aitimestepper.kernels.oracle import new_scratch, search
from aitimestepper.kernels.physics import (
    all_finite,
    energy,
    leapfrog,
    min_energy_free_fall,
    min_free_fall,
    prs23,
    relative_error,
)
from aitimestepper.rollout import END_TOLERANCE, GATE_MAX_REJECTIONS, GATE_SHRINK

KINDS = {"fixed": 0, "free_fall": 1, "energy_free_fall": 2, "prs23": 3, "energy_feedback": 4, "oracle": 5, "learned": 6}
#: columns of the per-system statistics: steps, force evaluations, passed steps (int64) ...
INT_STATS = ("steps", "force_evaluations", "steps_passed", "failed")
#: ... and max |E - E0| / |E0|, final one, max step error, dt min / max / sum, smallest proposal, and
#: the greedy oracle's steps over the same path (sum of dt / the oracle's step at each state; 0
#: unless asked for) (float64)
FLOAT_STATS = (
    "max_energy_error",
    "final_energy_error",
    "max_step_error",
    "dt_min",
    "dt_max",
    "dt_sum",
    "proposed_dt_min",
    "oracle_steps",
)


@njit(cache=True)
def _record(record_time, record_dt, record_error, record_positions, b, row, t, dt, error, positions):
    record_time[b, row] = t
    record_dt[b, row] = dt
    record_error[b, row] = error
    record_positions[b, row] = positions


@njit(cache=True, parallel=True, nogil=True)
def rollout_kernel(
    positions,
    velocities,
    accelerations,
    masses,
    softening,
    times,
    end_time,
    threshold,
    aim,
    caps,
    max_steps,
    gated,
    kind,
    scalars,
    extra_evaluations,
    grid,
    history_length,
    network,
    numbers,
    shadow_grid,
    shadow_bisections,
    shadow_threshold,
    fields,
    int_stats,
    float_stats,
    record_time,
    record_dt,
    record_error,
    record_positions,
):
    """Integrate every system b until ``end_time[b]``, in place in the state arrays (B, N, D)
    and ``times`` (B,), gated against ``threshold[b]``, the policy aimed at ``aim[b]``;
    per-system statistics go to ``int_stats`` (B, 4) and ``float_stats`` (B, 8). ``network`` and
    ``numbers``: the learned policy (see :func:`aitimestepper.kernels.learned.look_and_step`).
    With a non-empty ``shadow_grid``, a greedy oracle (that grid, ``shadow_bisections``, aimed at
    ``shadow_threshold``) also searches its step at every state the run passes through, without
    taking it: its steps over the same path are summed as dt / its step. ``fields`` (B, 3 + D): each
    system's tidal-field row (:data:`aitimestepper.kernels.physics.FIELD_MASS`; mass 0: none). ``record_*`` (B, T) and
    (B, T, N, D), T = 0 to record nothing: row 0 the start, row s the state after step s (time,
    the step, |E - E0| / |E0|, positions), for s < T."""
    batch, count, dim = positions.shape
    for b in prange(batch):
        x, v, a = positions[b], velocities[b], accelerations[b]
        m, eps, thr, target, field = masses[b], softening[b], threshold[b], aim[b], fields[b]
        x1, v1, a1 = np.empty((count, dim)), np.empty((count, dim)), np.empty((count, dim))
        scratch = new_scratch(count, dim)
        history = np.zeros((history_length, ROW_WIDTH))
        filled = 0
        t = times[b]
        e0 = energy(x, v, m, eps, field, t)
        e = e0
        steps = evaluations = passed = 0
        failed = False
        max_error = max_step = dt_max = dt_sum = 0.0
        dt_min = smallest = math.inf
        oracle_steps = 0.0
        shadowed = shadow_grid.shape[0] > 0
        next_dt = -1.0
        log_threshold = math.log(target)
        cap = min(caps[b], max_steps)
        recorded = record_time.shape[1]
        if recorded > 0:
            _record(record_time, record_dt, record_error, record_positions, b, 0, t, 0.0, 0.0, x)
        for _ in range(max_steps):
            if not (end_time[b] - t > END_TOLERANCE * abs(end_time[b])) or failed or steps >= cap:
                break
            row0 = row1 = row2 = 0.0
            if kind == 0:
                proposed = scalars[0]
            elif kind == 1:
                proposed = scalars[0] * min_free_fall(x, m, eps)
            elif kind == 2:
                proposed = scalars[0] * min_energy_free_fall(x, v, m, eps, field, t)
            elif kind == 3:
                proposed = scalars[0] * prs23(x, v, a, m, eps)
            elif kind == 4:
                if next_dt < 0.0:
                    next_dt = scalars[2] * min_energy_free_fall(x, v, m, eps, field, t) * target ** (1.0 / 3.0)
                proposed = next_dt
            elif kind == 5:
                proposed = search(x, v, a, m, eps, field, t, e, target, grid, int(scalars[0]), x1, v1, a1, scratch)
            else:
                log_dt, row0, row1, row2 = look_and_step(
                    x, v, a, m, eps, field, t, log_threshold, history, filled, network, numbers
                )
                proposed = math.exp(log_dt)
            smallest = min(smallest, proposed)
            reference = math.inf
            if shadowed:
                reference = search(
                    x, v, a, m, eps, field, t, e, shadow_threshold, shadow_grid, shadow_bisections, x1, v1, a1, scratch
                )
            dt = min(proposed, end_time[b] - t)
            e1 = leapfrog(x, v, a, m, eps, field, t, dt, x1, v1, a1)
            error = relative_error(e, e1)
            evaluations += 1 + extra_evaluations
            if gated:
                for _ in range(GATE_MAX_REJECTIONS):
                    if error <= thr and all_finite(x1) and all_finite(v1) and all_finite(a1):
                        break
                    dt = dt * GATE_SHRINK
                    e1 = leapfrog(x, v, a, m, eps, field, t, dt, x1, v1, a1)
                    error = relative_error(e, e1)
                    evaluations += 1
            if not (all_finite(x1) and all_finite(v1) and all_finite(a1) and math.isfinite(e1)):
                failed = True
                break
            if kind == 4 and dt > 0.0:
                factor = scalars[1] * (scalars[0] * target / max(error, 2.2250738585072014e-308)) ** (1.0 / 3.0)
                next_dt = dt * min(max(factor, 0.5), 2.0)
            if history_length > 0:
                for slot in range(history_length - 1, 0, -1):
                    for q in range(ROW_WIDTH):
                        history[slot, q] = history[slot - 1, q]
                history[0, 0] = row0
                history[0, 1] = row1
                history[0, 2] = math.log(min(max(error / target, ERROR_FLOOR), ERROR_CAP))
                history[0, 3] = math.log(dt) - row0 - log_threshold / 3.0
                history[0, 4] = row2
                filled = min(filled + 1, history_length)
            x[:, :] = x1
            v[:, :] = v1
            a[:, :] = a1
            e = e1
            t = t + dt
            steps += 1
            if error <= thr:
                passed += 1
            max_step = max(max_step, error)
            max_error = max(max_error, relative_error(e0, e))
            dt_min = min(dt_min, dt)
            dt_max = max(dt_max, dt)
            dt_sum += dt
            oracle_steps += dt / reference
            if steps < recorded:
                error_so_far = relative_error(e0, e)
                _record(record_time, record_dt, record_error, record_positions, b, steps, t, dt, error_so_far, x)
        times[b] = t
        int_stats[b, 0] = steps
        int_stats[b, 1] = evaluations
        int_stats[b, 2] = passed
        int_stats[b, 3] = 1 if failed else 0
        float_stats[b, 0] = max_error
        float_stats[b, 1] = relative_error(e0, e)
        float_stats[b, 2] = max_step
        float_stats[b, 3] = dt_min
        float_stats[b, 4] = dt_max
        float_stats[b, 5] = dt_sum
        float_stats[b, 6] = smallest
        float_stats[b, 7] = oracle_steps
