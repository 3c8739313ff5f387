"""Small systems with known answers, shared by the tests."""

from __future__ import annotations

import math

import torch

from aitimestepper.physics.integrator import leapfrog_step
from aitimestepper.physics.state import State
from aitimestepper.systems.kepler import KeplerElements, kepler_binary


def binary_elements(
    eccentricities,
    phase: float = math.pi,
    semi_major_axis: float = 1.0,
    total_mass: float = 1.0,
    mass_ratio: float = 1.0,
) -> KeplerElements:
    """Kepler elements of len(eccentricities) binaries sharing a, M, q and mean anomaly (apocenter)."""
    e = torch.as_tensor(eccentricities, dtype=torch.float64)
    ones = torch.ones_like(e)
    return KeplerElements(e, semi_major_axis * ones, total_mass * ones, mass_ratio * ones, phase * ones)


def binary(eccentricities, **kwargs) -> State:
    """Binaries built from binary_elements(eccentricities, **kwargs)."""
    return kepler_binary(binary_elements(eccentricities, **kwargs))


def integrate_fixed(state: State, dt: float, steps: int) -> tuple[State, torch.Tensor]:
    """``steps`` leapfrog steps of size dt; returns the final state and max |E - E0| / |E0| (B,)."""
    energy0 = state.energy()
    worst = torch.zeros_like(energy0)
    step = torch.full((state.batch_size,), dt, dtype=torch.float64)
    for _ in range(steps):
        state = leapfrog_step(state, step)
        worst = torch.maximum(worst, ((state.energy() - energy0) / energy0).abs())
    return state, worst
