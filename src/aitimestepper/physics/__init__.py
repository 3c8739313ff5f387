"""Batched float64 N-body physics: state, gravity, leapfrog integrator, initial conditions."""

from aitimestepper.physics.integrator import leapfrog_step, relative_energy_error, step_energy_error
from aitimestepper.physics.state import DTYPE, State

__all__ = ["DTYPE", "State", "leapfrog_step", "relative_energy_error", "step_energy_error"]
