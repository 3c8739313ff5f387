"""Kick-drift-kick leapfrog with one time step per system, differentiable in the time step."""

from __future__ import annotations

import torch
from torch import Tensor

from aitimestepper.physics.state import State, total_accelerations


def leapfrog_step(state: State, dt: Tensor) -> State:
    """Advance every system by one kick-drift-kick leapfrog step.

    Second order, symplectic and time reversible (with a rotating tidal field, in the extended
    phase space that includes time: the drift advances the field's clock). The acceleration at the start of the step is
    taken from ``state``, so each step costs exactly one force evaluation. Gradients flow to
    ``dt`` (and to the state), which is what lets a trainer learn a time step.

    Args:
        state: B systems.
        dt: (B,) float64 time steps, one per system (a step of 0 leaves a system unchanged).

    Returns:
        The state after the step. Systems whose step produced NaN or inf keep those values;
        check ``State.finite_mask`` (the simulation and trainer do, per system).
    """
    step = dt.reshape(-1, 1, 1)
    half_kick_velocities = state.velocities + 0.5 * step * state.accelerations
    positions = state.positions + step * half_kick_velocities
    time = state.time + dt
    new_accelerations = total_accelerations(positions, state.masses, state.softening, state.external, time)
    velocities = half_kick_velocities + 0.5 * step * new_accelerations
    return State(
        positions=positions,
        velocities=velocities,
        masses=state.masses,
        accelerations=new_accelerations,
        time=time,
        softening=state.softening,
        external=state.external,
    )


def relative_energy_error(energy_before: Tensor, energy_after: Tensor) -> Tensor:
    """|E1 - E0| / |E0| per system, safe against division by zero and non-finite energies.

    Args:
        energy_before: (B,) energies E0.
        energy_after: (B,) energies E1.

    Returns:
        (B,) relative errors; +inf where E1 is not finite (a step that must fail any gate).
        The denominator is floored at the smallest positive float64, so E0 = 0 gives a large
        finite value, never NaN.
    """
    tiny = torch.finfo(energy_before.dtype).tiny
    error = (energy_after - energy_before).abs() / energy_before.abs().clamp_min(tiny)
    return torch.where(energy_after.isfinite(), error, torch.full_like(error, float("inf")))


def step_energy_error(state: State, dt: Tensor) -> tuple[State, Tensor]:
    """One leapfrog step and the relative energy error it made.

    Returns:
        (state after the step, (B,) relative energy error of that step).
    """
    after = leapfrog_step(state, dt)
    return after, relative_energy_error(state.energy(), after.energy())
