"""Integrate a batch of systems with a time-step policy until each reaches its end time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.physics.integrator import leapfrog_step, relative_energy_error
from aitimestepper.physics.state import State
from aitimestepper.policies import TimeStepPolicy

#: relative distance to the end time below which a system counts as arrived (round-off)
_END_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Rollout:
    """What happened to B systems integrated side by side. Every tensor is (B,).

    Attributes:
        final_state: states at the end (or at the last finite state of a failed system).
        steps: steps taken (each one force evaluation).
        steps_passed: steps whose single-step relative energy error was <= the threshold.
        max_energy_error: max over the run of |E(t) - E0| / |E0|.
        final_energy_error: |E(t_end) - E0| / |E0|.
        max_step_error: largest single-step relative energy error.
        dt_min, dt_max, dt_mean: statistics of the steps taken (time units).
        reached_end: True where the system reached its end time.
        failed: True where a step produced NaN/inf (close encounter); the system stopped there.
        momentum_drift: |P(t_end) - P0| (momentum units).
        angular_momentum_drift: |L(t_end) - L0|.
    """

    final_state: State
    steps: Tensor
    steps_passed: Tensor
    max_energy_error: Tensor
    final_energy_error: Tensor
    max_step_error: Tensor
    dt_min: Tensor
    dt_max: Tensor
    dt_mean: Tensor
    reached_end: Tensor
    failed: Tensor
    momentum_drift: Tensor
    angular_momentum_drift: Tensor


def rollout(
    state: State,
    policy: TimeStepPolicy,
    end_time: Tensor,
    *,
    energy_threshold: float,
    max_steps: int,
    step_caps: Tensor | None = None,
    progress=None,
) -> Rollout:
    """Integrate every system with ``policy`` until its time reaches ``end_time``.

    The last step of each system is shortened to land on its end time. Systems that finish or
    fail stop moving (their step is 0) while the others go on; the loop ends when all are done
    or after ``max_steps`` steps.

    Args:
        state: B systems at their start.
        policy: proposes one dt per system per step.
        end_time: (B,) end time of each system (time units).
        energy_threshold: the per-step gate used to count passing steps.
        max_steps: hard cap on steps per system.
        step_caps: optional (B,) per-system caps (each <= ``max_steps``).
        progress: optional callable ``progress(steps_done)`` called once per step.
    """
    zeros = torch.zeros(state.batch_size, dtype=state.positions.dtype)
    initial_energy = state.energy()
    initial_momentum, initial_angular = state.momentum(), state.angular_momentum()
    history = History.empty(state, policy.history_len)
    steps = torch.zeros(state.batch_size, dtype=torch.int64)
    passed = torch.zeros_like(steps)
    failed = torch.zeros(state.batch_size, dtype=torch.bool)
    max_error, max_step_error = zeros.clone(), zeros.clone()
    dt_min, dt_max, dt_sum = torch.full_like(zeros, float("inf")), zeros.clone(), zeros.clone()
    energy = initial_energy
    with torch.no_grad():
        for _ in range(max_steps):
            active = (end_time - state.time > _END_TOLERANCE * end_time.abs()) & ~failed
            if step_caps is not None:
                active &= steps < step_caps
            if not bool(active.any()):
                break
            proposed = policy.propose(state, history)
            dt = torch.where(active, torch.minimum(proposed, end_time - state.time), zeros)
            candidate = leapfrog_step(state, dt)
            new_energy = candidate.energy()
            broke = active & ~(candidate.finite_mask() & new_energy.isfinite())
            moved = active & ~broke
            failed |= broke
            step_error = relative_energy_error(energy, new_energy)
            history = history.push_where(moved, state)
            state = candidate.where(moved, state)
            energy = torch.where(moved, new_energy, energy)
            steps += moved
            passed += moved & (step_error <= energy_threshold)
            max_step_error = torch.where(moved, torch.maximum(max_step_error, step_error), max_step_error)
            max_error = torch.maximum(max_error, relative_energy_error(initial_energy, energy))
            dt_min = torch.where(moved, torch.minimum(dt_min, dt), dt_min)
            dt_max = torch.where(moved, torch.maximum(dt_max, dt), dt_max)
            dt_sum = dt_sum + torch.where(moved, dt, zeros)
            if progress is not None:
                progress(1)
    return Rollout(
        final_state=state,
        steps=steps,
        steps_passed=passed,
        max_energy_error=max_error,
        final_energy_error=relative_energy_error(initial_energy, energy),
        max_step_error=max_step_error,
        dt_min=dt_min,
        dt_max=dt_max,
        dt_mean=dt_sum / steps.clamp_min(1),
        reached_end=end_time - state.time <= _END_TOLERANCE * end_time.abs(),
        failed=failed,
        momentum_drift=(state.momentum() - initial_momentum).norm(dim=-1),
        angular_momentum_drift=(state.angular_momentum() - initial_angular).reshape(state.batch_size, -1).norm(dim=-1),
    )
