"""Named few-body families of initial conditions, each with its characteristic time.

The one place that builds systems for training, selection, tuning, evaluation, simulation and
tests. Every generator has the signature ``f(count, generator, *, dim, ...ranges...)`` and
returns one :class:`SystemSet` per distinct body count N present (most families have a single
N). Conventions shared by all families:

- Units: G = 1; float64 everywhere; angles in radians unless a name ends in ``_deg``.
- Every random draw comes from the ``torch.Generator`` passed in, in a fixed order, so a seed
  fixes the systems (batched draws, no per-system Python loops).
- Every system is centred on its centre of mass with zero total momentum, and its masses sum to
  ``total_mass`` (default 1).
- A range is a ``(low, high)`` pair drawn uniformly unless the argument says otherwise; a range
  with low == high gives that value. Bad ranges are refused with a ValueError naming the
  argument, its value and the rule it breaks.
- ``time_scale`` is the characteristic time each system's cost is counted in: the (inner)
  orbital period for Kepler-like families, the crossing time G M**2.5 / (2 |E|)**1.5 for
  virialized ones.
- ``labels`` are per-system JSON-ready dicts (str, int and float values only) holding the drawn
  parameters in the family's own units and a ``family`` key; a scaled copy adds its units as
  ``length_unit`` and ``mass_unit``.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from aitimestepper.physics import gravity
from aitimestepper.physics.external import ORBITS, TidalField
from aitimestepper.physics.state import DTYPE, State, total_accelerations
from aitimestepper.systems.kepler import KeplerElements, mean_anomaly_from_true, period, relative_orbit, two_body_frame

EccentricitySampling = Literal["uniform", "log_one_minus_e"]
StartPhase = Literal["pericenter", "apocenter", "random", "random_true_anomaly"]
Orientation = Literal["random", "fixed"]
Range = tuple[float, float]

START_PHASES = ("pericenter", "apocenter", "random", "random_true_anomaly")
FIXED_PHASES = {"pericenter": 0.0, "apocenter": math.pi}
ECCENTRICITY_SAMPLINGS = ("uniform", "log_one_minus_e")
ORIENTATIONS = ("random", "fixed")

# Rejection rounds before a draw is declared impossible for the given ranges. Each round redraws
# only the rejected systems, so with any sensible range a handful of rounds suffice.
MAX_REJECTION_ROUNDS = 1000
# Gibbs sweeps over the planets of a system drawing eccentricities without orbit crossing (see
# _no_crossing_eccentricities); the chain mixes within a few sweeps, this is a wide margin.
ECCENTRICITY_SWEEPS = 50
# Bisection halvings of the length scale that sets E = -1/4 with softening: 2**-100 of the bracket.
BISECTION_STEPS = 100
# Planetary systems: the Hill-spacing rule a_{k+1} - a_k = Delta R_H is solvable only while
# Delta h / 2 < 1 (h the reduced mutual Hill radius); near that limit a_{k+1} / a_k diverges.
# Adjacent orbits are kept within this ratio by redrawing the outer planet's mass and Delta.
MAX_ADJACENT_AXIS_RATIO = 10.0
# Plummer spheres are cut at this many scale radii.
PLUMMER_CUT_RADIUS = 10.0
# Chenciner & Montgomery (2000) figure-eight, as given by Simo.
FIGURE_EIGHT_POSITION = (0.97000436, -0.24308753)
FIGURE_EIGHT_VELOCITY = (-0.93240737, -0.86473146)
FIGURE_EIGHT_PERIOD = 6.32591398


@dataclass(frozen=True)
class SystemSet:
    """B systems of one family with N bodies in D dimensions, their time scales and labels.

    Attributes:
        family: family name (see ``FAMILIES``; named problems carry their own name; sets of
            several families joined by :meth:`concatenate` carry the names joined by ``+``).
        state: (B, N, D) systems at time 0.
        time_scale: (B,) float64 characteristic time of each system (orbital period or
            crossing time), time units; costs are counted per time scale.
        labels: B JSON-ready dicts of each system's parameters (str, int, float values).
    """

    family: str
    state: State
    time_scale: Tensor
    labels: list[dict[str, Any]]

    def __post_init__(self) -> None:
        batch = self.state.batch_size
        if tuple(self.time_scale.shape) != (batch,):
            raise ValueError(f"time_scale must have shape ({batch},), got {tuple(self.time_scale.shape)}")
        if len(self.labels) != batch:
            raise ValueError(f"labels must hold one dict per system ({batch}), got {len(self.labels)}")

    def __len__(self) -> int:
        return self.state.batch_size

    @property
    def batch_size(self) -> int:
        """Number of systems B."""
        return self.state.batch_size

    @property
    def num_bodies(self) -> int:
        """Bodies per system N."""
        return self.state.num_bodies

    @property
    def dim(self) -> int:
        """Spatial dimension D."""
        return self.state.dim

    def scaled(self, length: float, mass: float) -> SystemSet:
        """The same systems in other units: the same dynamics in dimensionless units.

        Positions and softening are multiplied by L, masses by M, velocities by sqrt(M / L),
        accelerations by M / L**2, times and time scales by sqrt(L**3 / M) (G = 1 throughout); a
        tidal field's host with them.

        Args:
            length: L > 0, the new length of one old length unit.
            mass: M > 0, the new mass of one old mass unit.

        Returns:
            A new set; labels gain (or multiply) ``length_unit`` and ``mass_unit``.

        Raises:
            ValueError: L or M not finite and > 0.
        """
        for name, value in (("length", length), ("mass", mass)):
            if not (_is_real(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value!r} is invalid: needs a finite number > 0")
        time = math.sqrt(length**3 / mass)
        state = self.state
        positions = state.positions * length
        masses = state.masses * mass
        softening = state.softening * length
        external = None if state.external is None else state.external.scaled(length, mass)
        scaled_state = State(
            positions=positions,
            velocities=state.velocities * math.sqrt(mass / length),
            masses=masses,
            accelerations=total_accelerations(positions, masses, softening, external, state.time * time),
            time=state.time * time,
            softening=softening,
            external=external,
        )
        labels = [
            {
                **label,
                "length_unit": float(label.get("length_unit", 1.0)) * length,
                "mass_unit": float(label.get("mass_unit", 1.0)) * mass,
            }
            for label in self.labels
        ]
        return SystemSet(self.family, scaled_state, self.time_scale * time, labels)

    @staticmethod
    def concatenate(sets: Sequence[SystemSet]) -> SystemSet:
        """Join sets of equal N and D along the batch axis.

        Returns:
            One set; its family is the common family name, or the distinct names joined by
            ``+`` in order of appearance (each label keeps its own ``family``).

        Raises:
            ValueError: no sets, or sets of different N or D.
        """
        if not sets:
            raise ValueError("concatenate needs at least one SystemSet")
        shapes = {(s.num_bodies, s.dim) for s in sets}
        if len(shapes) > 1:
            raise ValueError(f"concatenate needs sets of equal (N, D), got {sorted(shapes)}")
        families = list(dict.fromkeys(s.family for s in sets))
        return SystemSet(
            family="+".join(families),
            state=State.concatenate([s.state for s in sets]),
            time_scale=torch.cat([s.time_scale for s in sets]),
            labels=[label for s in sets for label in s.labels],
        )

    def select(self, index: int | slice | Sequence[int] | Tensor) -> SystemSet:
        """The systems picked by ``index``: an int, a slice, a list of ints, a (B,) bool mask or
        a 1-D index tensor. Always returns a set (an int picks a set of one system)."""
        positions = torch.arange(self.batch_size)[index].reshape(-1)
        return SystemSet(
            family=self.family,
            state=self.state.select(positions),
            time_scale=self.time_scale[positions],
            labels=[self.labels[i] for i in positions.tolist()],
        )


def crossing_time(state: State) -> Tensor:
    """Crossing time G M**2.5 / (2 |E|)**1.5 of each system (2 sqrt(2) in Henon units).

    Args:
        state: B systems (their own energy, with their softening; a tidal field's terms aside).

    Returns:
        (B,) float64 crossing times, time units. |E| is floored at the smallest positive normal
        float64 and so is (2 |E|)**1.5 (which would underflow to 0), so E = 0 gives a huge
        finite time, never inf or NaN.
    """
    tiny = torch.finfo(DTYPE).tiny
    total_mass = state.masses.sum(dim=-1)
    own = gravity.total_energy(state.positions, state.velocities, state.masses, state.softening)
    energy = own.abs().clamp_min(tiny)
    return gravity.GRAVITATIONAL_CONSTANT * total_mass**2.5 / ((2.0 * energy) ** 1.5).clamp_min(tiny)


# ----------------------------------------------------------------------------------------------
# binaries


def binaries(
    count: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    eccentricity: Range = (0.0, 0.95),
    eccentricity_sampling: EccentricitySampling = "uniform",
    semi_major_axis: Range = (0.8, 1.2),
    mass_ratio: Range = (0.1, 1.0),
    start_phase: StartPhase = "random",
    orientation: Orientation = "random",
    total_mass: float = 1.0,
) -> list[SystemSet]:
    """Kepler binaries (N = 2); time scale: the orbital period.

    Args:
        count: number of binaries B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        eccentricity: (low, high), 0 <= low <= high < 1.
        eccentricity_sampling: ``uniform`` in e, or ``log_one_minus_e`` (log-uniform in 1 - e,
            which resolves very eccentric orbits).
        semi_major_axis: (low, high), 0 < low <= high, length units.
        mass_ratio: q = m2 / m1, 0 < low <= high <= 1.
        start_phase: ``pericenter``, ``apocenter``, ``random`` (uniform in mean anomaly, i.e. in time)
            or ``random_true_anomaly`` (uniform in true anomaly: near the density of steps of an
            adaptive integrator, which spends many steps near pericenter).
        orientation: ``random``: in 3-D isotropic (cos i uniform in [-1, 1], Omega and omega
            uniform), in 2-D a uniform in-plane angle and a prograde/retrograde coin flip;
            ``fixed``: pericenter on +x, prograde in the x-y plane (no draws).
        total_mass: m1 + m2 > 0 of every binary.

    Returns:
        One set, family ``binary``, state (B, 2, dim); labels e, a, q, start, mean_anomaly,
        inclination_deg.
    """
    _check_common(count, generator, dim, total_mass)
    _check_choice("eccentricity_sampling", eccentricity_sampling, ECCENTRICITY_SAMPLINGS)
    _check_choice("start_phase", start_phase, START_PHASES)
    _check_choice("orientation", orientation, ORIENTATIONS)
    e_low, e_high = _check_range("eccentricity", eccentricity, "0 <= low <= high < 1", _in(0, 1, True))
    a_range = _check_range("semi_major_axis", semi_major_axis, "0 < low <= high", _positive)
    q_range = _check_range("mass_ratio", mass_ratio, "0 < low <= high <= 1", _in(0, 1, False, True))

    if eccentricity_sampling == "uniform":
        e = _uniform(generator, (count,), e_low, e_high)
    else:
        e = 1.0 - _uniform(generator, (count,), math.log1p(-e_high), math.log1p(-e_low)).exp()
    a = _uniform(generator, (count,), *a_range)
    q = _uniform(generator, (count,), *q_range)
    if start_phase in FIXED_PHASES:
        mean_anomaly = torch.full((count,), FIXED_PHASES[start_phase], dtype=DTYPE)
    elif start_phase == "random":
        mean_anomaly = _uniform(generator, (count,), 0.0, 2.0 * math.pi)
    else:
        mean_anomaly = mean_anomaly_from_true(_uniform(generator, (count,), 0.0, 2.0 * math.pi), e)
    zeros = torch.zeros(count, dtype=DTYPE)
    inclination, node, pericenter = zeros, zeros, zeros
    if orientation == "random":
        if dim == 3:
            inclination = torch.acos(_uniform(generator, (count,), -1.0, 1.0))
            node = _uniform(generator, (count,), 0.0, 2.0 * math.pi)
        else:
            inclination = math.pi * _coin(generator, count)
        pericenter = _uniform(generator, (count,), 0.0, 2.0 * math.pi)
    elements = KeplerElements(
        e, a, torch.full_like(e, float(total_mass)), q, mean_anomaly, inclination, node, pericenter
    )
    state = _binary_state(elements, dim)
    labels = _labels(
        "binary",
        e=e,
        a=a,
        q=q,
        start=[start_phase] * count,
        mean_anomaly=mean_anomaly,
        inclination_deg=torch.rad2deg(inclination),
    )
    return [SystemSet("binary", state, elements.period, labels)]


def binary_grid(
    eccentricities: Sequence[float],
    starts: Sequence[str | float],
    mass_ratios: Sequence[float],
    dim: int = 2,
    *,
    semi_major_axis: float = 1.0,
    total_mass: float = 1.0,
) -> SystemSet:
    """The deterministic grid of binaries used by the evaluation: every combination.

    Orientation is fixed (pericenter on +x, prograde in the x-y plane). The order is mass ratio
    slowest, then start, then eccentricity fastest.

    Args:
        eccentricities: values in [0, 1).
        starts: ``pericenter``, ``apocenter``, or a mean anomaly in radians.
        mass_ratios: q = m2 / m1 in (0, 1].
        dim: 2 or 3.
        semi_major_axis: a > 0 of every binary, length units.
        total_mass: m1 + m2 > 0 of every binary.

    Returns:
        A set of len(mass_ratios) * len(starts) * len(eccentricities) binaries, family
        ``binary``, labels e, start, q, a, total_mass; time scale the period.
    """
    _check_dim(dim)
    _check_positive("semi_major_axis", semi_major_axis)
    _check_positive("total_mass", total_mass)
    for name, values in (("eccentricities", eccentricities), ("starts", starts), ("mass_ratios", mass_ratios)):
        if len(values) == 0:
            raise ValueError(f"{name} must not be empty")
    for value in eccentricities:
        _check_number("eccentricities", value, "each 0 <= e < 1", lambda x: 0 <= x < 1)
    for value in mass_ratios:
        _check_number("mass_ratios", value, "each 0 < q <= 1", lambda x: 0 < x <= 1)
    phases = []
    for value in starts:
        if isinstance(value, str):
            if value not in FIXED_PHASES:
                raise ValueError(f"starts: {value!r} is invalid: needs one of {sorted(FIXED_PHASES)} or a number")
            phases.append(FIXED_PHASES[value])
        else:
            _check_number("starts", value, "a finite mean anomaly in radians", math.isfinite)
            phases.append(float(value))
    grid = list(itertools.product(range(len(mass_ratios)), range(len(starts)), range(len(eccentricities))))
    q = torch.tensor([float(mass_ratios[i]) for i, _, _ in grid], dtype=DTYPE)
    mean_anomaly = torch.tensor([phases[j] for _, j, _ in grid], dtype=DTYPE)
    e = torch.tensor([float(eccentricities[k]) for _, _, k in grid], dtype=DTYPE)
    ones = torch.ones_like(e)
    elements = KeplerElements(e, semi_major_axis * ones, total_mass * ones, q, mean_anomaly)
    labels = [
        {
            "family": "binary",
            "e": float(eccentricities[k]),
            "start": starts[j] if isinstance(starts[j], str) else float(starts[j]),
            "q": float(mass_ratios[i]),
            "a": float(semi_major_axis),
            "total_mass": float(total_mass),
        }
        for i, j, k in grid
    ]
    return SystemSet("binary", _binary_state(elements, dim), elements.period, labels)


# ----------------------------------------------------------------------------------------------
# hierarchical triples


def mardling_aarseth_limit(outer_mass_ratio: Tensor, outer_eccentricity: Tensor, inclination_deg: Tensor) -> Tensor:
    """Smallest stable a_out / a_in of a hierarchical triple (Mardling & Aarseth 2001).

    2.8 (1 + q_out)**(2/5) (1 + e_out)**(2/5) (1 - e_out)**(-6/5) (1 - 0.3 i / 180 deg).

    Args:
        outer_mass_ratio: (B,) q_out = m3 / (m1 + m2).
        outer_eccentricity: (B,) e_out in [0, 1).
        inclination_deg: (B,) mutual inclination i, degrees in [0, 180].

    Returns:
        (B,) float64 critical ratios of semi-major axes.
    """
    return (
        2.8
        * (1.0 + outer_mass_ratio) ** 0.4
        * (1.0 + outer_eccentricity) ** 0.4
        * (1.0 - outer_eccentricity) ** -1.2
        * (1.0 - 0.3 * inclination_deg / 180.0)
    )


def hierarchical_triples(
    count: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    inner_eccentricity: Range = (0.0, 0.9),
    inner_mass_ratio: Range = (0.1, 1.0),
    outer_eccentricity: Range = (0.0, 0.5),
    outer_mass_ratio: Range = (0.1, 1.0),
    period_ratio: Range = (10.0, 1000.0),
    mutual_inclination: Range = (0.0, 180.0),
    total_mass: float = 1.0,
) -> list[SystemSet]:
    """An inner binary (a_in = 1) and a third body on a wide outer orbit around its centre of mass.

    Drawn: e_in, q_in = m2 / m1, e_out, q_out = m3 / (m1 + m2), the period ratio P_out / P_in
    (log-uniform) and the mutual inclination (3-D: isotropic within the range, i.e. cos i
    uniform; 2-D: coplanar, prograde or retrograde by a coin flip). Draws breaking the
    Mardling & Aarseth (2001) stability criterion (:func:`mardling_aarseth_limit`) are redrawn
    in vectorized rejection rounds, so the drawn distribution is the one conditioned on
    stability. Then random phases (mean anomalies) and pericenter directions, and in 3-D a
    uniformly random rotation of the whole system.

    Args:
        count: number of triples B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        inner_eccentricity: 0 <= low <= high < 1.
        inner_mass_ratio: 0 < low <= high <= 1.
        outer_eccentricity: 0 <= low <= high < 1.
        outer_mass_ratio: 0 < low <= high.
        period_ratio: 1 < low <= high, P_out / P_in.
        mutual_inclination: mutual inclination, 0 <= low <= high <= 180 degrees (3-D only).
        total_mass: m1 + m2 + m3 > 0.

    Returns:
        One set, family ``hierarchical_triple``, state (B, 3, dim) (bodies 0 and 1 the inner
        binary); time scale the inner period; labels period_ratio, e_in, e_out,
        inclination_deg, q_in, q_out, a_out (in units of a_in) and stability_margin
        (a_out / a_in over the Mardling-Aarseth limit, > 1).

    Raises:
        ValueError: bad ranges, or ranges with no stable triple at all.
    """
    _check_common(count, generator, dim, total_mass)
    e_in_range = _check_range("inner_eccentricity", inner_eccentricity, "0 <= low <= high < 1", _in(0, 1, True))
    q_in_range = _check_range("inner_mass_ratio", inner_mass_ratio, "0 < low <= high <= 1", _in(0, 1, False, True))
    e_out_range = _check_range("outer_eccentricity", outer_eccentricity, "0 <= low <= high < 1", _in(0, 1, True))
    q_out_range = _check_range("outer_mass_ratio", outer_mass_ratio, "0 < low <= high", _positive)
    ratio_range = _check_range("period_ratio", period_ratio, "1 < low <= high", lambda lo, hi: lo > 1)
    incl_range = _check_range(
        "mutual_inclination", mutual_inclination, "0 <= low <= high <= 180", lambda lo, hi: lo >= 0 and hi <= 180
    )
    # the most stable corner: widest orbit, lightest and most circular third body, most retrograde
    best_inclination = incl_range[1] if dim == 3 else 180.0
    best = _scalar(mardling_aarseth_limit, q_out_range[0], e_out_range[0], best_inclination)
    if _outer_axis_ratio(ratio_range[1], q_out_range[0]) <= best:
        raise ValueError(
            f"period_ratio = {period_ratio!r} admits no stable triple with outer_mass_ratio = "
            f"{outer_mass_ratio!r} and outer_eccentricity = {outer_eccentricity!r}: even the "
            f"widest outer orbit breaks the Mardling-Aarseth criterion a_out / a_in > {best:.3g}"
        )
    cos_range = (math.cos(math.radians(incl_range[1])), math.cos(math.radians(incl_range[0])))

    def draw_parameters(n: int) -> dict[str, Tensor]:
        parameters = {
            "e_in": _uniform(generator, (n,), *e_in_range),
            "q_in": _uniform(generator, (n,), *q_in_range),
            "e_out": _uniform(generator, (n,), *e_out_range),
            "q_out": _uniform(generator, (n,), *q_out_range),
            "period_ratio": _log_uniform(generator, (n,), *ratio_range),
        }
        if dim == 3:
            parameters["inclination_deg"] = torch.rad2deg(torch.acos(_uniform(generator, (n,), *cos_range)))
        else:
            parameters["inclination_deg"] = 180.0 * _coin(generator, n)
        return parameters

    def stable(p: dict[str, Tensor]) -> Tensor:
        return _outer_axis_ratio(p["period_ratio"], p["q_out"]) > mardling_aarseth_limit(
            p["q_out"], p["e_out"], p["inclination_deg"]
        )

    p = _rejection_rounds(count, draw_parameters, stable, "hierarchical_triples: stable outer orbits")
    inner_mass = total_mass / (1.0 + p["q_out"])
    masses = torch.stack(
        [inner_mass / (1.0 + p["q_in"]), p["q_in"] * inner_mass / (1.0 + p["q_in"]), p["q_out"] * inner_mass], dim=-1
    )
    a_out = _outer_axis_ratio(p["period_ratio"], p["q_out"])
    zeros, ones = torch.zeros(count, dtype=DTYPE), torch.ones(count, dtype=DTYPE)
    inner = KeplerElements(
        p["e_in"],
        ones,
        inner_mass,
        p["q_in"],
        mean_anomaly=_angle(generator, count),
        argument_of_pericenter=_angle(generator, count),
    )
    outer = KeplerElements(
        p["e_out"],
        a_out,
        torch.full_like(a_out, float(total_mass)),
        p["q_out"],
        mean_anomaly=_angle(generator, count),
        inclination=torch.deg2rad(p["inclination_deg"]),
        longitude_of_node=_angle(generator, count) if dim == 3 else zeros,
        argument_of_pericenter=_angle(generator, count),
    )
    inner_position, inner_velocity = relative_orbit(inner, dim)
    outer_position, outer_velocity = relative_orbit(outer, dim)
    pair_positions, pair_velocities = two_body_frame(inner_position, inner_velocity, masses[:, :2])
    outer_masses = torch.stack([inner_mass, masses[:, 2]], dim=-1)
    centre_positions, centre_velocities = two_body_frame(outer_position, outer_velocity, outer_masses)
    positions = torch.cat([pair_positions + centre_positions[:, :1], centre_positions[:, 1:]], dim=1)
    velocities = torch.cat([pair_velocities + centre_velocities[:, :1], centre_velocities[:, 1:]], dim=1)
    if dim == 3:
        rotation = _random_rotations(generator, count).transpose(-1, -2)
        positions, velocities = positions @ rotation, velocities @ rotation
    positions, velocities = _centred(positions, velocities, masses)
    limit = mardling_aarseth_limit(p["q_out"], p["e_out"], p["inclination_deg"])
    labels = _labels(
        "hierarchical_triple",
        period_ratio=p["period_ratio"],
        e_in=p["e_in"],
        e_out=p["e_out"],
        inclination_deg=p["inclination_deg"],
        q_in=p["q_in"],
        q_out=p["q_out"],
        a_out=a_out,
        stability_margin=a_out / limit,
    )
    state = State.from_arrays(positions, velocities, masses)
    return [SystemSet("hierarchical_triple", state, inner.period, labels)]


# ----------------------------------------------------------------------------------------------
# democratic triples and Plummer clusters (virialized, Henon units)


def democratic_triples(
    count: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    mass_spread: Range = (0.5, 1.0),
    softening: Range = (0.0, 0.1),
    total_mass: float = 1.0,
) -> list[SystemSet]:
    """Three comparable bodies in virial equilibrium, in Henon units, prone to close encounters.

    Masses proportional to uniform draws in ``mass_spread``; positions uniform in the unit ball
    (disc in 2-D); isotropic Gaussian velocities; centre-of-mass frame. Then the system is
    scaled to Henon units with the softened potential: positions so that W = -1/2, velocities
    so that 2 K = |W| exactly, hence E = -1/4 and virial radius G M**2 / (2 |W|) = 1 (for
    ``total_mass`` M != 1 the masses are then scaled by M at fixed length: E = -M**2 / 4).

    Args:
        count: number of triples B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        mass_spread: 0 < low <= high, relative mass weights.
        softening: Plummer softening in virial radii, drawn uniformly per system,
            0 <= low <= high < 1 - sum m_i**2 of the most unequal masses (above it no scale has
            E = -1/4); (0, 0) gives unsoftened systems with close encounters.
        total_mass: m1 + m2 + m3 > 0.

    Returns:
        One set, family ``democratic_triple``, state (B, 3, dim); time scale the crossing time;
        labels softening, m_1, m_2, m_3.
    """
    _check_common(count, generator, dim, total_mass)
    weights_range = _check_range("mass_spread", mass_spread, "0 < low <= high", _positive)
    eps_range = _check_softening_range(softening, 3, weights_range)
    weights = _uniform(generator, (count, 3), *weights_range)
    positions = _isotropic(generator, (count, 3), dim) * torch.rand(
        (count, 3, 1), generator=generator, dtype=DTYPE
    ) ** (1.0 / dim)
    velocities = torch.randn((count, 3, dim), generator=generator, dtype=DTYPE)
    eps = _uniform(generator, (count,), *eps_range)
    state = _virialized(positions, velocities, weights, eps, total_mass)
    labels = _labels(
        "democratic_triple",
        softening=eps,
        **{f"m_{k + 1}": state.masses[:, k] for k in range(3)},
    )
    return [SystemSet("democratic_triple", state, crossing_time(state), labels)]


def plummer_clusters(
    count: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    bodies: Sequence[int] = (4, 8, 16, 32),
    mass_spread: Range = (1.0, 1.0),
    softening: Range = (0.0, 0.1),
    total_mass: float = 1.0,
) -> list[SystemSet]:
    """Small Plummer spheres in virial equilibrium, in Henon units.

    N is drawn uniformly per system from ``bodies``. Radii and speeds follow Aarseth, Henon
    & Wielen (1974): the radius from a uniform cumulative mass fraction (cut at
    ``PLUMMER_CUT_RADIUS`` scale radii), the speed as q v_esc with q drawn from
    q**2 (1 - q**2)**(7/2) by vectorized rejection, isotropic directions; in 2-D the projection
    onto the x-y plane. Masses proportional to uniform draws in ``mass_spread`` (equal by
    default). Then centre-of-mass frame and Henon units with the softened potential (as in
    :func:`democratic_triples`: E = -1/4, 2 K = |W|, virial radius 1).

    Args:
        count: number of clusters B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        bodies: distinct N >= 2 to draw from.
        mass_spread: 0 < low <= high, relative mass weights.
        softening: Plummer softening in virial radii, drawn uniformly per system,
            0 <= low <= high < 1 - sum m_i**2 of the most unequal masses of the smallest N.
        total_mass: total mass M > 0 (E = -M**2 / 4 at virial radius 1).

    Returns:
        One set per N present (ascending N), family ``plummer``, state (B_N, N, dim); time scale
        the crossing time; labels bodies, softening, mass_ratio (min m / max m).
    """
    _check_common(count, generator, dim, total_mass)
    counts = _check_body_counts(bodies)
    weights_range = _check_range("mass_spread", mass_spread, "0 < low <= high", _positive)
    eps_range = _check_softening_range(softening, min(counts), weights_range)
    sets = []
    for n_bodies, batch in _split_by_body_count(counts, count, generator):
        weights = _uniform(generator, (batch, n_bodies), *weights_range)
        positions, velocities = _plummer_sphere(generator, batch, n_bodies)
        eps = _uniform(generator, (batch,), *eps_range)
        state = _virialized(positions[..., :dim], velocities[..., :dim], weights, eps, total_mass)
        labels = _labels(
            "plummer",
            bodies=[n_bodies] * batch,
            softening=eps,
            mass_ratio=state.masses.amin(dim=-1) / state.masses.amax(dim=-1),
        )
        sets.append(SystemSet("plummer", state, crossing_time(state), labels))
    return sets


# ----------------------------------------------------------------------------------------------
# planetary systems


def planetary_systems(
    count: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    planets: tuple[int, int] = (1, 5),
    planet_mass: Range = (1e-6, 1e-2),
    eccentricity: Range = (0.0, 0.3),
    hill_spacing: Range = (10.0, 14.0),
    inclination: Range = (0.0, 5.0),
    total_mass: float = 1.0,
) -> list[SystemSet]:
    """A star and k planets spaced by mutual Hill radii, on Kepler orbits in Jacobi coordinates.

    Per system: k uniform in ``planets``; planet-to-star mass ratios mu_k log-uniform;
    a_1 = 1; a_{k+1} - a_k = Delta R_H with R_H = ((mu_k + mu_{k+1}) / 3)**(1/3) (a_k + a_{k+1}) / 2
    and Delta uniform per pair, solved for a_{k+1}. Where that gives a_{k+1} / a_k >
    ``MAX_ADJACENT_AXIS_RATIO`` (the rule diverges for heavy pairs: it only holds for
    Delta R_H << a) the outer planet's mass and Delta are redrawn. Eccentricities uniform,
    conditioned on no orbit crossing with margin, a_{k+1} (1 - e_{k+1}) > a_k (1 + e_k) + 3 R_H:
    systems that cross are redrawn (by Gibbs sweeps, see :func:`_no_crossing_eccentricities`;
    for light planets the rule keeps e below about (Delta - 3) R_H / a, a few percent). In 3-D inclinations uniform in
    ``inclination`` with uniform nodes; in 2-D coplanar and prograde. Random pericenter
    directions and mean anomalies. Each planet starts on the Kepler orbit (a_k, e_k, ...) in Jacobi
    coordinates: relative to the centre of mass of the star and the planets inside it, with
    G (M_star + m_1 + ... + m_k) (for the innermost planet that is the orbit about the star with
    G (M_star + m_1)); then the whole system moves to the centre-of-mass frame. Jacobi rather than
    heliocentric orbits: placed about the star, an outer planet beyond a heavy one would ignore the
    star's reflex motion (speed ~ mu_1 v_1), and its actual orbit would differ from the drawn one by
    ~2 mu_1 sqrt(a / a_1) in a (about 10% for mu_1 = 1e-2 and a = 30); its heliocentric
    osculating a oscillates by as much along the inner orbit (measured: up to 21%), its Jacobi a
    stays within 0.3% over 10 inner periods.

    Args:
        count: number of systems B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        planets: integers 1 <= low <= high.
        planet_mass: planet-to-star mass ratios, 0 < low <= high <= 0.1, log-uniform.
        eccentricity: 0 <= low <= high < 1.
        hill_spacing: Delta in mutual Hill radii, 2 sqrt(3) < low <= high (two-planet Hill
            stability, Gladman 1993; also makes the 3 R_H margin reachable).
        inclination: 0 <= low <= high <= 180 degrees (3-D only).
        total_mass: star plus planets > 0 (the star has mass 1 before this normalisation).

    Returns:
        One set per k present (ascending), family ``planetary``, state (B_k, k + 1, dim) with the
        star first; time scale the innermost planet's period; labels planets, star_mass and per
        planet j = 1..k: mass_ratio_j, a_j, e_j, inclination_deg_j (Jacobi elements), and
        hill_spacing_j (Delta between planets j and j + 1).

    Raises:
        ValueError: bad ranges, or ranges for which no spacing or eccentricity satisfies the rules.
    """
    _check_common(count, generator, dim, total_mass)
    k_low, k_high = _check_int_range("planets", planets, "integers 1 <= low <= high", 1)
    mu_range = _check_range("planet_mass", planet_mass, "0 < low <= high <= 0.1", lambda lo, hi: lo > 0 and hi <= 0.1)
    e_range = _check_range("eccentricity", eccentricity, "0 <= low <= high < 1", _in(0, 1, True))
    delta_range = _check_range(
        "hill_spacing", hill_spacing, "2 sqrt(3) < low <= high", lambda lo, hi: lo > 2.0 * math.sqrt(3.0)
    )
    incl_range = _check_range(
        "inclination", inclination, "0 <= low <= high <= 180", lambda lo, hi: lo >= 0 and hi <= 180
    )
    if k_high > 1 and _hill_half_width(mu_range[1] + mu_range[0], delta_range[0]) > _MAX_HILL_HALF_WIDTH:
        raise ValueError(
            f"planet_mass = {planet_mass!r} with hill_spacing = {hill_spacing!r} admits no "
            f"neighbour of the heaviest planet within a_(k+1) / a_k <= {MAX_ADJACENT_AXIS_RATIO:g}: lower the "
            "largest mass ratio or the smallest spacing"
        )
    drawn = torch.randint(k_low, k_high + 1, (count,), generator=generator)
    sets = []
    for k in range(k_low, k_high + 1):
        batch = int((drawn == k).sum())
        if batch:
            sets.append(
                _planetary_group(generator, batch, k, dim, mu_range, e_range, delta_range, incl_range, total_mass)
            )
    return sets


# the largest Delta h / 2 with (1 + x) / (1 - x) <= MAX_ADJACENT_AXIS_RATIO
_MAX_HILL_HALF_WIDTH = (MAX_ADJACENT_AXIS_RATIO - 1.0) / (MAX_ADJACENT_AXIS_RATIO + 1.0)


def _hill_half_width(pair_mass_ratio: Tensor | float, spacing: Tensor | float) -> Tensor | float:
    """x = Delta h / 2 with h = (pair mass ratio / 3)**(1/3): a_{k+1} / a_k = (1 + x) / (1 - x)."""
    return 0.5 * spacing * (pair_mass_ratio / 3.0) ** (1.0 / 3.0)


def _planetary_group(
    generator: torch.Generator,
    batch: int,
    k: int,
    dim: int,
    mu_range: Range,
    e_range: Range,
    delta_range: Range,
    incl_range: Range,
    total_mass: float,
) -> SystemSet:
    """``batch`` systems of a star and exactly k planets (see :func:`planetary_systems`)."""
    mu = _log_uniform(generator, (batch, k), *mu_range)
    delta = _uniform(generator, (batch, k - 1), *delta_range)
    a = torch.ones((batch, k), dtype=DTYPE)
    hill = torch.zeros((batch, k - 1), dtype=DTYPE)  # mutual Hill radii R_H of pairs (j, j + 1)
    for j in range(k - 1):
        for _ in range(MAX_REJECTION_ROUNDS):
            too_wide = _hill_half_width(mu[:, j] + mu[:, j + 1], delta[:, j]) > _MAX_HILL_HALF_WIDTH
            n = int(too_wide.sum())
            if n == 0:
                break
            mu[too_wide, j + 1] = _log_uniform(generator, (n,), *mu_range)
            delta[too_wide, j] = _uniform(generator, (n,), *delta_range)
        else:
            raise ValueError(f"planetary_systems: no Hill spacing within {MAX_REJECTION_ROUNDS} redraws")
        x = _hill_half_width(mu[:, j] + mu[:, j + 1], delta[:, j])
        a[:, j + 1] = a[:, j] * (1.0 + x) / (1.0 - x)
        hill[:, j] = ((mu[:, j] + mu[:, j + 1]) / 3.0) ** (1.0 / 3.0) * 0.5 * (a[:, j] + a[:, j + 1])
    e = _no_crossing_eccentricities(generator, a, hill, e_range)
    zeros = torch.zeros((batch, k), dtype=DTYPE)
    if dim == 3:
        inclination = torch.deg2rad(_uniform(generator, (batch, k), *incl_range))
        node = _angle(generator, (batch, k))
    else:
        inclination, node = zeros, zeros
    pericenter = _angle(generator, (batch, k))
    mean_anomaly = _angle(generator, (batch, k))
    star = total_mass / (1.0 + mu.sum(dim=-1))  # (B,)
    planet_masses = mu * star.unsqueeze(-1)
    masses = torch.cat([star.unsqueeze(-1), planet_masses], dim=-1)
    interior = masses.cumsum(dim=-1)  # (B, k + 1): star plus planets 1..j
    elements = KeplerElements(
        e.reshape(-1),
        a.reshape(-1),
        interior[:, 1:].reshape(-1),  # planet j orbits the interior mass: G (M_star + m_1 + ... + m_j)
        mu.reshape(-1),
        mean_anomaly.reshape(-1),
        inclination.reshape(-1),
        node.reshape(-1),
        pericenter.reshape(-1),
    )
    relative_position, relative_velocity = relative_orbit(elements, dim)
    relative_position, relative_velocity = relative_position.view(batch, k, dim), relative_velocity.view(batch, k, dim)
    # Jacobi coordinates: planet j relative to the centre of mass of the star and planets 1..j-1
    positions = torch.zeros((batch, k + 1, dim), dtype=DTYPE)
    velocities = torch.zeros((batch, k + 1, dim), dtype=DTYPE)
    centre = torch.zeros((batch, dim), dtype=DTYPE)
    drift = torch.zeros((batch, dim), dtype=DTYPE)
    for j in range(k):
        positions[:, j + 1] = centre + relative_position[:, j]
        velocities[:, j + 1] = drift + relative_velocity[:, j]
        weight = (planet_masses[:, j] / interior[:, j + 1]).unsqueeze(-1)
        centre = centre + weight * relative_position[:, j]
        drift = drift + weight * relative_velocity[:, j]
    positions, velocities = _centred(positions, velocities, masses)
    columns: dict[str, Tensor | list[Any]] = {"planets": [k] * batch, "star_mass": star}
    for j in range(k):
        columns[f"mass_ratio_{j + 1}"] = mu[:, j]
        columns[f"a_{j + 1}"] = a[:, j]
        columns[f"e_{j + 1}"] = e[:, j]
        columns[f"inclination_deg_{j + 1}"] = torch.rad2deg(inclination[:, j])
        if j < k - 1:
            columns[f"hill_spacing_{j + 1}"] = delta[:, j]
    state = State.from_arrays(positions, velocities, masses)
    return SystemSet("planetary", state, period(a[:, 0], star + planet_masses[:, 0]), _labels("planetary", **columns))


def _no_crossing_eccentricities(generator: torch.Generator, a: Tensor, hill: Tensor, e_range: Range) -> Tensor:
    """(B, k) eccentricities uniform in ``e_range`` conditioned on no orbit crossing with margin.

    The rule a_{j+1} (1 - e_{j+1}) > a_j (1 + e_j) + 3 R_H,j reads a_j e_j + a_{j+1} e_{j+1} < room_j
    with room_j = a_{j+1} - a_j - 3 R_H,j = (Delta_j - 3) R_H,j: the allowed eccentricities form a
    convex polytope. Redrawing whole systems until none crosses samples it exactly but, for
    light planets (room ~ 0.1 a) and e up to 0.3, needs ~1e4 rounds for five planets; redrawing
    only the offending planets does not converge much faster. So: one uniform draw per system,
    kept where it crosses no orbit (an exact sample already), else the corner e = low; then
    ``ECCENTRICITY_SWEEPS`` Gibbs sweeps, each drawing e_j uniformly between low and the largest
    value its neighbours allow. The uniform distribution on the polytope is the chain's
    stationary law, i.e. the law of the whole-system rejection sampler.

    Args:
        generator: the source of every random draw.
        a: (B, k) semi-major axes, increasing along the planets.
        hill: (B, k - 1) mutual Hill radii of adjacent pairs.
        e_range: (low, high) eccentricity range, validated.

    Raises:
        ValueError: even e = low for every planet crosses orbits (no valid eccentricities).
    """
    low, high = e_range
    batch, k = a.shape
    room = a[:, 1:] - a[:, :-1] - 3.0 * hill  # (B, k - 1)
    if bool((a[:, 1:] * low + a[:, :-1] * low >= room).any()):
        raise ValueError(
            f"eccentricity = {e_range!r}: the low end is too large for these planets: adjacent orbits would cross "
            "the margin a_(k+1) (1 - e_(k+1)) > a_k (1 + e_k) + 3 R_H even at e = low"
        )
    e = _uniform(generator, (batch, k), low, high)
    crossing = (a[:, :-1] * e[:, :-1] + a[:, 1:] * e[:, 1:] >= room).any(dim=-1)
    e[crossing] = low
    if k == 1:
        return e
    for _ in range(ECCENTRICITY_SWEEPS):
        for j in range(k):
            upper = torch.full((batch,), high, dtype=DTYPE)
            if j > 0:
                upper = torch.minimum(upper, (room[:, j - 1] - a[:, j - 1] * e[:, j - 1]) / a[:, j])
            if j < k - 1:
                upper = torch.minimum(upper, (room[:, j] - a[:, j + 1] * e[:, j + 1]) / a[:, j])
            e[:, j] = low + (upper - low) * torch.rand(batch, generator=generator, dtype=DTYPE)
    return e


# ----------------------------------------------------------------------------------------------
# named problems


def named_problems(dim: int = 2) -> list[SystemSet]:
    """Famous three-body problems, for held-out evaluation only (never train on them).

    - ``figure_eight``: the Chenciner & Montgomery (2000) choreography, equal masses 1,
      x1 = -x2 = (0.97000436, -0.24308753), x3 = 0, v3 = (-0.93240737, -0.86473146),
      v1 = v2 = -v3 / 2; time scale its period 6.32591398.
    - ``pythagorean``: Burrau's problem, masses 3, 4, 5 at rest at (1, 3), (-2, -1), (1, -1)
      (the sides of a 3-4-5 triangle opposite each mass); time scale its crossing time.

    Both are in their canonical units (not normalised), centred and at rest in the
    centre-of-mass frame (they already are), embedded at z = 0 in 3-D.

    Args:
        dim: 2 or 3.

    Returns:
        Two one-system sets, family ``figure_eight`` and ``pythagorean``, label {"name": ...}.
    """
    _check_dim(dim)
    x, y = FIGURE_EIGHT_POSITION
    vx, vy = FIGURE_EIGHT_VELOCITY
    problems = {
        "figure_eight": (
            [[x, y], [-x, -y], [0.0, 0.0]],
            [[-0.5 * vx, -0.5 * vy], [-0.5 * vx, -0.5 * vy], [vx, vy]],
            [1.0, 1.0, 1.0],
        ),
        "pythagorean": ([[1.0, 3.0], [-2.0, -1.0], [1.0, -1.0]], [[0.0, 0.0]] * 3, [3.0, 4.0, 5.0]),
    }
    sets = []
    for name, (positions, velocities, masses) in problems.items():
        positions_t = _embed(torch.tensor([positions], dtype=DTYPE), dim)
        velocities_t = _embed(torch.tensor([velocities], dtype=DTYPE), dim)
        masses_t = torch.tensor([masses], dtype=DTYPE)
        state = State.from_arrays(*_centred(positions_t, velocities_t, masses_t), masses_t)
        time_scale = (
            torch.tensor([FIGURE_EIGHT_PERIOD], dtype=DTYPE) if name == "figure_eight" else crossing_time(state)
        )
        sets.append(SystemSet(name, state, time_scale, [{"family": name, "name": name}]))
    return sets


# ----------------------------------------------------------------------------------------------
# systems in a tidal field


def tidal_systems(
    count: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    bodies: Sequence[int] = (2, 4, 8),
    jacobi_fraction: Range = (0.1, 0.8),
    host_mass_ratio: Range = (1e3, 1e6),
    orbits: Sequence[str] = ORBITS,
    eccentricity: Range = (0.0, 0.7),
    softening: Range = (0.0, 0.05),
    total_mass: float = 1.0,
) -> list[SystemSet]:
    """Binaries (N = 2) and small Plummer clusters (N >= 3) in the tidal field of a point-mass
    host (:mod:`aitimestepper.physics.external`), at a drawn fraction of their Jacobi radius.

    The system's size r is its apocentre separation a (1 + e) for a binary and its virial radius
    (1, Henon units) for a cluster; the host of mass M = (host mass ratio) m (m the system's mass)
    is placed at the distance R with r / r_J = ``jacobi_fraction``, r_J = R (m / (3 M))**(1/3)
    the Jacobi radius, in the x-y plane at a uniform angle; it is static or on a circular orbit
    (the system then rides the circular orbit about it, the host turning counter-clockwise).

    Args:
        count: number of systems B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        bodies: distinct N >= 2, one drawn uniformly per system.
        jacobi_fraction: r / r_J, 0 < low <= high, drawn log-uniformly (near 1: a system
            filling its Jacobi radius, losing bodies to the field).
        host_mass_ratio: M / m, 0 < low <= high, drawn log-uniformly.
        orbits: the host orbits (of ``static``, ``circular``) drawn from, uniformly.
        eccentricity: binaries' eccentricity range (uniform), 0 <= low <= high < 1.
        softening: clusters' Plummer softening range (virial radii).
        total_mass: the system's mass m > 0.

    Returns:
        One set per N present (ascending N), family ``tidal``; time scale the binary's period or
        the cluster's crossing time; labels: the inner family's with ``system`` (``binary`` or
        ``plummer``), ``jacobi_fraction``, ``host_mass_ratio`` and ``orbit``.
    """
    _check_common(count, generator, dim, total_mass)
    counts = _check_body_counts(bodies)
    fraction_range = _check_range("jacobi_fraction", jacobi_fraction, "0 < low <= high", _positive)
    host_range = _check_range("host_mass_ratio", host_mass_ratio, "0 < low <= high", _positive)
    if not orbits or any(orbit not in ORBITS for orbit in orbits):
        raise ValueError(f"orbits = {list(orbits)!r} is invalid: needs a non-empty list of {list(ORBITS)}")
    orbit_names = list(dict.fromkeys(orbits))
    sets = []
    for n_bodies, batch in _split_by_body_count(counts, count, generator):
        if n_bodies == 2:
            (inner,) = binaries(
                batch,
                generator,
                dim=dim,
                eccentricity=eccentricity,
                start_phase="random_true_anomaly",
                total_mass=total_mass,
            )
            size = torch.tensor([label["a"] * (1.0 + label["e"]) for label in inner.labels], dtype=DTYPE)
        else:
            (inner,) = plummer_clusters(
                batch, generator, dim=dim, bodies=(n_bodies,), softening=softening, total_mass=total_mass
            )
            size = torch.ones(batch, dtype=DTYPE)
        fraction = _log_uniform(generator, (batch,), *fraction_range)
        ratio = _log_uniform(generator, (batch,), *host_range)
        angle = _angle(generator, batch)
        orbit = torch.randint(len(orbit_names), (batch,), generator=generator)
        mass = inner.state.masses.sum(dim=-1)
        distance = size / fraction * (3.0 * ratio) ** (1.0 / 3.0)
        direction = _embed(torch.stack([angle.cos(), angle.sin()], dim=1), dim)
        host_mass = ratio * mass
        circular = torch.tensor([orbit_names[k] == "circular" for k in orbit.tolist()])
        rotation = torch.where(circular, (host_mass / distance**3).sqrt(), 0.0)
        field = TidalField(host_mass, distance.unsqueeze(1) * direction, torch.zeros(batch, dtype=DTYPE), rotation)
        own = inner.state
        state = State.from_arrays(own.positions, own.velocities, own.masses, own.softening, external=field)
        labels = [
            {
                **label,
                "family": "tidal",
                "system": inner.family,
                "jacobi_fraction": float(fraction[k]),
                "host_mass_ratio": float(ratio[k]),
                "orbit": orbit_names[int(orbit[k])],
            }
            for k, label in enumerate(inner.labels)
        ]
        sets.append(SystemSet("tidal", state, inner.time_scale, labels))
    return sets


# ----------------------------------------------------------------------------------------------
# registry


FAMILIES: dict[str, Callable[..., list[SystemSet]]] = {
    "binary": binaries,
    "hierarchical_triple": hierarchical_triples,
    "democratic_triple": democratic_triples,
    "planetary": planetary_systems,
    "plummer": plummer_clusters,
    "tidal": tidal_systems,
}


def draw(family: str, count: int, generator: torch.Generator, *, dim: int, **ranges: Any) -> list[SystemSet]:
    """Draw ``count`` systems of a named family.

    Args:
        family: a key of ``FAMILIES``.
        count: number of systems B >= 1.
        generator: the source of every random draw.
        dim: 2 or 3.
        **ranges: the family generator's keyword arguments (ranges as (low, high) pairs; lists
            from a YAML file are accepted).

    Returns:
        One SystemSet per distinct body count drawn.

    Raises:
        ValueError: an unknown family (listing the valid ones), an argument the family does not
            take (listing those it takes), or a bad value (naming the argument, value and rule).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    generate = FAMILIES[family]
    accepted = [
        name
        for name, parameter in inspect.signature(generate).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "dim"
    ]
    unknown = sorted(set(ranges) - set(accepted))
    if unknown:
        raise ValueError(f"family {family!r} takes no argument {unknown}; it takes {accepted}")
    return generate(count, generator, dim=dim, **ranges)


def group_by_size(sets: Sequence[SystemSet]) -> list[SystemSet]:
    """Merge the sets of equal (N, D) (any families), in order of first appearance."""
    groups: dict[tuple[int, int], list[SystemSet]] = {}
    for system_set in sets:
        groups.setdefault((system_set.num_bodies, system_set.dim), []).append(system_set)
    return [group[0] if len(group) == 1 else SystemSet.concatenate(group) for group in groups.values()]


# ----------------------------------------------------------------------------------------------
# helpers: construction


def _binary_state(elements: KeplerElements, dim: int) -> State:
    """Two bodies on ``elements`` about their centre of mass, recentred to round-off."""
    relative_position, relative_velocity = relative_orbit(elements, dim)
    masses = elements.masses
    positions, velocities = two_body_frame(relative_position, relative_velocity, masses)
    return State.from_arrays(*_centred(positions, velocities, masses), masses)


def _outer_axis_ratio(period_ratio: Tensor | float, outer_mass_ratio: Tensor | float) -> Tensor | float:
    """a_out / a_in from P_out / P_in by Kepler's third law with M_out = (1 + q_out) M_in."""
    return period_ratio ** (2.0 / 3.0) * (1.0 + outer_mass_ratio) ** (1.0 / 3.0)


def _centred(positions: Tensor, velocities: Tensor, masses: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N, D) positions and velocities moved to the centre-of-mass frame of (B, N) masses."""
    weights = (masses / masses.sum(dim=-1, keepdim=True)).unsqueeze(-1)
    centre = (weights * positions).sum(dim=-2, keepdim=True)
    drift = (weights * velocities).sum(dim=-2, keepdim=True)
    return positions - centre, velocities - drift


def _virialized(positions: Tensor, velocities: Tensor, weights: Tensor, softening: Tensor, total_mass: float) -> State:
    """Systems in virial equilibrium in Henon units, from raw draws.

    Masses are ``weights`` normalised to 1; positions and velocities go to the centre-of-mass
    frame; positions are scaled by the lambda solving W(lambda x; eps) = -1/2 (bisection: |W|
    falls monotonically with lambda, from sum m_i m_j / eps at 0 to 0, and the unsoftened
    lambda_0 = 2 |W_0(x)| brackets the root from above); velocities are scaled to K = |W| / 2.
    Finally masses are multiplied by ``total_mass`` M and velocities by sqrt(M) (length fixed).
    """
    masses = weights / weights.sum(dim=-1, keepdim=True)
    positions, velocities = _centred(positions, velocities, masses)
    unsoftened = -gravity.potential_energy(positions, masses, torch.zeros_like(softening))
    low, high = torch.zeros_like(unsoftened), 2.0 * unsoftened
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        binding = -gravity.potential_energy(middle.view(-1, 1, 1) * positions, masses, softening)
        too_small = binding > 0.5
        low, high = torch.where(too_small, middle, low), torch.where(too_small, high, middle)
    positions = positions * (0.5 * (low + high)).view(-1, 1, 1)
    potential = gravity.potential_energy(positions, masses, softening)
    kinetic = gravity.kinetic_energy(velocities, masses)
    velocities = velocities * (-potential / (2.0 * kinetic)).sqrt().view(-1, 1, 1)
    return State.from_arrays(positions, velocities * math.sqrt(total_mass), masses * total_mass, softening)


def _plummer_sphere(generator: torch.Generator, batch: int, bodies: int) -> tuple[Tensor, Tensor]:
    """3-D Plummer-sphere positions and velocities in Plummer units (G = M = scale radius = 1).

    Aarseth, Henon & Wielen (1974): r = (X**(-2/3) - 1)**(-1/2) with X uniform in (0, M(r_cut)];
    v = q sqrt(2) (1 + r**2)**(-1/4) with q from q**2 (1 - q**2)**(7/2) by rejection (an
    envelope of height 0.1 over its maximum 0.092, acceptance about 0.43).
    """
    shape = (batch, bodies)
    cut = PLUMMER_CUT_RADIUS
    enclosed = cut**3 / (1.0 + cut**2) ** 1.5
    fraction = enclosed * (1.0 - torch.rand(shape, generator=generator, dtype=DTYPE))
    radius = (fraction ** (-2.0 / 3.0) - 1.0).rsqrt()
    positions = radius.unsqueeze(-1) * _isotropic(generator, shape, 3)

    def draw_q(n: int) -> dict[str, Tensor]:
        return {
            "q": torch.rand(n, generator=generator, dtype=DTYPE),
            "y": 0.1 * torch.rand(n, generator=generator, dtype=DTYPE),
        }

    def accept(draws: dict[str, Tensor]) -> Tensor:
        return draws["y"] < draws["q"] ** 2 * (1.0 - draws["q"] ** 2) ** 3.5

    q = _rejection_rounds(batch * bodies, draw_q, accept, "plummer speeds")["q"].view(shape)
    speed = q * math.sqrt(2.0) * (1.0 + radius**2) ** -0.25
    velocities = speed.unsqueeze(-1) * _isotropic(generator, shape, 3)
    return positions, velocities


def _rejection_rounds(
    count: int,
    draw_values: Callable[[int], dict[str, Tensor]],
    accept: Callable[[dict[str, Tensor]], Tensor],
    what: str,
) -> dict[str, Tensor]:
    """Vectorized rejection sampling: draw for all pending entries, keep the accepted, repeat.

    Args:
        count: entries wanted.
        draw_values: n -> dict of (n, ...) tensors, one draw per pending entry.
        accept: the drawn dict -> (n,) bool mask of accepted entries.
        what: what is drawn, for the error message.

    Returns:
        dict of (count, ...) accepted values.
    """
    pending = torch.arange(count)
    result: dict[str, Tensor] = {}
    for _ in range(MAX_REJECTION_ROUNDS):
        values = draw_values(pending.numel())
        accepted = accept(values)
        for key, value in values.items():
            if key not in result:
                result[key] = torch.empty((count, *value.shape[1:]), dtype=value.dtype)
            result[key][pending[accepted]] = value[accepted]
        pending = pending[~accepted]
        if pending.numel() == 0:
            return result
    raise ValueError(f"{what}: {pending.numel()} of {count} draws still rejected after {MAX_REJECTION_ROUNDS} rounds")


def _random_rotations(generator: torch.Generator, count: int) -> Tensor:
    """(B, 3, 3) rotation matrices uniform on SO(3), from normalised Gaussian quaternions."""
    quaternion = torch.randn((count, 4), generator=generator, dtype=DTYPE)
    w, x, y, z = (quaternion / quaternion.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(count, 3, 3)


def _embed(vectors: Tensor, dim: int) -> Tensor:
    """(B, N, 2) planar vectors as (B, N, dim), z = 0 in 3-D."""
    return vectors if dim == 2 else torch.cat([vectors, torch.zeros_like(vectors[..., :1])], dim=-1)


def _split_by_body_count(counts: list[int], count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """(N, systems of N) for ``count`` systems, each N drawn uniformly from ``counts``: ascending
    N, only the N drawn at least once."""
    choice = torch.randint(len(counts), (count,), generator=generator)
    drawn = [(n_bodies, int((choice == index).sum())) for index, n_bodies in enumerate(counts)]
    return sorted((n_bodies, batch) for n_bodies, batch in drawn if batch > 0)


def _labels(family: str, **columns: Tensor | list[Any]) -> list[dict[str, Any]]:
    """One JSON-ready dict per system from (B,) columns (tensors become Python floats)."""
    values = {key: column.tolist() if isinstance(column, Tensor) else list(column) for key, column in columns.items()}
    batch = len(next(iter(values.values())))
    return [{"family": family, **{key: column[i] for key, column in values.items()}} for i in range(batch)]


# ----------------------------------------------------------------------------------------------
# helpers: random draws


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    """float64 draws uniform in [low, high) (exactly low when low == high)."""
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=DTYPE)


def _log_uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    """float64 draws log-uniform in [low, high), 0 < low <= high."""
    return _uniform(generator, shape, math.log(low), math.log(high)).exp().clamp(low, high)


def _angle(generator: torch.Generator, shape: int | tuple[int, ...]) -> Tensor:
    """float64 angles uniform in [0, 2 pi), radians."""
    return _uniform(generator, (shape,) if isinstance(shape, int) else shape, 0.0, 2.0 * math.pi)


def _coin(generator: torch.Generator, count: int) -> Tensor:
    """(count,) float64 zeros and ones with probability 1/2 each."""
    return torch.randint(2, (count,), generator=generator).to(DTYPE)


def _isotropic(generator: torch.Generator, shape: tuple[int, ...], dim: int) -> Tensor:
    """(*shape, dim) float64 unit vectors uniform on the sphere (circle in 2-D)."""
    vectors = torch.randn((*shape, dim), generator=generator, dtype=DTYPE)
    return vectors / vectors.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# helpers: validation


def _check_common(count: int, generator: torch.Generator, dim: int, total_mass: float) -> None:
    if not _is_integer(count) or count < 1:
        raise ValueError(f"count = {count!r} is invalid: needs an integer >= 1")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _check_dim(dim)
    _check_positive("total_mass", total_mass)


def _check_dim(dim: int) -> None:
    if dim not in (2, 3) or isinstance(dim, bool):
        raise ValueError(f"dim = {dim!r} is invalid: needs 2 or 3")


def _check_positive(name: str, value: float) -> None:
    _check_number(name, value, "a finite number > 0", lambda x: x > 0)


def _check_number(name: str, value: Any, rule: str, valid: Callable[[float], bool]) -> None:
    if not _is_real(value) or not math.isfinite(value) or not valid(value):
        raise ValueError(f"{name}: {value!r} is invalid: needs {rule}")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} = {value!r} is invalid: needs one of {list(choices)}")


def _check_range(name: str, value: Any, rule: str, valid: Callable[[float, float], bool]) -> Range:
    """A validated (low, high) pair of finite floats with low <= high and ``valid(low, high)``."""
    pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if len(pair) != 2 or not all(_is_real(v) for v in pair):
        raise ValueError(f"{name} = {value!r} is invalid: needs a (low, high) pair with {rule}")
    low, high = float(pair[0]), float(pair[1])
    if not (math.isfinite(low) and math.isfinite(high) and low <= high and valid(low, high)):
        raise ValueError(f"{name} = {value!r} is invalid: needs {rule}")
    return low, high


def _check_int_range(name: str, value: Any, rule: str, minimum: int) -> tuple[int, int]:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is invalid: needs {rule}") from None
    if not all(_is_integer(v) for v in (low, high)) or not minimum <= low <= high:
        raise ValueError(f"{name} = {value!r} is invalid: needs {rule}")
    return int(low), int(high)


def _check_body_counts(body_counts: Any) -> list[int]:
    rule = "a non-empty sequence of distinct integers >= 2"
    try:
        counts = list(body_counts)
    except TypeError:
        raise ValueError(f"bodies = {body_counts!r} is invalid: needs {rule}") from None
    valid = all(_is_integer(n) and n >= 2 for n in counts)
    if not counts or not valid or len(set(counts)) != len(counts):
        raise ValueError(f"bodies = {body_counts!r} is invalid: needs {rule}")
    return [int(n) for n in counts]


def _check_softening_range(value: Any, bodies: int, weights_range: Range) -> Range:
    """Softening in virial radii: 0 <= low <= high < 1 - sum m_i**2 for the most unequal masses.

    With total mass 1, |W| -> sum_{i<j} m_i m_j / eps as the system shrinks to a point, so
    W = -1/2 has a solution only while eps < 2 sum_{i<j} m_i m_j = 1 - sum m_i**2. The sum of
    squares is convex in the weights, so its maximum over the box of weights sits at a vertex:
    j bodies at the high weight and the others at the low one.
    """
    low_weight, high_weight = weights_range
    worst = 1.0
    for heavy in range(bodies + 1):
        weights = [high_weight] * heavy + [low_weight] * (bodies - heavy)
        total = sum(weights)
        worst = min(worst, 1.0 - sum((w / total) ** 2 for w in weights))
    return _check_range(
        "softening",
        value,
        f"0 <= low <= high < {worst:.6g} (1 - sum m_i^2 of the most unequal masses of {bodies} bodies; above it "
        "no length scale gives E = -1/4)",
        lambda lo, hi: lo >= 0 and hi < worst,
    )


def _in(low: float, high: float, low_closed: bool, high_closed: bool = False) -> Callable[[float, float], bool]:
    """Rule: both ends inside the interval (low, high) with the given closed ends."""

    def valid(lo: float, hi: float) -> bool:
        above = lo >= low if low_closed else lo > low
        below = hi <= high if high_closed else hi < high
        return above and below

    return valid


def _is_real(value: Any) -> bool:
    """A real number (Python, NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    """An integer (Python, NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive(low: float, high: float) -> bool:
    return low > 0


def _scalar(function: Callable[..., Tensor], *values: float) -> float:
    """A (B,) tensor function evaluated at one point, as a float."""
    return float(function(*(torch.tensor([v], dtype=DTYPE) for v in values))[0])
