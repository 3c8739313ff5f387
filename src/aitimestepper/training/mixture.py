"""The training mixture: which systems Part 1 follows, drawn from the params' families.

Every family of ``params.systems`` with a weight > 0 is split into *sources*, one per spatial
dimension and body count (a planetary spec with 1 to 5 planets gives five body counts); the
training systems are shared among the families by weight and evenly among each family's sources.
Training systems are embedded in 3-D (a planar system with z = 0 stays planar, bit for bit, and
every feature is rotation-invariant), so systems of one body count share a batch (a *lane*)
whatever their family and dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.physics.state import State
from aitimestepper.systems.families import SystemSet
from aitimestepper.systems.specs import FamilySpec


@dataclass(frozen=True)
class Source:
    """Systems of one family, dimension and body count: ``name`` is the mixture's key."""

    name: str
    spec: FamilySpec
    dim: int
    bodies: int

    @property
    def label(self) -> str:
        return f"{self.name}/{self.dim}d/n{self.bodies}"


def embed_in_3d(state: State) -> State:
    """The same systems with D = 3 (z = 0 for a planar system): physically identical."""
    if state.dim == 3:
        return state
    pad = lambda values: torch.nn.functional.pad(values, (0, 3 - state.dim))  # noqa: E731
    external = None if state.external is None else state.external.padded_to_3d()
    return State(
        pad(state.positions),
        pad(state.velocities),
        state.masses,
        pad(state.accelerations),
        state.time,
        state.softening,
        external,
    )


def sources(params: Params) -> list[Source]:
    """Every (family, dimension, body count) of the mixture with a weight > 0, in params order."""
    return [
        Source(name, component, dim, bodies)
        for name, component in params.systems.items()
        if component.weight > 0
        for dim in component.dims
        for bodies in component.body_counts()
    ]


def allocate(params: Params, chosen: list[Source]) -> list[int]:
    """Systems per source: ``training.num_systems`` shared by weight among the families, then
    evenly among each family's sources (largest remainders first; every source gets one)."""
    total = params.training.num_systems
    weights = {name: component.weight for name, component in params.systems.items() if component.weight > 0}
    per_source = []
    for source in chosen:
        siblings = sum(1 for other in chosen if other.name == source.name)
        per_source.append(total * weights[source.name] / sum(weights.values()) / siblings)
    counts = [max(1, math.floor(share)) for share in per_source]
    remainders = sorted(range(len(chosen)), key=lambda k: counts[k] - per_source[k])
    for k in remainders[: max(0, total - sum(counts))]:
        counts[k] += 1
    return counts


class MixtureSampler:
    """Draws training systems source by source from one seeded generator.

    Args:
        params: the settings (``systems``, ``training.num_systems``).
        generator: the trainer's seeded generator (the only randomness used).
    """

    def __init__(self, params: Params, generator: torch.Generator) -> None:
        self.params = params
        self.generator = generator
        self.sources = sources(params)
        self.counts = allocate(params, self.sources)

    def draw(self, source: int, count: int) -> tuple[State, Tensor]:
        """``count`` fresh systems of source ``source``, in 3-D, and their time scales (B,)."""
        chosen = self.sources[source]
        groups = chosen.spec.with_bodies(chosen.bodies).draw(count, self.generator, chosen.dim)
        joined = SystemSet.concatenate(groups) if len(groups) > 1 else groups[0]
        return embed_in_3d(joined.state), joined.time_scale

    def lanes(self) -> dict[int, tuple[State, Tensor, Tensor]]:
        """The first systems of every source, grouped by body count N:
        N -> (3-D states, (B,) time scales, (B,) int64 source indices)."""
        grouped: dict[int, list[tuple[State, Tensor, Tensor]]] = {}
        for index, (source, count) in enumerate(zip(self.sources, self.counts, strict=True)):
            state, time_scale = self.draw(index, count)
            grouped.setdefault(source.bodies, []).append(
                (state, time_scale, torch.full((count,), index, dtype=torch.int64))
            )
        return {
            bodies: (
                State.concatenate([part[0] for part in parts]),
                torch.cat([part[1] for part in parts]),
                torch.cat([part[2] for part in parts]),
            )
            for bodies, parts in sorted(grouped.items())
        }

    def redraw(self, source_index: Tensor) -> tuple[State, Tensor]:
        """Fresh systems for rows whose sources are ``source_index`` (R,), all of one body count:
        (3-D states, (R,) time scales), in the order of the rows."""
        rows, states, scales = [], [], []
        for source in sorted(set(source_index.tolist())):
            chosen = (source_index == source).nonzero().squeeze(1)
            state, time_scale = self.draw(source, chosen.numel())
            rows.append(chosen)
            states.append(state)
            scales.append(time_scale)
        order = torch.cat(rows)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        return State.concatenate(states).select(inverse), torch.cat(scales)[inverse]


def draw_thresholds(params: Params, count: int, generator: torch.Generator) -> Tensor:
    """(count,) float64 training thresholds, log-uniform in [threshold_factor_min,
    threshold_factor_max] x ``energy_threshold`` (no draw when the range is a single value)."""
    training = params.training
    low, high = math.log(training.threshold_factor_min), math.log(training.threshold_factor_max)
    if low == high:
        return torch.full((count,), params.energy_threshold * training.threshold_factor_min, dtype=torch.float64)
    uniform = torch.rand(count, generator=generator, dtype=torch.float64)
    return params.energy_threshold * (low + (high - low) * uniform).exp()
