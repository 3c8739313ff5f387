"""Two-body Kepler orbits: elements, Kepler's equation, relative orbits and binaries.

Units: G = 1 (``gravity.GRAVITATIONAL_CONSTANT``); lengths, masses and times in any consistent
unit system, angles in radians. Every tensor is float64 and batched over B orbits.

Orientation convention: before rotation the orbit lies in the x-y plane, prograde
(counter-clockwise seen from +z), with its pericenter on the +x axis. In 3-D the orbit is then
rotated by the standard Euler rotation R_z(Omega) R_x(i) R_z(omega) (longitude of the ascending
node Omega, inclination i, argument of pericenter omega). In 2-D only coplanar orientations
exist: i = 0 (prograde) or i = pi (retrograde, the mirror image y -> -y before the in-plane
rotation by Omega - omega).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.physics import gravity
from aitimestepper.physics.state import DTYPE, State

# |sin i| above this is not a coplanar orbit and cannot be drawn in 2-D
_COPLANAR_TOLERANCE = 1e-12


@dataclass(frozen=True)
class KeplerElements:
    """Orbital elements of B two-body systems, each a (B,) float64 tensor.

    Attributes:
        eccentricity: e in [0, 1) (bound orbits only).
        semi_major_axis: a > 0, length units.
        total_mass: M = m1 + m2 > 0, mass units.
        mass_ratio: q = m2 / m1 > 0 (body 1 is the lighter one for q <= 1).
        mean_anomaly: mean anomaly at t = 0, radians (0 is pericenter, pi apocenter).
        inclination: i, radians; default zeros (orbit in the x-y plane, prograde).
        longitude_of_node: Omega, radians; default zeros.
        argument_of_pericenter: omega, radians; default zeros (pericenter on +x for i = Omega = 0).
    """

    eccentricity: Tensor
    semi_major_axis: Tensor
    total_mass: Tensor
    mass_ratio: Tensor
    mean_anomaly: Tensor
    inclination: Tensor | None = None
    longitude_of_node: Tensor | None = None
    argument_of_pericenter: Tensor | None = None

    def __post_init__(self) -> None:
        zeros = torch.zeros_like(torch.as_tensor(self.eccentricity, dtype=DTYPE))
        for name in ("inclination", "longitude_of_node", "argument_of_pericenter"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, zeros.clone())

    @property
    def batch_size(self) -> int:
        """Number of orbits B."""
        return int(self.eccentricity.shape[0])

    @property
    def period(self) -> Tensor:
        """Orbital period 2 pi sqrt(a**3 / (G M)), shape (B,), time units."""
        return period(self.semi_major_axis, self.total_mass)

    @property
    def masses(self) -> Tensor:
        """(B, 2) masses (M / (1 + q), q M / (1 + q))."""
        q = self.mass_ratio
        return torch.stack([self.total_mass / (1.0 + q), q * self.total_mass / (1.0 + q)], dim=-1)


def period(semi_major_axis: Tensor | float, total_mass: Tensor | float) -> Tensor:
    """Kepler period 2 pi sqrt(a**3 / (G M)).

    Args:
        semi_major_axis: a > 0, (B,) or a number, length units.
        total_mass: M > 0, (B,) or a number, mass units.

    Returns:
        float64 periods, broadcast shape of the inputs, time units.
    """
    a = torch.as_tensor(semi_major_axis, dtype=DTYPE)
    gm = gravity.GRAVITATIONAL_CONSTANT * torch.as_tensor(total_mass, dtype=DTYPE)
    return 2.0 * math.pi * (a**3 / gm).sqrt()


def solve_kepler(mean_anomaly: Tensor, eccentricity: Tensor, max_iterations: int = 64) -> Tensor:
    """Eccentric anomaly E solving Kepler's equation M = E - e sin E, vectorized Newton iteration.

    Newton's method started at E = pi converges for every 0 <= e < 1 and every M (Charles &
    Tatum 1998, Celest. Mech. 69, 357); iterations stop once every correction is at round-off.

    Args:
        mean_anomaly: (B,) mean anomalies M, radians, any value (reduced to [0, 2 pi)).
        eccentricity: (B,) eccentricities in [0, 1).
        max_iterations: cap on Newton iterations (about 10 suffice even at e = 0.999).

    Returns:
        (B,) float64 eccentric anomalies in [0, 2 pi], radians.
    """
    mean_anomaly = torch.remainder(torch.as_tensor(mean_anomaly, dtype=DTYPE), 2.0 * math.pi)
    eccentricity = torch.as_tensor(eccentricity, dtype=DTYPE)
    anomaly = torch.full_like(mean_anomaly, math.pi)
    for _ in range(max_iterations):
        residual = anomaly - eccentricity * torch.sin(anomaly) - mean_anomaly
        correction = residual / (1.0 - eccentricity * torch.cos(anomaly))
        anomaly = anomaly - correction
        if not bool((correction.abs() > 1e-15 * (1.0 + anomaly.abs())).any()):
            break
    return anomaly


def mean_anomaly_from_true(true_anomaly: Tensor, eccentricity: Tensor) -> Tensor:
    """Mean anomaly of the orbital position with true anomaly nu.

    Args:
        true_anomaly: (B,) true anomalies nu, radians.
        eccentricity: (B,) eccentricities in [0, 1).

    Returns:
        (B,) float64 mean anomalies M in [0, 2 pi), radians.
    """
    true_anomaly = torch.as_tensor(true_anomaly, dtype=DTYPE)
    eccentricity = torch.as_tensor(eccentricity, dtype=DTYPE)
    half = 0.5 * true_anomaly
    eccentric = 2.0 * torch.atan2(
        (1.0 - eccentricity).sqrt() * torch.sin(half), (1.0 + eccentricity).sqrt() * torch.cos(half)
    )
    return torch.remainder(eccentric - eccentricity * torch.sin(eccentric), 2.0 * math.pi)


def orientation_matrix(inclination: Tensor, longitude_of_node: Tensor, argument_of_pericenter: Tensor) -> Tensor:
    """Euler rotation R_z(Omega) R_x(i) R_z(omega) taking the orbital plane to space.

    Args:
        inclination: (B,) i, radians.
        longitude_of_node: (B,) Omega, radians.
        argument_of_pericenter: (B,) omega, radians.

    Returns:
        (B, 3, 3) float64 rotation matrices; column 0 is the pericenter direction, column 2 the
        orbit normal (the direction of the angular momentum).
    """
    return _rotation_z(longitude_of_node) @ _rotation_x(inclination) @ _rotation_z(argument_of_pericenter)


def relative_orbit(elements: KeplerElements, dim: int = 2) -> tuple[Tensor, Tensor]:
    """Relative position and velocity of a two-body Kepler orbit at its mean anomaly.

    The relative vector points from body 0 to body 1 and moves as a test particle around a
    fixed mass G M (M the total mass): r = a (cos E - e, sqrt(1 - e**2) sin E) and
    v = sqrt(G M / a) / (1 - e cos E) (-sin E, sqrt(1 - e**2) cos E) in the orbital plane, then
    rotated (module docstring).

    Args:
        elements: B orbits.
        dim: 2 or 3. In 2-D every inclination must be 0 or pi.

    Returns:
        ((B, dim) relative positions, (B, dim) relative velocities), float64, length and
        length / time units.

    Raises:
        ValueError: dim not 2 or 3, or a non-coplanar inclination in 2-D.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    e, a = elements.eccentricity.to(DTYPE), elements.semi_major_axis.to(DTYPE)
    anomaly = solve_kepler(elements.mean_anomaly, e)
    cos_e, sin_e = torch.cos(anomaly), torch.sin(anomaly)
    root = (1.0 - e**2).sqrt()
    zeros = torch.zeros_like(e)
    speed = (gravity.GRAVITATIONAL_CONSTANT * elements.total_mass.to(DTYPE) / a).sqrt() / (1.0 - e * cos_e)
    plane_position = torch.stack([a * (cos_e - e), a * root * sin_e, zeros], dim=-1)
    plane_velocity = torch.stack([-speed * sin_e, speed * root * cos_e, zeros], dim=-1)
    inclination = elements.inclination.to(DTYPE)
    if dim == 2:
        if bool((torch.sin(inclination).abs() > _COPLANAR_TOLERANCE).any()):
            raise ValueError("a 2-D orbit must have inclination 0 (prograde) or pi (retrograde)")
        # exactly coplanar: cos i = +-1, sin i = 0
        inclination = torch.where(torch.cos(inclination) > 0, zeros, torch.full_like(e, math.pi))
    # in 2-D the x-y block of the rotation involves cos i only, so dropping z is exact
    rotation = orientation_matrix(
        inclination, elements.longitude_of_node.to(DTYPE), elements.argument_of_pericenter.to(DTYPE)
    )
    position = (rotation @ plane_position.unsqueeze(-1)).squeeze(-1)
    velocity = (rotation @ plane_velocity.unsqueeze(-1)).squeeze(-1)
    return position[:, :dim].contiguous(), velocity[:, :dim].contiguous()


