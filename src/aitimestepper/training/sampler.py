"""Draw training systems from the initial-conditions settings, seeded."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.physics import gravity
from aitimestepper.physics.initial_conditions import (
    kepler_binary,
    load_systems,
    sample_kepler_elements,
    virial_cluster,
)
from aitimestepper.physics.state import State


def characteristic_period(state: State) -> Tensor:
    """(B,) a system's orbital time scale: the Kepler period for a bound pair, and in general
    2 pi G M**2.5 / (2 |E|)**1.5 (2 pi times the crossing time), time units."""
    total = state.masses.sum(dim=1)
    energy = state.energy().abs().clamp_min(torch.finfo(torch.float64).tiny)
    return 2.0 * math.pi * gravity.GRAVITATIONAL_CONSTANT * total**2.5 / (2.0 * energy) ** 1.5


def draw_thresholds(params: Params, count: int, generator: torch.Generator) -> Tensor:
    """(count,) float64 training thresholds, log-uniform in [threshold_factor_min,
    threshold_factor_max] x ``energy_threshold`` (no draw when the range is a single value)."""
    training = params.training
    low, high = math.log(training.threshold_factor_min), math.log(training.threshold_factor_max)
    if low == high:
        return torch.full((count,), params.energy_threshold * training.threshold_factor_min, dtype=torch.float64)
    uniform = torch.rand(count, generator=generator, dtype=torch.float64)
    return params.energy_threshold * (low + (high - low) * uniform).exp()


class SystemSampler:
    """Draws systems of the kind given by ``params.initial_conditions``.

    Args:
        params: the settings.
        generator: the trainer's seeded generator (the only randomness used).
    """

    def __init__(self, params: Params, generator: torch.Generator) -> None:
        self.params = params
        self.generator = generator
        conditions = params.initial_conditions
        self._pool = load_systems(conditions.file, params.physics.softening) if conditions.kind == "file" else None

    def draw(self, count: int) -> tuple[State, Tensor]:
        """``count`` fresh systems at time 0 and their periods (B,), time units."""
        conditions, physics = self.params.initial_conditions, self.params.physics
        if conditions.kind == "binary":
            elements = sample_kepler_elements(
                count,
                self.generator,
                eccentricity_range=(conditions.eccentricity_min, conditions.eccentricity_max),
                eccentricity_sampling=conditions.eccentricity_sampling,
                semi_major_axis_range=(conditions.semi_major_axis_min, conditions.semi_major_axis_max),
                mass_ratio_range=(conditions.mass_ratio_min, conditions.mass_ratio_max),
                total_mass=conditions.total_mass,
                start_phase=conditions.start_phase,
            )
            return kepler_binary(elements, dim=physics.dim, softening=physics.softening), elements.period
        if conditions.kind == "cluster":
            state = virial_cluster(
                count,
                conditions.num_bodies,
                self.generator,
                dim=physics.dim,
                total_mass=conditions.total_mass,
                mass_ratio_range=(conditions.mass_ratio_min, conditions.mass_ratio_max),
                softening=physics.softening,
            )
            return state, characteristic_period(state)
        assert self._pool is not None
        index = torch.randint(self._pool.batch_size, (count,), generator=self.generator)
        state = self._pool.select(index)
        return state, characteristic_period(state)
