"""Params of the named families of systems: one validated spec per family, and what it draws.

A spec names its ``family`` and gives the ranges its systems are drawn from; the same specs
describe the training mixture (with a ``weight``), the validation and tuning systems, the held-out
evaluation suite (with a count and a duration) and the simulate stage. Ranges are ``[low, high]``
pairs; angles are in degrees; lengths are in the family's own units (binaries: a ~ 1; triples,
clusters: Henon units, virial radius 1; planetary systems: the inner planet's a = 1).
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from aitimestepper.systems import families
from aitimestepper.systems.families import SystemSet

Dimension = Literal[2, 3]
Range = tuple[float, float]


class FamilySpec(BaseModel):
    """What every family spec has: its name and the spatial dimensions it is drawn in."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    family: str = Field(
        description="The family's name: binary, hierarchical_triple, democratic_triple, planetary, plummer, tidal."
    )
    dims: tuple[Dimension, ...] = Field((2, 3), min_length=1, description="Spatial dimensions systems are drawn in.")
    #: the body count of families whose systems all have the same N
    bodies_fixed: ClassVar[int] = 0
    #: fields that are lists, not [low, high] ranges
    _lists: ClassVar[frozenset[str]] = frozenset({"dims", "bodies"})

    @model_validator(mode="after")
    def _ranges_ordered(self) -> FamilySpec:
        for name, value in self:
            if isinstance(value, tuple) and len(value) == 2 and name not in self._lists and value[0] > value[1]:
                raise ValueError(f"{name} = {list(value)}: the low end must be <= the high end")
        return self

    def ranges(self) -> dict[str, Any]:
        """The generator's keyword arguments (everything but family, dims and the entry's own keys)."""
        own = set(FamilySpec.model_fields) | set(getattr(self, "entry_keys", ()))
        return {name: value for name, value in self if name not in own}

    def draw(self, count: int, generator: torch.Generator, dim: int) -> list[SystemSet]:
        """``count`` systems in ``dim`` dimensions, one :class:`SystemSet` per body count."""
        return families.draw(self.family, count, generator, dim=dim, **self.ranges())

    def draw_all_dims(self, count: int, generator: torch.Generator) -> list[SystemSet]:
        """``count`` systems in each of ``dims``, drawn in that order from ``generator``."""
        return [group for dim in self.dims for group in self.draw(count, generator, dim)]

    def body_counts(self) -> tuple[int, ...]:
        """The body counts N this spec draws."""
        return (self.bodies_fixed,)

    def with_bodies(self, bodies: int) -> FamilySpec:
        """This spec restricted to systems of ``bodies`` bodies (one of :meth:`body_counts`)."""
        if bodies not in self.body_counts():
            raise ValueError(f"a {self.family} spec draws {self.body_counts()} bodies, not {bodies}")
        return self


class BinarySpec(FamilySpec):
    """Kepler binaries (in 3-D isotropically oriented)."""

    family: Literal["binary"] = "binary"
    bodies_fixed: ClassVar[int] = 2
    eccentricity: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.0, 0.995), description="Eccentricity range, in [0, 1)."
    )
    eccentricity_sampling: Literal["uniform", "log_one_minus_e"] = Field(
        "log_one_minus_e", description="Draw e uniformly, or 1 - e log-uniformly (eccentric orbits well covered)."
    )
    semi_major_axis: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = Field(
        (0.8, 1.2), description="Semi-major axis range."
    )
    mass_ratio: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        (0.1, 1.0), description="Mass ratio q = m2 / m1 range, in (0, 1]."
    )
    start_phase: Literal["pericenter", "apocenter", "random", "random_true_anomaly"] = Field(
        "random_true_anomaly", description="Start: fixed, uniform in time, or uniform in true anomaly."
    )


class HierarchicalTripleSpec(FamilySpec):
    """An inner binary and a third body on a wide outer orbit (Mardling-Aarseth stable)."""

    family: Literal["hierarchical_triple"] = "hierarchical_triple"
    bodies_fixed: ClassVar[int] = 3
    period_ratio: tuple[Annotated[float, Field(ge=2.0)], Annotated[float, Field(ge=2.0)]] = Field(
        (10.0, 1000.0), description="Outer / inner period range (log-uniform)."
    )
    inner_eccentricity: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.0, 0.9), description="Inner eccentricity range."
    )
    outer_eccentricity: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.0, 0.5), description="Outer eccentricity range."
    )
    inner_mass_ratio: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        (0.1, 1.0), description="Inner mass ratio m2 / m1 range."
    )
    outer_mass_ratio: tuple[Annotated[float, Field(gt=0.0, le=10.0)], Annotated[float, Field(gt=0.0, le=10.0)]] = Field(
        (0.1, 1.0), description="Third mass / inner binary mass range."
    )
    mutual_inclination: tuple[Annotated[float, Field(ge=0.0, le=180.0)], Annotated[float, Field(ge=0.0, le=180.0)]] = (
        Field((0.0, 180.0), description="Mutual inclination range in degrees (3-D; 2-D: pro- or retrograde).")
    )


class DemocraticTripleSpec(FamilySpec):
    """Three comparable bodies in virial equilibrium (Henon units), softened or not."""

    family: Literal["democratic_triple"] = "democratic_triple"
    bodies_fixed: ClassVar[int] = 3
    softening: tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        (0.0, 0.05), description="Plummer softening range (virial radii); [0, 0] gives unsoftened encounters."
    )
    mass_spread: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        (0.5, 1.0), description="Masses proportional to uniform draws in this range."
    )