def kepler_binary(elements: KeplerElements, dim: int = 2, softening: float | Tensor = 0.0) -> State:
    """Two bodies on the Kepler orbit given by ``elements``, centre of mass at rest at the origin.

    Body 0 has mass M / (1 + q), body 1 has mass q M / (1 + q); the relative orbit of body 1
    about body 0 is :func:`relative_orbit`.

    Args:
        elements: B orbits.
        dim: 2 or 3.
        softening: Plummer softening of the returned state, one number or (B,), length units
            (0 gives the exact Kepler problem; any softening changes the orbit).

    Returns:
        A state of shape (B, 2, dim), float64.
    """
    relative_position, relative_velocity = relative_orbit(elements, dim)
    masses = elements.masses.to(DTYPE)
    return State.from_arrays(*two_body_frame(relative_position, relative_velocity, masses), masses, softening)


def two_body_frame(relative_position: Tensor, relative_velocity: Tensor, masses: Tensor) -> tuple[Tensor, Tensor]:
    """Positions and velocities of two bodies about their common centre of mass.

    Args:
        relative_position: (B, D) x1 - x0.
        relative_velocity: (B, D) v1 - v0.
        masses: (B, 2) masses (m0, m1).

    Returns:
        ((B, 2, D) positions, (B, 2, D) velocities): body 0 at -m1 / M r, body 1 at +m0 / M r,
        so the centre of mass is at the origin and the momentum is zero.
    """
    fractions = (masses / masses.sum(dim=-1, keepdim=True)).flip(-1).unsqueeze(-1)  # (B, 2, 1): m1/M, m0/M
    signs = torch.tensor([-1.0, 1.0], dtype=DTYPE, device=masses.device).view(1, 2, 1)
    return signs * fractions * relative_position.unsqueeze(1), signs * fractions * relative_velocity.unsqueeze(1)


