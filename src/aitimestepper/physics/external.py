"""The tidal field of a distant point-mass host on batches of systems (G = 1), and the quantity a
leapfrog step conserves in it.

Each system is integrated in a non-rotating frame whose origin falls freely in the host's field:
a body at x feels, besides the other bodies, the host's pull minus the pull on the origin,

    a(x) = M [(R - x) / |R - x|_s**3 - R / |R|_s**3],
    Phi(x) = -M [1 / |R - x|_s - 1 / |R|_s - x . R / |R|_s**3],     a = -grad Phi,

with R the host's position relative to the origin and |y|_s = sqrt(|y|**2 + eps**2) (eps the
host's softening; Phi(0) = 0). The host is either **static** (R fixed) or on a **circular** orbit
around the origin (the origin's own orbit seen from it): R turns in the x-y plane at
Omega = sqrt(M / |R|_s**3), counter-clockwise. Conserved along exact trajectories:

- static: the energy E = K + W + sum_i m_i Phi(x_i);
- circular: the Jacobi integral E_J = E - Omega L_z, L_z the z component of the angular momentum
  about the origin (Phi is unchanged when x and R turn together, so dE/dt = Omega dL_z/dt).

A host of mass 0 means no field (:meth:`TidalField.absent`): batches may mix systems in a field
with systems without one.

Shapes: B systems, N bodies, D = 2 or 3 dimensions; float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

ORBITS = ("static", "circular")
#: the per-system tensors of a field, by name (:meth:`TidalField.as_dict`)
_NAMES = ("host_mass", "host_position", "host_softening", "rotation")


@dataclass(frozen=True)
class TidalField:
    """A point-mass host's tidal field on each of B systems.

    Attributes:
        host_mass: (B,) M > 0 (mass units); 0 for a system without a field.
        host_position: (B, D) R at time 0, relative to the system's origin (length units).
        softening: (B,) eps >= 0 of the host's pull (length units).
        rotation: (B,) Omega: 0 for a static host, sqrt(M / |R|_s**3) on a circular orbit.
    """

    host_mass: Tensor
    host_position: Tensor
    softening: Tensor
    rotation: Tensor

    @classmethod
    def build(
        cls, host_mass: Tensor, host_position: Tensor, orbit: str = "static", softening: float | Tensor = 0.0
    ) -> TidalField:
        """A validated field for B systems (one host each) from its masses (B,), positions
        (B, D) at time 0 and orbit (``static`` or ``circular``, for all).

        Raises:
            ValueError: naming the quantity and its rule: masses finite and > 0, positions
                finite, of shape (B, D) with D in {2, 3}, not at the origin unless softened,
                softening finite and >= 0, orbit one of ``ORBITS``.
        """
        dtype = torch.float64
        host_mass = torch.as_tensor(host_mass, dtype=dtype).reshape(-1)
        host_position = torch.as_tensor(host_position, dtype=dtype)
        if host_position.ndim == 1:
            host_position = host_position[None]
        batch = host_position.shape[0]
        if host_mass.numel() == 1:
            host_mass = host_mass.expand(batch).clone()
        if orbit not in ORBITS:
            raise ValueError(f"external field: orbit must be one of {list(ORBITS)}, got {orbit!r}")
        if host_position.ndim != 2 or host_position.shape[1] not in (2, 3):
            raise ValueError(
                f"external field: host_position must have shape (D,) or (B, D) with D in {{2, 3}}, "
                f"got {tuple(host_position.shape)}"
            )
        if host_mass.shape != (batch,):
            raise ValueError(f"external field: host_mass must be one number or {batch}, got {host_mass.numel()}")
        if not bool((host_mass.isfinite() & (host_mass > 0)).all()):
            raise ValueError(f"external field: host_mass must be finite and > 0, got {host_mass.tolist()}")
        if not bool(host_position.isfinite().all()):
            raise ValueError(f"external field: host_position must be finite, got {host_position.tolist()}")
        softening = torch.as_tensor(softening, dtype=dtype).expand(batch).clone()
        if not bool((softening.isfinite() & (softening >= 0)).all()):
            raise ValueError(f"external field: softening must be finite and >= 0, got {softening.tolist()}")
        square = host_position.square().sum(dim=1) + softening.square()
        if not bool((square > 0).all()):
            raise ValueError("external field: host_position must not be the origin (without softening)")
        rotation = (host_mass / (square * square.sqrt())).sqrt() if orbit == "circular" else torch.zeros_like(square)
        return cls(host_mass, host_position, softening, rotation)

    @classmethod
    def absent(cls, batch: int, dim: int) -> TidalField:
        """No field on any of ``batch`` systems in ``dim`` dimensions: hosts of mass 0 (at a unit
        distance, so that every expression stays finite)."""
        zeros = torch.zeros(batch, dtype=torch.float64)
        position = torch.zeros(batch, dim, dtype=torch.float64)
        position[:, 0] = 1.0
        return cls(zeros, position, zeros.clone(), zeros.clone())

    @property
    def present(self) -> Tensor:
        """(B,) bool: which systems feel a field (host mass > 0)."""
        return self.host_mass > 0

    def tidal_frequency_square(self, time: Tensor) -> Tensor:
        """(B,) M / |R(time)|_s**3 (time**-2): the square of the field's frequency at the origin
        (0 without a field); the tidal tensor's largest eigenvalue is 3 times it."""
        host = self.host_at(time)
        square = host.square().sum(dim=1) + self.softening.square()
        return self.host_mass / (square * square.sqrt())

    def host_at(self, time: Tensor) -> Tensor:
        """(B, D) the host's position at ``time`` (B,): R(0) turned by Omega t in the x-y plane."""
        angle = self.rotation * time
        cos, sin = angle.cos(), angle.sin()
        x, y = self.host_position[:, 0], self.host_position[:, 1]
        turned = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=1)
        return torch.cat([turned, self.host_position[:, 2:]], dim=1)

    def accelerations(self, positions: Tensor, time: Tensor) -> Tensor:
        """(B, N, D) the tidal accelerations a(x) of bodies at ``positions`` (B, N, D) at ``time`` (B,)."""
        geometry = _Geometry.of(self.host_at(time), self.softening, positions)
        spread = geometry.closer * (geometry.host_square + geometry.host_root * geometry.root + geometry.square)
        spread = spread / (geometry.cube * geometry.host_cube)  # 1/d**3 - 1/r**3, (B, N)
        mass = self.host_mass.view(-1, 1, 1)
        pull = geometry.host * spread.unsqueeze(-1) - positions / geometry.cube.unsqueeze(-1)
        return torch.where(mass > 0, mass * pull, 0.0)

    def potential_energy(self, positions: Tensor, masses: Tensor, time: Tensor) -> Tensor:
        """(B,) sum_i m_i Phi(x_i) of bodies at ``positions`` (B, N, D) with ``masses`` (B, N)."""
        g = _Geometry.of(self.host_at(time), self.softening, positions)
        numerator = g.along * g.closer * (2.0 * g.host_root + g.root) - g.own * g.host_square
        mass = self.host_mass.view(-1, 1)
        phi = -mass * numerator / (g.root * g.host_cube * (g.root + g.host_root))
        return (masses * torch.where(mass > 0, phi, 0.0)).sum(dim=-1)

    def rotation_term(self, positions: Tensor, velocities: Tensor, masses: Tensor) -> Tensor:
        """(B,) -Omega L_z (0 for a static host), the Jacobi integral's addition to the energy."""
        momenta = masses.unsqueeze(-1) * velocities
        spin = (positions[..., 0] * momenta[..., 1] - positions[..., 1] * momenta[..., 0]).sum(dim=-1)
        return -self.rotation * spin

    def as_dict(self) -> dict[str, Tensor]:
        """The per-system tensors by name (for checkpoints and buffers; :meth:`from_dict` inverts)."""
        return dict(zip(_NAMES, self._tensors(), strict=True))

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor]) -> TidalField | None:
        """The field saved by :meth:`as_dict`; None if no system feels one (every host mass 0)."""
        field = cls(*(tensors[name] for name in _NAMES))
        return field if bool(field.present.any()) else None

    def padded_to_3d(self) -> TidalField:
        """The same field for systems embedded in 3-D (the host at z = 0 in 2-D)."""
        missing = 3 - self.host_position.shape[1]
        return replace(self, host_position=torch.nn.functional.pad(self.host_position, (0, missing)))

    def scaled(self, length: float, mass: float) -> TidalField:
        """The field in units where lengths are multiplied by ``length`` and masses by ``mass``
        (G = 1: times by sqrt(length**3 / mass))."""
        return TidalField(
            self.host_mass * mass,
            self.host_position * length,
            self.softening * length,
            self.rotation * (mass / length**3) ** 0.5,
        )

    def with_rows(self, index: Tensor, rows: TidalField) -> TidalField:
        """A copy with the systems at ``index`` (1-D indices) given the fields of ``rows``."""
        return self.combine(rows, lambda mine, theirs: mine.index_copy(0, index, theirs))

    def map(self, fn: Callable[[Tensor], Tensor]) -> TidalField:
        """The field with ``fn`` applied to each per-system tensor (selection, repetition)."""
        return TidalField(*(fn(t) for t in self._tensors()))

    def combine(self, other: TidalField, fn: Callable[[Tensor, Tensor], Tensor]) -> TidalField:
        """Per-system tensors of two fields combined by ``fn`` (replacement, choice)."""
        return TidalField(*(fn(a, b) for a, b in zip(self._tensors(), other._tensors(), strict=True)))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.host_mass, self.host_position, self.softening, self.rotation)