class PlanetarySpec(FamilySpec):
    """A star and 1 to 5 planets spaced by mutual Hill radii."""

    family: Literal["planetary"] = "planetary"
    planets: tuple[Annotated[int, Field(ge=1, le=8)], Annotated[int, Field(ge=1, le=8)]] = Field(
        (1, 5), description="Number of planets range (uniform)."
    )
    planet_mass: tuple[Annotated[float, Field(gt=0.0, le=0.1)], Annotated[float, Field(gt=0.0, le=0.1)]] = Field(
        (1e-6, 1e-2), description="Planet / star mass ratio range (log-uniform)."
    )
    eccentricity: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.0, 0.3), description="Planet eccentricity range."
    )
    hill_spacing: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = Field(
        (10.0, 14.0), description="Spacing of successive planets in mutual Hill radii."
    )
    inclination: tuple[Annotated[float, Field(ge=0.0, le=90.0)], Annotated[float, Field(ge=0.0, le=90.0)]] = Field(
        (0.0, 5.0), description="Planet inclination range in degrees (3-D)."
    )

    def body_counts(self) -> tuple[int, ...]:
        return tuple(range(self.planets[0] + 1, self.planets[1] + 2))

    def with_bodies(self, bodies: int) -> FamilySpec:
        super().with_bodies(bodies)
        return self.model_copy(update={"planets": (bodies - 1, bodies - 1)})


class PlummerSpec(FamilySpec):
    """Small clusters drawn from a Plummer sphere (Henon units), softened or not."""

    family: Literal["plummer"] = "plummer"
    bodies: tuple[Annotated[int, Field(ge=3, le=64)], ...] = Field(
        (4, 8, 16, 32), min_length=1, description="Body counts N, one drawn uniformly per system."
    )
    softening: tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        (0.0, 0.1), description="Plummer softening range (virial radii)."
    )

    def body_counts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.bodies)))

    def with_bodies(self, bodies: int) -> FamilySpec:
        super().with_bodies(bodies)
        return self.model_copy(update={"bodies": (bodies,)})


class TidalSpec(FamilySpec):
    """Binaries and small clusters in the tidal field of a point-mass host, static or on a
    circular orbit, at a drawn fraction of their Jacobi radius."""

    family: Literal["tidal"] = "tidal"
    bodies: tuple[Annotated[int, Field(ge=2, le=64)], ...] = Field(
        (2, 4, 8),
        min_length=1,
        description="Body counts N (2: binaries, more: Plummer clusters), one drawn per system.",
    )
    jacobi_fraction: tuple[Annotated[float, Field(gt=0.0, le=10.0)], Annotated[float, Field(gt=0.0, le=10.0)]] = Field(
        (0.1, 0.8), description="Size over Jacobi radius range (log-uniform): the field's strength."
    )
    host_mass_ratio: tuple[Annotated[float, Field(ge=1.0)], Annotated[float, Field(ge=1.0)]] = Field(
        (1e3, 1e6), description="Host mass over the system's mass range (log-uniform)."
    )
    orbits: tuple[Literal["static", "circular"], ...] = Field(
        ("static", "circular"), min_length=1, description="Host orbits drawn from (uniformly)."
    )
    eccentricity: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.0, 0.7), description="Binaries' eccentricity range."
    )
    softening: tuple[Annotated[float, Field(ge=0.0, le=0.5)], Annotated[float, Field(ge=0.0, le=0.5)]] = Field(
        (0.0, 0.05), description="Clusters' Plummer softening range (virial radii)."
    )
    _lists: ClassVar[frozenset[str]] = frozenset({"dims", "bodies", "orbits"})

    def body_counts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.bodies)))

    def with_bodies(self, bodies: int) -> FamilySpec:
        super().with_bodies(bodies)
        return self.model_copy(update={"bodies": (bodies,)})


SPECS: tuple[type[FamilySpec], ...] = (
    BinarySpec,
    HierarchicalTripleSpec,
    DemocraticTripleSpec,
    PlanetarySpec,
    PlummerSpec,
    TidalSpec,
)
FAMILY_NAMES = tuple(spec.model_fields["family"].default for spec in SPECS)


def _with_fields(base: type[FamilySpec], suffix: str, **fields: Any) -> type[FamilySpec]:
    """``base`` with the extra ``fields`` of an entry, which :meth:`FamilySpec.ranges` leaves out;
    a module attribute of its own name, so that it pickles."""
    name = f"{base.__name__.removesuffix('Spec')}{suffix}"
    model = create_model(name, __base__=base, __module__=__name__, **fields)
    model.entry_keys = tuple(fields)
    globals()[name] = model
    return model


def _union(suffix: str, **fields: Any) -> Any:
    members = tuple(_with_fields(spec, suffix, **fields) for spec in SPECS)
    return Annotated[functools.reduce(operator.or_, members), Field(discriminator="family")]


#: a family in the training mixture: its spec plus the weight of its share of the training systems
MixtureComponent = _union(
    "Component", weight=(float, Field(1.0, ge=0.0, le=1000.0, description="Share of the training systems."))
)
#: a family of the held-out suite (or the simulate stage): its spec, systems per dimension, duration
SuiteEntry = _union(
    "Entry",
    systems=(int, Field(8, ge=1, le=10_000, description="Systems per dimension.")),
    duration=(float, Field(10.0, gt=0.0, le=1e6, description="Duration in time scales (periods, crossing times).")),
)
