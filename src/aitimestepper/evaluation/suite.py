"""The held-out suite: every family of ``evaluation.suite``, drawn from ``evaluation.seed``, and the
training-seed systems the classical baselines of each family are tuned on.

Each family is drawn in each of its dimensions (``systems`` per dimension) and run for its
``duration`` in time scales (periods of binaries, inner periods of hierarchical triples and
planetary systems, crossing times of triples and clusters); costs are counted per time scale.
Each family gets its own generator (seeded from the family's name and the seed), so adding or
changing one family leaves the systems of the others unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from aitimestepper.config import Params
from aitimestepper.systems.families import SystemSet
from aitimestepper.systems.specs import FamilySpec


@dataclass(frozen=True)
class Family:
    """One family of the suite: its ``name``, ``spec``, systems grouped by (N, D) and the
    ``duration`` of each run in time scales."""

    name: str
    spec: FamilySpec
    groups: list[SystemSet]
    duration: float

    @property
    def size(self) -> int:
        return sum(group.state.batch_size for group in self.groups)


def family_generator(name: str, seed: int) -> torch.Generator:
    """A generator of its own for family ``name`` under ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def suite(params: Params) -> list[Family]:
    """The held-out families, drawn from ``evaluation.seed``."""
    return [
        Family(
            name,
            entry,
            entry.draw_all_dims(entry.systems, family_generator(name, params.evaluation.seed)),
            entry.duration,
        )
        for name, entry in params.evaluation.suite.items()
    ]


def tuning_family(params: Params, family: Family) -> Family:
    """Training-seed systems like those of ``family`` (``evaluation.tuning_systems`` per
    dimension, ``evaluation.tuning_duration`` time scales): what the classical rules are tuned on."""
    generator = family_generator(family.name, params.seed)
    groups = family.spec.draw_all_dims(params.evaluation.tuning_systems, generator)
    return Family(family.name, family.spec, groups, params.evaluation.tuning_duration)


def scaled_family(family: Family, length: float, mass: float) -> Family:
    """``family`` with every system scaled by ``length`` and ``mass`` (same dynamics in
    dimensionless units: a scale-free policy takes the same steps)."""
    return Family(
        f"{family.name}@L{length:g},M{mass:g}",
        family.spec,
        [group.scaled(length, mass) for group in family.groups],
        family.duration,
    )