def osculating_elements(
    relative_position: Tensor, relative_velocity: Tensor, total_mass: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Osculating semi-major axis and eccentricity of relative two-body motion.

    Args:
        relative_position: (B, D) relative positions, length units.
        relative_velocity: (B, D) relative velocities, length / time units.
        total_mass: (B,) or a number, the mass G M the relative vector orbits.

    Returns:
        ((B,) semi-major axes a = 1 / (2 / r - v**2 / (G M)), negative for unbound motion;
        (B,) eccentricities |e| of the Laplace-Runge-Lenz vector
        e = ((v**2 - G M / r) r - (r . v) v) / (G M)), float64.
    """
    r = relative_position.norm(dim=-1)
    gm = gravity.GRAVITATIONAL_CONSTANT * torch.as_tensor(total_mass, dtype=DTYPE).expand(r.shape)
    speed_square = relative_velocity.square().sum(dim=-1)
    semi_major_axis = 1.0 / (2.0 / r - speed_square / gm)
    radial = (relative_position * relative_velocity).sum(dim=-1, keepdim=True)
    vector = (speed_square - gm / r).unsqueeze(-1) * relative_position - radial * relative_velocity
    return semi_major_axis, vector.norm(dim=-1) / gm


def _rotation_z(angle: Tensor) -> Tensor:
    """(B, 3, 3) rotations by ``angle`` (B,) radians about the z axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).view(-1, 3, 3)


def _rotation_x(angle: Tensor) -> Tensor:
    """(B, 3, 3) rotations by ``angle`` (B,) radians about the x axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([one, zero, zero, zero, c, -s, zero, s, c], dim=-1).view(-1, 3, 3)
