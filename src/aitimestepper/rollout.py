"""Integrate a batch of systems with a time-step policy until each reaches its end time."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from aitimestepper import fast
from aitimestepper.physics.integrator import leapfrog_step, relative_energy_error
from aitimestepper.physics.state import State
from aitimestepper.policies import Oracle, TimeStepPolicy

#: relative distance to the end time below which a system counts as arrived (round-off)
END_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Trajectory:
    """Per-step records of a rollout, T = steps of the longest-running system + 1 (the start).

    Systems that have finished repeat their last values. Attributes: ``time`` (T, B),
    ``dt`` (T, B) (0 at the start and once finished), ``energy_error`` (T, B) = |E - E0| / |E0|,
    ``positions`` (T, B, N, D).
    """

    time: Tensor
    dt: Tensor
    energy_error: Tensor
    positions: Tensor


@dataclass(frozen=True)
class Rollout:
    """What happened to B systems integrated side by side. Every tensor is (B,).

    Attributes:
        final_state: states at the end (or at the last finite state of a failed system).
        steps: accepted steps taken.
        force_evaluations: force evaluations spent: one per accepted step plus one per
            rejected try in gated mode.
        steps_passed: accepted steps whose single-step relative energy error was <= the threshold.
        max_energy_error: max over the run of |E(t) - E0| / |E0|.
        final_energy_error: |E(t_end) - E0| / |E0|.
        max_step_error: largest single-step relative energy error.
        dt_min, dt_max, dt_mean: statistics of the steps taken (time units).
        proposed_dt_min: the smallest step the policy proposed (before the last step was
            shortened to land on the end time, and before any rejection).
        reached_end: True where the system reached its end time.
        failed: True where a step produced NaN/inf (close encounter); the system stopped there.
        momentum_drift: |P(t_end) - P0| (momentum units).
        angular_momentum_drift: |L(t_end) - L0|.
        trajectory: per-step records when asked for, else None.
        oracle_steps: with a shadow oracle, the steps it would take over the same path: the sum
            over accepted steps of dt / (its step at the state the step starts from); else None.
        hit_step_cap: True where a system stopped at its step cap (``max_steps`` or its
            ``step_caps`` entry) before its end time, without failing (set by :func:`rollout`).
    """

    final_state: State
    steps: Tensor
    force_evaluations: Tensor
    steps_passed: Tensor
    max_energy_error: Tensor
    final_energy_error: Tensor
    max_step_error: Tensor
    dt_min: Tensor
    dt_max: Tensor
    dt_mean: Tensor
    proposed_dt_min: Tensor
    reached_end: Tensor
    failed: Tensor
    momentum_drift: Tensor
    angular_momentum_drift: Tensor
    trajectory: Trajectory | None = None
    oracle_steps: Tensor | None = None
    hit_step_cap: Tensor | None = None


#: gated mode: factor applied to a rejected step before it is tried again
GATE_SHRINK = 0.5
#: gated mode: tries after which a failing step is taken anyway (2**-40 of the proposal)
GATE_MAX_REJECTIONS = 40


def rollout(
    state: State,
    policy: TimeStepPolicy,
    end_time: Tensor,
    *,
    energy_threshold: float | Tensor,
    max_steps: int,
    step_caps: Tensor | None = None,
    gated: bool = False,
    record: bool = False,
    progress=None,
    engine: str = "auto",
    shadow: Oracle | None = None,
) -> Rollout:
    """Integrate every system with ``policy`` until its time reaches ``end_time``.

    The last step of each system is shortened to land on its end time. Systems that finish or
    fail stop moving (their step is 0) while the others go on; the loop ends when all are done
    or after ``max_steps`` steps.

    Args:
        state: B systems at their start.
        policy: proposes one dt per system per step.
        end_time: (B,) end time of each system (time units).
        energy_threshold: the per-step gate, one for all systems or (B,), one per system.
        max_steps: hard cap on steps per system.
        step_caps: optional (B,) per-system caps (each <= ``max_steps``).
        gated: reject a step whose relative energy error exceeds the threshold (or that is not
            finite) and retry it with ``GATE_SHRINK`` times the step, counting every try as a
            force evaluation; the energy bound then holds at a counted cost.
        record: keep a :class:`Trajectory`.
        progress: optional callable ``progress(steps_done)`` called once per step (the compiled
            path calls it once, at the end, with the steps of the longest run).
        engine: ``torch`` (the reference), ``compiled`` (:mod:`aitimestepper.fast`), or ``auto``:
            compiled whenever the policy has a compiled twin (:func:`aitimestepper.fast.supports`:
            the faster path at every batch size measured) and a trajectory asked for fits its budget
            (:func:`aitimestepper.fast.record_fits`).
        shadow: a greedy oracle that searches its step at every state the run passes through,
            without taking it (its trial steps are not counted as the run's force evaluations):
            ``Rollout.oracle_steps`` is then the oracle's cost over the same path. On chaotic
            systems two policies' runs part after a few close encounters; their costs compared
            each against the oracle on its own path are not.
    """
    if engine not in ("auto", "torch", "compiled"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'compiled', got {engine!r}")
    caps = torch.full((state.batch_size,), max_steps) if step_caps is None else step_caps.clamp_max(max_steps)
    if engine == "compiled" or (
        engine == "auto" and fast.supports(policy) and (not record or fast.record_fits(state, int(caps.max())))
    ):
        result = fast.fast_rollout(
            state,
            policy,
            end_time,
            energy_threshold=energy_threshold,
            max_steps=max_steps,
            step_caps=step_caps,
            gated=gated,
            shadow=shadow,
            record=record,
        )
        if progress is not None:
            progress(int(result.steps.max()))
        return _with_caps(result, caps)
    zeros = torch.zeros(state.batch_size, dtype=state.positions.dtype)
    initial_energy = state.energy()
    initial_momentum, initial_angular = state.momentum(), state.angular_momentum()
    history = policy.new_history(state)
    steps = torch.zeros(state.batch_size, dtype=torch.int64)
    force_evaluations = torch.zeros_like(steps)
    passed = torch.zeros_like(steps)
    failed = torch.zeros(state.batch_size, dtype=torch.bool)
    max_error, max_step_error = zeros.clone(), zeros.clone()
    dt_min, dt_max, dt_sum = torch.full_like(zeros, float("inf")), zeros.clone(), zeros.clone()
    proposed_min = torch.full_like(zeros, float("inf"))
    oracle_steps = zeros.clone()
    energy = initial_energy
    records = _Recorder(state) if record else None
    policy.start(state)
    with torch.no_grad():
        for _ in range(max_steps):
            active = (end_time - state.time > END_TOLERANCE * end_time.abs()) & ~failed
            if step_caps is not None:
                active &= steps < step_caps
            if not bool(active.any()):
                break
            proposed, seen = policy.propose_with_look(state, history)
            proposed_min = torch.where(active, torch.minimum(proposed_min, proposed), proposed_min)
            reference = shadow.propose(state, history) if shadow is not None else None
            dt = torch.where(active, torch.minimum(proposed, end_time - state.time), zeros)
            candidate, new_energy, step_error = _try_step(state, dt, energy)
            force_evaluations += active * (1 + policy.extra_force_evaluations)
            if gated:
                candidate, new_energy, step_error, dt, retries = _gate(
                    state, energy, candidate, new_energy, step_error, dt, active, energy_threshold
                )
                force_evaluations += retries
            broke = active & ~(candidate.finite_mask() & new_energy.isfinite())
            moved = active & ~broke
            failed |= broke
            policy.observe(dt, step_error, moved)
            history = policy.remember(history, seen, dt, step_error, moved)
            state = candidate.where(moved, state)
            energy = torch.where(moved, new_energy, energy)
            steps += moved
            passed += moved & (step_error <= energy_threshold)
            max_step_error = torch.where(moved, torch.maximum(max_step_error, step_error), max_step_error)
            max_error = torch.maximum(max_error, relative_energy_error(initial_energy, energy))
            taken = torch.where(moved, dt, zeros)
            dt_min = torch.where(moved, torch.minimum(dt_min, dt), dt_min)
            dt_max = torch.where(moved, torch.maximum(dt_max, dt), dt_max)
            dt_sum = dt_sum + taken
            if reference is not None:
                oracle_steps = oracle_steps + taken / reference
            if records is not None:
                records.add(state, taken, relative_energy_error(initial_energy, energy))
            if progress is not None:
                progress(1)
    result = Rollout(
        final_state=state,
        steps=steps,
        force_evaluations=force_evaluations,
        steps_passed=passed,
        max_energy_error=max_error,
        final_energy_error=relative_energy_error(initial_energy, energy),
        max_step_error=max_step_error,
        dt_min=dt_min,
        dt_max=dt_max,
        dt_mean=dt_sum / steps.clamp_min(1),
        proposed_dt_min=proposed_min,
        reached_end=end_time - state.time <= END_TOLERANCE * end_time.abs(),
        failed=failed,
        momentum_drift=(state.momentum() - initial_momentum).norm(dim=-1),
        angular_momentum_drift=(state.angular_momentum() - initial_angular).reshape(state.batch_size, -1).norm(dim=-1),
        trajectory=records.result() if records is not None else None,
        oracle_steps=oracle_steps if shadow is not None else None,
    )
    return _with_caps(result, caps)


def _with_caps(result: Rollout, caps: Tensor) -> Rollout:
    """``result`` with ``hit_step_cap``: stopped at its cap (B,) before its end, not failed."""
    return replace(result, hit_step_cap=~result.reached_end & ~result.failed & (result.steps >= caps))


def _try_step(state: State, dt: Tensor, energy: Tensor) -> tuple[State, Tensor, Tensor]:
    """One step of every system: (candidate state, its energy, single-step relative error)."""
    candidate = leapfrog_step(state, dt)
    new_energy = candidate.energy()
    return candidate, new_energy, relative_energy_error(energy, new_energy)


def _gate(state, energy, candidate, new_energy, step_error, dt, active, energy_threshold):
    """Retry the failing systems with shrinking steps (only those systems are recomputed)."""
    retries = torch.zeros_like(dt, dtype=torch.int64)
    for _ in range(GATE_MAX_REJECTIONS):
        rejected = active & ~((step_error <= energy_threshold) & candidate.finite_mask())
        if not bool(rejected.any()):
            break
        rows = rejected.nonzero().squeeze(1)
        dt = dt.index_copy(0, rows, dt[rows] * GATE_SHRINK)
        retry, retry_energy, retry_error = _try_step(state.select(rows), dt[rows], energy[rows])
        candidate = candidate.replace_rows(rows, retry)
        new_energy = new_energy.index_copy(0, rows, retry_energy)
        step_error = step_error.index_copy(0, rows, retry_error)
        retries += rejected
    return candidate, new_energy, step_error, dt, retries


class _Recorder:
    """Collects per-step values and stacks them into a :class:`Trajectory`."""

    def __init__(self, state: State) -> None:
        zeros = torch.zeros(state.batch_size, dtype=state.positions.dtype)
        self.time, self.dt, self.error = [state.time.clone()], [zeros], [zeros]
        self.positions = [state.positions.clone()]

    def add(self, state: State, dt: Tensor, error: Tensor) -> None:
        self.time.append(state.time.clone())
        self.dt.append(dt)
        self.error.append(error)
        self.positions.append(state.positions.clone())

    def result(self) -> Trajectory:
        return Trajectory(
            time=torch.stack(self.time),
            dt=torch.stack(self.dt),
            energy_error=torch.stack(self.error),
            positions=torch.stack(self.positions),
        )