@dataclass(frozen=True)
class _Geometry:
    """Bodies at x (B, N, D) and the host at R (B, 1, D), for the field in forms free of
    cancellation: with d = |R - x|_s, r = |R|_s, u = x . R, 1/d - 1/r = (2 u - |x|**2) / (d r
    (d + r)) and r - d = (2 u - |x|**2) / (r + d), so the pull M [R (1/d**3 - 1/r**3) - x / d**3]
    and the potential -M [u (r - d)(2 r + d) - |x|**2 r**2] / (d r**3 (d + r)) lose no digits to
    the terms of size M / r that the plain forms subtract (the tide is (|x| / r)**2 of them).

    Attributes (B, N) unless stated: ``host`` (B, 1, D); ``square`` d**2, ``root`` d, ``cube``
    d**3; ``host_square``, ``host_root``, ``host_cube`` r**2, r, r**3 (B, 1); ``along`` u;
    ``own`` |x|**2; ``closer`` r - d."""

    host: Tensor
    square: Tensor
    root: Tensor
    cube: Tensor
    host_square: Tensor
    host_root: Tensor
    host_cube: Tensor
    along: Tensor
    own: Tensor
    closer: Tensor

    @classmethod
    def of(cls, host: Tensor, softening: Tensor, positions: Tensor) -> _Geometry:
        host = host.unsqueeze(1)
        eps2 = softening.square().view(-1, 1)
        square = (host - positions).square().sum(dim=-1) + eps2
        host_square = host.square().sum(dim=-1) + eps2
        root, host_root = square.sqrt(), host_square.sqrt()
        along = (positions * host).sum(dim=-1)
        own = positions.square().sum(dim=-1)
        return cls(
            host=host,
            square=square,
            root=root,
            cube=square * root,
            host_square=host_square,
            host_root=host_root,
            host_cube=host_square * host_root,
            along=along,
            own=own,
            closer=(2.0 * along - own) / (root + host_root),
        )
