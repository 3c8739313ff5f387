"""The state of a batch of independent N-body systems."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from aitimestepper.physics import gravity
from aitimestepper.physics.external import TidalField

DTYPE = torch.float64


@dataclass(frozen=True)
class State:
    """B independent gravitating systems of N bodies in D = 2 or 3 dimensions, float64.

    The acceleration at the current positions is carried along so that a kick-drift-kick step
    needs one force evaluation, not two.

    Attributes:
        positions: (B, N, D) positions.
        velocities: (B, N, D) velocities.
        masses: (B, N) masses, positive.
        accelerations: (B, N, D) gravitational accelerations at ``positions``.
        time: (B,) time of each system since its start.
        softening: (B,) Plummer softening length of each system (length units, >= 0).
        external: the tidal field of a host on each system (:mod:`aitimestepper.physics.external`),
            or None. With a field, ``accelerations`` include it and :meth:`energy` is the quantity
            the leapfrog conserves in it (the energy with the field's potential, or the Jacobi
            integral for a host on a circular orbit).
    """

    positions: Tensor
    velocities: Tensor
    masses: Tensor
    accelerations: Tensor
    time: Tensor
    softening: Tensor
    external: TidalField | None = None

    @classmethod
    def from_arrays(
        cls,
        positions: Tensor,
        velocities: Tensor,
        masses: Tensor,
        softening: float | Tensor = 0.0,
        external: TidalField | None = None,
    ) -> State:
        """Build a validated state at time 0, computing the accelerations.

        Args:
            positions: (B, N, D) positions, or (N, D) for one system; converted to float64.
            velocities: same shape as ``positions``.
            masses: (B, N) positive masses, or (N,) for one system.
            softening: Plummer softening length >= 0: one for every system, or (B,).
            external: a tidal field (:class:`TidalField`, one host per system, or one host for
                every system), or None.

        Raises:
            ValueError: naming the offending array (and system and bodies) and the rule it breaks:
                bad shapes, non-finite values, non-positive masses, negative softening, two
                bodies at the same place without softening, non-finite accelerations, a
                non-finite energy (numbers too large for float64) or an energy of exactly 0
                (where the relative energy error every policy is gated on is undefined).
        """
        positions = torch.as_tensor(positions, dtype=DTYPE)
        velocities = torch.as_tensor(velocities, dtype=DTYPE)
        masses = torch.as_tensor(masses, dtype=DTYPE)
        if positions.ndim == 2:
            positions, velocities = positions[None], velocities[None]
        if masses.ndim == 1:
            masses = masses[None]
        _validate_arrays(positions, velocities, masses)
        softening = _validated_softening(softening, positions.shape[0])
        _refuse_coincident_bodies(positions, softening)
        external = _matching_field(external, positions)
        time = torch.zeros(positions.shape[0], dtype=DTYPE, device=positions.device)
        accelerations = total_accelerations(positions, masses, softening, external, time)
        broken = ~accelerations.isfinite().all(dim=2)  # (B, N)
        if bool(broken.any()):
            system, body = broken.nonzero()[0].tolist()
            raise ValueError(
                f"system {system}: the acceleration of body {body} is not finite (bodies too close or too massive "
                "for float64)"
            )
        energy = conserved_energy(positions, velocities, masses, softening, external, time)
        if not bool(energy.isfinite().all()):
            systems = (~energy.isfinite()).nonzero().flatten().tolist()
            raise ValueError(
                f"system(s) {systems}: the energy is not finite (velocities or masses too large for float64)"
            )
        if bool((energy == 0).any()):
            systems = (energy == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"system(s) {systems}: the energy is exactly 0, where the relative energy error |E1 - E0| / |E0| "
                "that every step is gated on is undefined"
            )
        return cls(
            positions=positions,
            velocities=velocities,
            masses=masses,
            accelerations=accelerations,
            time=time,
            softening=softening,
            external=external,
        )

    @property
    def batch_size(self) -> int:
        """Number of systems B."""
        return self.positions.shape[0]

    @property
    def num_bodies(self) -> int:
        """Number of bodies per system N."""
        return self.positions.shape[1]

    @property
    def dim(self) -> int:
        """Spatial dimension D."""
        return self.positions.shape[2]

    def energy(self) -> Tensor:
        """Total energy of each system, shape (B,): with a tidal field, the conserved quantity
        (see :func:`conserved_energy`)."""
        return conserved_energy(self.positions, self.velocities, self.masses, self.softening, self.external, self.time)

    def momentum(self) -> Tensor:
        """Linear momentum of each system, shape (B, D)."""
        return gravity.linear_momentum(self.velocities, self.masses)

    def angular_momentum(self) -> Tensor:
        """Angular momentum of each system: (B,) for D = 2, (B, 3) for D = 3."""
        return gravity.angular_momentum(self.positions, self.velocities, self.masses)

    def free_fall_time(self) -> Tensor:
        """Shortest pairwise free-fall time of each system, shape (B,)."""
        return gravity.min_free_fall_time(self.positions, self.masses, self.softening)

    def finite_mask(self) -> Tensor:
        """(B,) bool, True where positions, velocities and accelerations are all finite."""
        values = torch.cat([self.positions, self.velocities, self.accelerations], dim=-1)
        return values.isfinite().flatten(start_dim=1).all(dim=1)

    def detach(self) -> State:
        """The same state cut from any autograd graph."""
        return self._map(lambda t: t.detach())

    def select(self, index: Tensor) -> State:
        """The systems picked by ``index`` (a (B,) bool mask or a 1-D index tensor)."""
        return self._map(lambda t: t[index])

    def repeat_interleave(self, repeats: int) -> State:
        """Each system repeated ``repeats`` times in a row: (B,) -> (B * repeats,)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def replace_rows(self, index: Tensor, rows: State) -> State:
        """A copy with the systems at ``index`` (1-D indices) replaced by the systems of ``rows``."""
        return self._combine(rows, lambda mine, theirs: mine.index_copy(0, index, theirs))

    def where(self, condition: Tensor, other: State) -> State:
        """Per system: this state where ``condition`` (B,) is True, ``other`` elsewhere."""

        def pick(mine: Tensor, theirs: Tensor) -> Tensor:
            shape = (-1,) + (1,) * (mine.ndim - 1)
            return torch.where(condition.view(shape), mine, theirs)

        return self._combine(other, pick)

    @property
    def field(self) -> TidalField:
        """The tidal field of every system: ``external``, or one of mass 0 (none) on each."""
        return self.external if self.external is not None else TidalField.absent(self.batch_size, self.dim)

    @staticmethod
    def concatenate(states: Sequence[State]) -> State:
        """Join batches of systems with the same N and D along the batch axis (systems without a
        field among systems with one get a host of mass 0: none)."""
        joined = State(*(torch.cat(arrays) for arrays in zip(*(s._arrays() for s in states), strict=True)))
        if all(s.external is None for s in states):
            return joined
        first, *rest = (s.field for s in states)
        for field in rest:
            first = first.combine(field, lambda mine, theirs: torch.cat([mine, theirs]))
        return replace(joined, external=first)

    def _arrays(self) -> tuple[Tensor, ...]:
        return (self.positions, self.velocities, self.masses, self.accelerations, self.time, self.softening)

    def _map(self, fn) -> State:
        external = None if self.external is None else self.external.map(fn)
        return State(*(fn(array) for array in self._arrays()), external=external)

    def _combine(self, other: State, fn) -> State:
        both_absent = self.external is None and other.external is None
        external = None if both_absent else self.field.combine(other.field, fn)
        arrays = (fn(mine, theirs) for mine, theirs in zip(self._arrays(), other._arrays(), strict=True))
        return State(*arrays, external=external)


