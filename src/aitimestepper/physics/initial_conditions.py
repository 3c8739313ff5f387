"""Initial conditions: Kepler binaries, virialized clusters and systems loaded from a file.

All samplers take a ``torch.Generator`` so that a seed fixes the systems drawn. Every system is
returned centred on its centre of mass and with zero total momentum (loaded files excepted:
they are used as given).

File format (JSON or NPZ) for :func:`load_systems`:
    ``masses``: (B, N) or (N,) positive masses;
    ``positions``, ``velocities``: (B, N, D) or (N, D), D in {2, 3};
    ``softening`` (optional, JSON only): Plummer softening length, default 0.
A single system may omit the batch axis. Example JSON:
``{"masses": [1.0, 1.0], "positions": [[-0.5, 0], [0.5, 0]], "velocities": [[0, -0.5], [0, 0.5]]}``
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from aitimestepper.physics import gravity
from aitimestepper.physics.state import DTYPE, State

EccentricitySampling = Literal["uniform", "log_one_minus_e"]
StartPhase = Literal["pericenter", "apocenter", "random", "random_true_anomaly"]


@dataclass(frozen=True)
class KeplerElements:
    """Orbital elements of B two-body systems, each a (B,) float64 tensor.

    Attributes:
        eccentricity: e in [0, 1).
        semi_major_axis: a > 0.
        total_mass: m1 + m2.
        mass_ratio: q = m2 / m1 in (0, 1].
        mean_anomaly: mean anomaly at t = 0, radians.
    """

    eccentricity: Tensor
    semi_major_axis: Tensor
    total_mass: Tensor
    mass_ratio: Tensor
    mean_anomaly: Tensor

    @property
    def period(self) -> Tensor:
        """Orbital period 2 pi sqrt(a**3 / (G M)), shape (B,)."""
        gm = gravity.GRAVITATIONAL_CONSTANT * self.total_mass
        return 2.0 * math.pi * (self.semi_major_axis**3 / gm).sqrt()


def solve_kepler(mean_anomaly: Tensor, eccentricity: Tensor, iterations: int = 60) -> Tensor:
    """Eccentric anomaly E solving M = E - e sin E, vectorized Newton iteration.

    Starting from E = pi for eccentric orbits makes Newton's method converge for every
    e < 1 (Danby's safe start); 60 iterations reach round-off even at e = 0.999.
    """
    mean_anomaly = torch.remainder(mean_anomaly, 2.0 * math.pi)
    anomaly = torch.where(eccentricity < 0.8, mean_anomaly, torch.full_like(mean_anomaly, math.pi))
    for _ in range(iterations):
        residual = anomaly - eccentricity * torch.sin(anomaly) - mean_anomaly
        anomaly = anomaly - residual / (1.0 - eccentricity * torch.cos(anomaly))
    return anomaly


def mean_anomaly_from_true(true_anomaly: Tensor, eccentricity: Tensor) -> Tensor:
    """Mean anomaly M of the orbital position with true anomaly nu (radians), shape (B,)."""
    half = 0.5 * true_anomaly
    eccentric = 2.0 * torch.atan2(
        (1.0 - eccentricity).sqrt() * torch.sin(half), (1.0 + eccentricity).sqrt() * torch.cos(half)
    )
    return eccentric - eccentricity * torch.sin(eccentric)


def kepler_binary(elements: KeplerElements, dim: int = 2, softening: float = 0.0) -> State:
    """Two bodies on the Kepler orbit given by ``elements``, in the x-y plane.

    The pericenter lies on the +x axis and the orbit is prograde. Body 0 has mass
    M / (1 + q), body 1 has mass q M / (1 + q). Centre of mass at the origin, at rest.

    Args:
        elements: orbital elements, (B,) each.
        dim: 2 or 3 (z = 0 in 3-D).
        softening: Plummer softening of the returned state (0 gives the exact Kepler problem).
    """
    e, a, total = elements.eccentricity, elements.semi_major_axis, elements.total_mass
    anomaly = solve_kepler(elements.mean_anomaly, e)
    cos_e, sin_e = torch.cos(anomaly), torch.sin(anomaly)
    root = (1.0 - e**2).sqrt()
    relative_position = torch.stack([a * (cos_e - e), a * root * sin_e], dim=-1)
    speed_scale = (gravity.GRAVITATIONAL_CONSTANT * total / a).sqrt() / (1.0 - e * cos_e)
    relative_velocity = torch.stack([-speed_scale * sin_e, speed_scale * root * cos_e], dim=-1)
    if dim == 3:
        zeros = torch.zeros_like(e).unsqueeze(-1)
        relative_position = torch.cat([relative_position, zeros], dim=-1)
        relative_velocity = torch.cat([relative_velocity, zeros], dim=-1)
    q = elements.mass_ratio
    masses = torch.stack([total / (1.0 + q), q * total / (1.0 + q)], dim=-1)
    fractions = (masses / total.unsqueeze(-1)).unsqueeze(-1)  # (B, 2, 1)
    # body 0 sits at -m1/M * r, body 1 at +m0/M * r, with r pointing from body 0 to body 1
    signs = torch.tensor([-1.0, 1.0], dtype=DTYPE).view(1, 2, 1)
    positions = signs * fractions.flip(1) * relative_position.unsqueeze(1)
    velocities = signs * fractions.flip(1) * relative_velocity.unsqueeze(1)
    return State.from_arrays(positions, velocities, masses, softening)


def sample_kepler_elements(
    count: int,
    generator: torch.Generator,
    *,
    eccentricity_range: tuple[float, float],
    eccentricity_sampling: EccentricitySampling,
    semi_major_axis_range: tuple[float, float],
    mass_ratio_range: tuple[float, float],
    total_mass: float,
    start_phase: StartPhase,
) -> KeplerElements:
    """Draw ``count`` sets of Kepler elements.

    Args:
        count: number of binaries B.
        generator: seeded torch generator (the only source of randomness).
        eccentricity_range: (e_min, e_max), 0 <= e_min <= e_max < 1.
        eccentricity_sampling: ``uniform`` in e, or ``log_one_minus_e``: log-uniform in 1 - e,
            which represents very eccentric orbits well.
        semi_major_axis_range: (a_min, a_max), a drawn uniformly.
        mass_ratio_range: (q_min, q_max) in (0, 1], q = m2 / m1 drawn uniformly.
        total_mass: m1 + m2 of every binary.
        start_phase: ``pericenter``, ``apocenter``, ``random`` (uniform in mean anomaly, i.e.
            in time: pericenter passages of eccentric orbits are rare) or
            ``random_true_anomaly`` (uniform in true anomaly: close to the density of steps of an
            adaptive integrator, which spends many steps near pericenter).
    """

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, dtype=DTYPE)

    e_min, e_max = eccentricity_range
    if eccentricity_sampling == "uniform":
        eccentricity = uniform(e_min, e_max)
    else:
        log_low, log_high = math.log(1.0 - e_max), math.log(1.0 - e_min)
        eccentricity = 1.0 - uniform(log_low, log_high).exp()
    semi_major_axis = uniform(*semi_major_axis_range)
    mass_ratio = uniform(*mass_ratio_range)
    phase_random = uniform(0.0, 2.0 * math.pi)
    fixed_phase = {"pericenter": 0.0, "apocenter": math.pi}
    if start_phase == "random":
        mean_anomaly = phase_random
    elif start_phase == "random_true_anomaly":
        mean_anomaly = mean_anomaly_from_true(phase_random, eccentricity)
    else:
        mean_anomaly = torch.full((count,), fixed_phase[start_phase], dtype=DTYPE)
    return KeplerElements(
        eccentricity=eccentricity,
        semi_major_axis=semi_major_axis,
        total_mass=torch.full((count,), float(total_mass), dtype=DTYPE),
        mass_ratio=mass_ratio,
        mean_anomaly=mean_anomaly,
    )


def virial_cluster(
    count: int,
    num_bodies: int,
    generator: torch.Generator,
    *,
    dim: int = 2,
    total_mass: float = 1.0,
    mass_ratio_range: tuple[float, float] = (1.0, 1.0),
    softening: float = 0.0,
) -> State:
    """Random clusters of ``num_bodies`` bodies in virial equilibrium (2 K = |W|).

    Positions are uniform in the unit ball, velocities isotropic Gaussian; both are shifted to
    the centre-of-mass frame and the velocities are rescaled so that 2 K = |W|. Masses are
    proportional to a uniform draw in ``mass_ratio_range`` and normalised to ``total_mass``.

    Returns:
        A state of ``count`` systems with shape (count, num_bodies, dim).
    """
    shape = (count, num_bodies, dim)
    directions = torch.randn(shape, generator=generator, dtype=DTYPE)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    radii = torch.rand((count, num_bodies, 1), generator=generator, dtype=DTYPE) ** (1.0 / dim)
    positions = directions * radii
    velocities = torch.randn(shape, generator=generator, dtype=DTYPE)
    low, high = mass_ratio_range
    weights = low + (high - low) * torch.rand((count, num_bodies), generator=generator, dtype=DTYPE)
    masses = total_mass * weights / weights.sum(dim=-1, keepdim=True)
    positions = positions - _centre_of_mass(positions, masses)
    velocities = velocities - _centre_of_mass(velocities, masses)
    kinetic = gravity.kinetic_energy(velocities, masses)
    potential = gravity.potential_energy(positions, masses, softening)
    velocities = velocities * (-potential / (2.0 * kinetic)).sqrt().view(-1, 1, 1)
    return State.from_arrays(positions, velocities, masses, softening)


def load_systems(path: Path, softening: float | None = None) -> State:
    """Load systems from a JSON or NPZ file (format in the module docstring).

    Args:
        path: the file.
        softening: overrides the file's softening when given.

    Raises:
        ValueError: the file is missing, unreadable, or its arrays break a rule (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"initial-conditions file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
    elif path.suffix == ".json":
        try:
            arrays = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"initial-conditions file {path} is not valid JSON: {error}") from error
    else:
        raise ValueError(f"initial-conditions file {path} must end in .json or .npz")
    missing = {"masses", "positions", "velocities"} - set(arrays)
    if missing:
        raise ValueError(f"initial-conditions file {path} lacks {sorted(missing)}")
    file_softening = float(arrays.get("softening", 0.0))
    try:
        tensors = [
            torch.as_tensor(np.asarray(arrays[k], dtype=np.float64)) for k in ("positions", "velocities", "masses")
        ]
    except ValueError as error:
        raise ValueError(f"initial-conditions file {path}: arrays must be rectangular numbers ({error})") from error
    positions, velocities, masses = tensors
    return State.from_arrays(positions, velocities, masses, file_softening if softening is None else softening)


def _centre_of_mass(vectors: Tensor, masses: Tensor) -> Tensor:
    """Mass-weighted mean of per-body vectors, shape (B, 1, D)."""
    weights = (masses / masses.sum(dim=-1, keepdim=True)).unsqueeze(-1)
    return (weights * vectors).sum(dim=-2, keepdim=True)
