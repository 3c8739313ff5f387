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

Shapes: B systems, N bodies, D = 2 or 3 dimensions; float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ORBITS = ("static", "circular")


@dataclass(frozen=True)
class TidalField:
    """A point-mass host's tidal field on each of B systems.

    Attributes:
        host_mass: (B,) M > 0 (mass units).
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

    def host_at(self, time: Tensor) -> Tensor:
        """(B, D) the host's position at ``time`` (B,): R(0) turned by Omega t in the x-y plane."""
        angle = self.rotation * time
        cos, sin = angle.cos(), angle.sin()
        x, y = self.host_position[:, 0], self.host_position[:, 1]
        turned = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=1)
        return torch.cat([turned, self.host_position[:, 2:]], dim=1)

    def accelerations(self, positions: Tensor, time: Tensor) -> Tensor:
        """(B, N, D) the tidal accelerations a(x) of bodies at ``positions`` (B, N, D) at ``time`` (B,)."""
        host = self.host_at(time).unsqueeze(1)  # (B, 1, D)
        toward = host - positions
        eps2 = self.softening.square().view(-1, 1)
        square = toward.square().sum(dim=-1) + eps2  # (B, N)
        host_square = host.square().sum(dim=-1) + eps2  # (B, 1)
        mass = self.host_mass.view(-1, 1, 1)
        pull = toward / (square * square.sqrt()).unsqueeze(-1)
        origin_pull = host / (host_square * host_square.sqrt()).unsqueeze(-1)
        return mass * (pull - origin_pull)

    def potential_energy(self, positions: Tensor, masses: Tensor, time: Tensor) -> Tensor:
        """(B,) sum_i m_i Phi(x_i) of bodies at ``positions`` (B, N, D) with ``masses`` (B, N)."""
        host = self.host_at(time).unsqueeze(1)
        eps2 = self.softening.square().view(-1, 1)
        square = (host - positions).square().sum(dim=-1) + eps2
        host_square = host.square().sum(dim=-1) + eps2
        along = (positions * host).sum(dim=-1)
        phi = -self.host_mass.view(-1, 1) * (
            square.rsqrt() - host_square.rsqrt() - along / (host_square * host_square.sqrt())
        )
        return (masses * phi).sum(dim=-1)

    def rotation_term(self, positions: Tensor, velocities: Tensor, masses: Tensor) -> Tensor:
        """(B,) -Omega L_z (0 for a static host), the Jacobi integral's addition to the energy."""
        momenta = masses.unsqueeze(-1) * velocities
        spin = (positions[..., 0] * momenta[..., 1] - positions[..., 1] * momenta[..., 0]).sum(dim=-1)
        return -self.rotation * spin

    def map(self, fn: Callable[[Tensor], Tensor]) -> TidalField:
        """The field with ``fn`` applied to each per-system tensor (selection, repetition)."""
        return TidalField(*(fn(t) for t in self._tensors()))

    def combine(self, other: TidalField, fn: Callable[[Tensor, Tensor], Tensor]) -> TidalField:
        """Per-system tensors of two fields combined by ``fn`` (replacement, choice)."""
        return TidalField(*(fn(a, b) for a, b in zip(self._tensors(), other._tensors(), strict=True)))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.host_mass, self.host_position, self.softening, self.rotation)