def total_accelerations(
    positions: Tensor, masses: Tensor, softening: Tensor, external: TidalField | None, time: Tensor
) -> Tensor:
    """(B, N, D) the bodies' mutual gravity plus, with a field, its tidal pull at ``time`` (B,)."""
    pairwise = gravity.accelerations(positions, masses, softening)
    return pairwise if external is None else pairwise + external.accelerations(positions, time)


def conserved_energy(
    positions: Tensor,
    velocities: Tensor,
    masses: Tensor,
    softening: Tensor,
    external: TidalField | None,
    time: Tensor,
) -> Tensor:
    """(B,) what the leapfrog conserves: the total energy; with a tidal field, plus the bodies'
    potential in it, minus Omega L_z for a host on a circular orbit (the Jacobi integral)."""
    energy = gravity.total_energy(positions, velocities, masses, softening)
    if external is None:
        return energy
    return (
        energy
        + external.potential_energy(positions, masses, time)
        + external.rotation_term(positions, velocities, masses)
    )


def _matching_field(external: TidalField | None, positions: Tensor) -> TidalField | None:
    """The field for B systems of dimension D: one host for every system is repeated."""
    if external is None:
        return None
    batch, dim = positions.shape[0], positions.shape[2]
    if external.host_position.shape[1] != dim:
        raise ValueError(
            f"external field: host_position has {external.host_position.shape[1]} components, the systems {dim}"
        )
    if external.host_mass.shape[0] == 1 and batch > 1:
        return external.map(lambda t: t.expand(batch, *t.shape[1:]).clone())
    if external.host_mass.shape[0] != batch:
        raise ValueError(f"external field: {external.host_mass.shape[0]} hosts for {batch} systems")
    return external


