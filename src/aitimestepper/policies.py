"""Time-step policies: one interface for classical rules and, later, the learned model.

A policy looks at the current states (and their history) and proposes one time step per
system, in the spirit of diffrax's step-size controllers. Every policy is used with the same
leapfrog step, in simulation, evaluation, training and serving.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.physics.integrator import leapfrog_step, relative_energy_error
from aitimestepper.physics.state import State


class TimeStepPolicy(ABC):
    """Proposes a time step for each of B systems."""

    #: name under which the policy is chosen in params and on the command line
    name: str
    #: past states the policy reads (0: it needs the current state only)
    history_len: int = 0

    @abstractmethod
    def propose(self, state: State, history: History) -> Tensor:
        """Time steps for the systems of ``state``.

        Args:
            state: B systems.
            history: their last ``history_len`` states.

        Returns:
            (B,) float64 positive time steps (time units).
        """


class FixedStep(TimeStepPolicy):
    """The same time step ``dt`` for every system at every step."""

    name = "fixed"

    def __init__(self, dt: float) -> None:
        if not dt > 0:
            raise ValueError(f"fixed dt must be > 0, got {dt}")
        self.dt = float(dt)

    def propose(self, state: State, history: History) -> Tensor:
        return torch.full((state.batch_size,), self.dt, dtype=state.positions.dtype, device=state.positions.device)


class FreeFall(TimeStepPolicy):
    """dt = eta * min_ij sqrt(r_ij**3 / (G (m_i + m_j))), the pairwise free-fall criterion.

    With softening, r_ij**2 is replaced by r_ij**2 + eps**2, which bounds dt from below.
    """

    name = "free_fall"

    def __init__(self, eta: float) -> None:
        if not eta > 0:
            raise ValueError(f"free-fall eta must be > 0, got {eta}")
        self.eta = float(eta)

    def propose(self, state: State, history: History) -> Tensor:
        return self.eta * state.free_fall_time()


class Oracle(TimeStepPolicy):
    """Greedy oracle: the largest dt whose single step keeps the energy error under a threshold.

    "Largest" means the upper edge of the passing interval that starts at small steps: the
    relative energy error of one step is evaluated on a logarithmic grid of ``grid_points``
    candidates between ``min_fraction`` and ``max_fraction`` of the free-fall time (all systems
    and candidates in one batched pass); the first failing candidate and the one below it bracket
    the edge, which ``bisections`` bisections in log space refine. Isolated lucky windows of
    passing steps beyond the first failure (the one-step error is not monotonic in dt at large
    steps) are ignored, as an integrator cannot rely on them. When the smallest candidate already
    fails, it is returned (and fails the gate).

    Cost: ``grid_points + bisections`` force evaluations per system per step; a yardstick, not a
    production integrator.
    """

    name = "oracle"

    def __init__(
        self,
        energy_threshold: float,
        grid_points: int = 64,
        min_fraction: float = 1e-6,
        max_fraction: float = 2.0,
        bisections: int = 12,
    ) -> None:
        if not 0 < energy_threshold < 1:
            raise ValueError(f"energy_threshold must be in (0, 1), got {energy_threshold}")
        self.energy_threshold = float(energy_threshold)
        self.grid = torch.logspace(math.log10(min_fraction), math.log10(max_fraction), grid_points, dtype=torch.float64)
        self.bisections = bisections

    def propose(self, state: State, history: History) -> Tensor:
        with torch.no_grad():
            return self._search(state.detach())

    def _passes(self, state: State, dt: Tensor) -> Tensor:
        """(B,) bool: one step of size dt (B,) from each system keeps the error under the threshold."""
        error = relative_energy_error(state.energy(), leapfrog_step(state, dt).energy())
        return error <= self.energy_threshold

    def _search(self, state: State) -> Tensor:
        batch, points = state.batch_size, self.grid.numel()
        candidates = state.free_fall_time().unsqueeze(1) * self.grid.unsqueeze(0)  # (B, P)
        passing = self._passes(state.repeat_interleave(points), candidates.flatten()).view(batch, points)
        index = torch.arange(points).expand(batch, points)
        first_failure = torch.where(passing, torch.full_like(index, points), index).amin(dim=1)
        refine = (first_failure > 0) & (first_failure < points)
        low = candidates.gather(1, (first_failure - 1).clamp(0, points - 1).unsqueeze(1)).squeeze(1)
        high = candidates.gather(1, first_failure.clamp_max(points - 1).unsqueeze(1)).squeeze(1)
        for _ in range(self.bisections):
            middle = (low * high).sqrt()
            ok = self._passes(state, middle)
            low = torch.where(refine & ok, middle, low)
            high = torch.where(refine & ~ok, middle, high)
        return low


def make_policy(name: str, *, energy_threshold: float, fixed_dt: float, eta: float) -> TimeStepPolicy:
    """A classical policy by name (``fixed``, ``free_fall`` or ``oracle``).

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    builders = {
        FixedStep.name: lambda: FixedStep(fixed_dt),
        FreeFall.name: lambda: FreeFall(eta),
        Oracle.name: lambda: Oracle(energy_threshold),
    }
    if name not in builders:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(builders)}")
    return builders[name]()
