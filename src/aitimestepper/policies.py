"""Time-step policies: one interface for the classical rules and the learned model.

A policy looks at the current states (and their history) and proposes one time step per
system, in the spirit of diffrax's step-size controllers. Every policy is used with the same
leapfrog step, in simulation, evaluation, training and serving.

Cost convention (one for every policy): each force evaluation counts one, and so does every
pairwise pass a policy makes beyond one look at the state its last force evaluation produced
(positions, velocities, the accelerations just computed): that look is shared with the step, as
a compiled code would fuse it with the force loop. Free-fall, energy-normalised free-fall, PRS23
(jerk and snap from that look) and the learned policy make only that look (its Kepler step
takes trial steps of each of its K candidate pairs alone, O(K) operations per trial, not of the
system: no pairwise pass and no force evaluation); the oracle pays for every trial step; a gated
rollout pays for every rejected try. ``pairwise_passes_per_step``
states it per policy; ``extra_force_evaluations`` is there for a rule that needs more.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from aitimestepper.features import energy_normalised_steps
from aitimestepper.history import History
from aitimestepper.physics.derivatives import prs23_time_scale
from aitimestepper.physics.integrator import leapfrog_step, relative_energy_error
from aitimestepper.physics.state import State


class TimeStepPolicy(ABC):
    """Proposes a time step for each of B systems."""

    #: name under which the policy is chosen in params and on the command line
    name: str
    #: past states the policy reads (0: it needs the current state only)
    history_len: int = 0
    #: pairwise passes (force-evaluation equivalents) a proposal costs beyond the step itself
    #: and the look fused with it (see the module docstring)
    extra_force_evaluations: int = 0

    def new_history(self, state: State) -> History:
        """An empty window of past rows for the systems of ``state`` (``history_len`` slots)."""
        return History.empty(state.batch_size, 0, 0)

    def propose_with_look(self, state: State, history: History) -> tuple[Tensor, Tensor | None]:
        """:meth:`propose`, plus what the policy saw of ``state`` that :meth:`remember` keeps
        once the step is taken (None for policies that read no history)."""
        return self.propose(state, history), None

    def remember(self, history: History, seen: Tensor | None, dt: Tensor, error: Tensor, moved: Tensor) -> History:
        """The window after a step: policies with a history push what they saw of the state with
        the step's (B,) ``dt`` and ``error``, for the systems that ``moved``."""
        return history

    def at_threshold(self, energy_threshold: float) -> TimeStepPolicy:
        """This policy aimed at another energy threshold; rules that do not read one (fixed dt,
        free-fall) are returned unchanged."""
        return self

    def start(self, state: State) -> None:  # noqa: B027 (optional hook)
        """Called once before a rollout of ``state``; stateful policies reset here."""

    def observe(self, dt: Tensor, error: Tensor, moved: Tensor) -> None:  # noqa: B027 (optional hook)
        """Called after every step with the steps taken (B,), their single-step relative energy
        errors (B,) and which systems moved (B,); stateful policies learn from it."""

    @abstractmethod
    def propose(self, state: State, history: History) -> Tensor:
        """Time steps for the systems of ``state``.

        Args:
            state: B systems.
            history: rows of their last ``history_len`` states.

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


class EnergyFreeFall(TimeStepPolicy):
    """dt = eta * min_ij tau_ij (|E| r_ij / (G m_i m_j))**(1/3), the energy-normalised free-fall
    rule: each pair's free-fall time weighted by its share of the system's energy (a pair's
    one-step error grows as (dt / tau)**3 times its binding energy, gated against |E|). Softened
    like the forces; |E| in the centre-of-mass frame. Tune eta per threshold."""

    name = "energy_free_fall"

    def __init__(self, eta: float) -> None:
        if not eta > 0:
            raise ValueError(f"energy free-fall eta must be > 0, got {eta}")
        self.eta = float(eta)

    def propose(self, state: State, history: History) -> Tensor:
        return self.eta * energy_normalised_steps(state).amin(dim=1)


class PRS23(TimeStepPolicy):
    """dt = eta * min_i sqrt(2 |a_i|**2 / (|j_i|**2 + |a_i| |s_i|)), the criterion of Pham, Rein &
    Spiegel (2024), REBOUND's default for IAS15, with the jerk j and snap s of every body computed
    analytically from positions, velocities and the accelerations of the last force evaluation (one
    look at the state, as the learned policy's: no extra pass)."""

    name = "prs23"

    def __init__(self, eta: float) -> None:
        if not eta > 0:
            raise ValueError(f"PRS23 eta must be > 0, got {eta}")
        self.eta = float(eta)

    def propose(self, state: State, history: History) -> Tensor:
        return self.eta * prs23_time_scale(
            state.positions, state.velocities, state.accelerations, state.masses, state.softening
        )


class Oracle(TimeStepPolicy):
    """Greedy oracle: the largest dt whose single step keeps the energy error under a threshold.

    "Largest" means the upper edge of the passing interval that starts at small steps: the
    relative energy error of one step is evaluated on a logarithmic grid of ``grid_points``
    candidates between ``min_fraction`` and ``max_fraction`` of the system's smallest
    energy-normalised free-fall step at the threshold (all systems and candidates in one batched
    pass); the first failing candidate and the one below it bracket the edge, which
    ``bisections`` bisections in log space refine. Isolated lucky windows of passing steps beyond
    the first failure (the one-step error is not monotonic in dt at large steps) are ignored, as
    an integrator cannot rely on them. When the smallest candidate already fails, it is returned
    (and fails the gate).

    Cost: ``trials_per_step = grid_points + bisections`` trial steps (force evaluations) per
    system per step, besides the step itself; a yardstick, not a production integrator. Its
    ``extra_force_evaluations`` is 0 so that rollouts count its steps; the evaluation reports both.
    """

    name = "oracle"

    def __init__(
        self,
        energy_threshold: float,
        grid_points: int = 64,
        min_fraction: float = 1e-4,
        max_fraction: float = 100.0,
        bisections: int = 12,
    ) -> None:
        self.energy_threshold = _valid_threshold(energy_threshold)
        self.grid = torch.logspace(math.log10(min_fraction), math.log10(max_fraction), grid_points, dtype=torch.float64)
        self.bisections = bisections
        self.trials_per_step = grid_points + bisections

    def at_threshold(self, energy_threshold: float) -> Oracle:
        aimed = copy.copy(self)
        aimed.energy_threshold = _valid_threshold(energy_threshold)
        return aimed

    def propose(self, state: State, history: History) -> Tensor:
        with torch.no_grad():
            return self._search(state.detach())

    def _passes(self, state: State, dt: Tensor) -> Tensor:
        """(B,) bool: one step of size dt (B,) from each system keeps the error under the threshold."""
        error = relative_energy_error(state.energy(), leapfrog_step(state, dt).energy())
        return error <= self.energy_threshold

    def _search(self, state: State) -> Tensor:
        batch, points = state.batch_size, self.grid.numel()
        scale = energy_normalised_steps(state).amin(dim=1) * self.energy_threshold ** (1.0 / 3.0)
        candidates = scale.unsqueeze(1) * self.grid.unsqueeze(0)  # (B, P)
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


class EnergyFeedback(TimeStepPolicy):
    """Step-size controller on the energy error (use with gated rollouts: a failing step is
    rejected and retried shorter).

    After a step of dt with error e, the next proposal is
    dt * clamp(safety * (target * threshold / e) ** (1/3), 1/2, 2): leapfrog's one-step error
    grows as dt**3, so this aims at ``target`` times the threshold. The first step is
    ``initial_fraction`` of the system's energy-normalised free-fall step at the threshold.
    """

    name = "energy_feedback"

    def __init__(
        self, energy_threshold: float, target: float = 0.5, safety: float = 0.9, initial_fraction: float = 0.1
    ) -> None:
        if not 0 < target <= 1:
            raise ValueError(f"energy-feedback target must be in (0, 1], got {target}")
        self.energy_threshold = _valid_threshold(energy_threshold)
        self.target, self.safety, self.initial_fraction = float(target), float(safety), float(initial_fraction)
        self.next_dt: Tensor | None = None

    def at_threshold(self, energy_threshold: float) -> EnergyFeedback:
        aimed = copy.copy(self)
        aimed.energy_threshold = _valid_threshold(energy_threshold)
        return aimed

    def start(self, state: State) -> None:
        self.next_dt = None

    def propose(self, state: State, history: History) -> Tensor:
        if self.next_dt is None:
            scale = energy_normalised_steps(state).amin(dim=1) * self.energy_threshold ** (1.0 / 3.0)
            self.next_dt = self.initial_fraction * scale
        return self.next_dt

    def observe(self, dt: Tensor, error: Tensor, moved: Tensor) -> None:
        tiny = torch.finfo(dt.dtype).tiny
        factor = self.safety * (self.target * self.energy_threshold / error.clamp_min(tiny)) ** (1.0 / 3.0)
        proposal = dt * factor.clamp(0.5, 2.0)
        self.next_dt = torch.where(moved & (dt > 0), proposal, self.next_dt)


def _valid_threshold(energy_threshold: float) -> float:
    if not 0 < energy_threshold < 1:
        raise ValueError(f"energy_threshold must be in (0, 1), got {energy_threshold}")
    return float(energy_threshold)


def make_policy(name: str, *, energy_threshold: float, fixed_dt: float, eta: float) -> TimeStepPolicy:
    """A classical policy by name: ``fixed`` (dt = ``fixed_dt``), ``free_fall``,
    ``energy_free_fall`` and ``prs23`` (factor ``eta``), ``energy_feedback`` (aimed at half the
    threshold) or ``oracle``.

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    builders = {
        FixedStep.name: lambda: FixedStep(fixed_dt),
        FreeFall.name: lambda: FreeFall(eta),
        EnergyFreeFall.name: lambda: EnergyFreeFall(eta),
        PRS23.name: lambda: PRS23(eta),
        EnergyFeedback.name: lambda: EnergyFeedback(energy_threshold),
        Oracle.name: lambda: Oracle(energy_threshold),
    }
    if name not in builders:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(builders)}")
    return builders[name]()


CLASSICAL_POLICIES = ("fixed", "free_fall", "energy_free_fall", "prs23", "energy_feedback", "oracle")


def pairwise_passes_per_step(policy: TimeStepPolicy) -> int:
    """Force-evaluation equivalents one accepted step of ``policy`` costs (rejected tries aside)."""
    return 1 + policy.extra_force_evaluations + getattr(policy, "trials_per_step", 0)