def _validate_arrays(positions: Tensor, velocities: Tensor, masses: Tensor) -> None:
    """Refuse arrays a simulation cannot start from, naming the array and the rule."""
    if positions.ndim != 3 or positions.shape[-1] not in (2, 3):
        raise ValueError(f"positions must have shape (B, N, D) with D in {{2, 3}}, got {tuple(positions.shape)}")
    if velocities.shape != positions.shape:
        raise ValueError(
            f"velocities must have the shape of positions {tuple(positions.shape)}, got {tuple(velocities.shape)}"
        )
    if masses.shape != positions.shape[:2]:
        raise ValueError(f"masses must have shape (B, N) = {tuple(positions.shape[:2])}, got {tuple(masses.shape)}")
    if positions.shape[1] < 2:
        raise ValueError(f"a system needs at least 2 bodies, got N = {positions.shape[1]}")
    for name, array in (("positions", positions), ("velocities", velocities), ("masses", masses)):
        bad = ~array.isfinite()
        if bool(bad.any()):
            system, body = bad.reshape(*array.shape[:2], -1).any(dim=2).nonzero()[0].tolist()
            raise ValueError(
                f"system {system}: {name} of body {body} must be finite, got {array[system, body].tolist()}"
            )
    bad = ~(masses > 0)
    if bool(bad.any()):
        system, body = bad.nonzero()[0].tolist()
        raise ValueError(f"system {system}: the mass of body {body} must be > 0, got {masses[system, body].item()}")


def _validated_softening(softening: float | Tensor, batch: int) -> Tensor:
    """(B,) float64 softening lengths from one value or B values, each finite and >= 0."""
    values = torch.as_tensor(softening, dtype=DTYPE)
    if values.ndim == 0:
        values = values.expand(batch).clone()
    if values.shape != (batch,):
        raise ValueError(f"softening must be one value or one per system ({batch}), got shape {tuple(values.shape)}")
    if not bool((values.isfinite() & (values >= 0)).all()):
        raise ValueError(f"softening must be finite and >= 0, got {values.tolist()}")
    return values


def _refuse_coincident_bodies(positions: Tensor, softening: Tensor) -> None:
    """Two bodies at the same place without softening have an infinite force between them."""
    separations = gravity.pair_separations(positions).square().sum(dim=1)  # (B, N, N)
    separations.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    coincident = (separations == 0) & (softening == 0).view(-1, 1, 1)
    if bool(coincident.any()):
        system, first, second = coincident.triu().nonzero()[0].tolist()
        raise ValueError(
            f"system {system}: bodies {first} and {second} are at the same position without softening "
            f"(infinite force); move them apart or set a softening length > 0"
        )
