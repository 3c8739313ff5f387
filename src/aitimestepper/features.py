"""Dimensionless, order- and translation-invariant features of a state and its history.

Every feature is a ratio of quantities built from G, the masses, the separations and the
relative velocities, so it does not change when lengths and masses are rescaled (with velocities
scaling as sqrt(mass / length), as the dynamics demands) or when the bodies are relabelled or the
system is translated or boosted. A model fed with them can transfer across scales.

The *critical pair* of a snapshot is the pair with the shortest free-fall time; the time step of
a gravitational system is dictated by it.

Families (F = features per snapshot, H = ``history_len``):
    ``basic``: per snapshot [log k, cos phi] of the critical pair, where
        k = v**2 r / (G (m_i + m_j)) (twice the pair's kinetic-to-potential ratio) and
        cos phi = (r . v) / (|r| |v|) (approaching < 0 < receding). F = 2, dim = 2 (H + 1).
    ``rich``: ``basic`` plus the critical pair's eccentricity, log mass ratio (small/large),
        log(min / mean pairwise free-fall time) and log of the system's virial ratio
        2 K / |W| (K in the centre-of-mass frame). F = 6, dim = 6 (H + 1).
    ``delta_mag``: ``basic`` of the current state plus, for each past state, the log ratios of
        the critical pair's separation and relative speed to their current values.
        dim = 2 + 2 H.

Past states not yet seen are zero-padded (never NaN); :meth:`History.warming_up` flags them.
Each state is looked at once: its :class:`Snapshot` rows are computed when a dt is proposed for
it and kept in the :class:`History` window afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.physics import gravity
from aitimestepper.physics.state import State

FeatureFamily = Literal["basic", "rich", "delta_mag"]
FEATURE_FAMILIES: tuple[str, ...] = ("basic", "rich", "delta_mag")
_PER_SNAPSHOT = {"basic": 2, "rich": 6}
_TINY = 1e-300
_LOG_FLOOR = 1e-12


def feature_dim(family: str, history_len: int) -> int:
    """Length of the feature vector of ``family`` over ``history_len`` past states."""
    if family == "delta_mag":
        return 2 + 2 * history_len
    if family not in _PER_SNAPSHOT:
        raise ValueError(f"unknown feature family {family!r}; choose one of {FEATURE_FAMILIES}")
    return _PER_SNAPSHOT[family] * (history_len + 1)


@dataclass(frozen=True)
class Snapshot:
    """What a policy learns from one look at the current states.

    Attributes:
        rows: (B, Q) float64 per-snapshot quantities (``Q = snapshot_width(family)``), the
            entries a :class:`History` keeps once the step is taken.
        free_fall_time: (B,) shortest pairwise free-fall time, as :meth:`State.free_fall_time`
            gives it (time units).
    """

    rows: Tensor
    free_fall_time: Tensor


def snapshot_width(family: str) -> int:
    """Quantities Q per snapshot of ``family``: 2 for ``basic``, 6 for ``rich``, and for
    ``delta_mag`` the 2 of ``basic`` plus log r and log v of the critical pair."""
    if family not in FEATURE_FAMILIES:
        raise ValueError(f"unknown feature family {family!r}; choose one of {FEATURE_FAMILIES}")
    return _PER_SNAPSHOT.get(family, _PER_SNAPSHOT["basic"] + 2)


def snapshot(state: State, family: FeatureFamily) -> Snapshot:
    """One pairwise pass over B current states: their snapshot rows and free-fall times.
    No gradient flows back into the states."""
    if family not in FEATURE_FAMILIES:
        raise ValueError(f"unknown feature family {family!r}; choose one of {FEATURE_FAMILIES}")
    with torch.no_grad():
        state = state.detach()
        rows, free_fall = _snapshot_quantities(
            state.positions,
            state.velocities,
            state.masses,
            state.softening,
            rich=family == "rich",
            scales=family == "delta_mag",
        )
    return Snapshot(rows, free_fall)


def assemble(current: Tensor, history: History, family: FeatureFamily) -> Tensor:
    """Feature vectors from the current snapshot rows and the window of past ones.

    Args:
        current: (B, Q) snapshot rows of the current states.
        history: their past snapshot rows (H slots each, most recent first).
        family: ``basic``, ``rich`` or ``delta_mag``.

    Returns:
        (B, feature_dim(family, H)) float64 features; slots not yet filled contribute zeros.
    """
    if history.length == 0:
        return current[:, : feature_dim(family, 0)]
    slots = torch.arange(history.length + 1, device=current.device)
    valid = (slots.unsqueeze(0) <= history.filled.unsqueeze(1)).to(current.dtype)
    if family == "delta_mag":
        log_scales = history.rows[:, :, -2:]
        deltas = (log_scales - current[:, None, -2:]) * valid[:, 1:, None]
        return torch.cat([current[:, :2], deltas.flatten(1)], dim=1)
    per_snapshot = _PER_SNAPSHOT[family]
    window = torch.cat([current[:, None, :per_snapshot], history.rows[:, :, :per_snapshot]], dim=1)
    return (window * valid[:, :, None]).flatten(1)


def compute_features(state: State, history: History, family: FeatureFamily) -> Tensor:
    """Feature vectors of B systems: :func:`assemble` of their :func:`snapshot`.

    Args:
        state: the current states (B systems).
        history: their past snapshot rows (H slots each, most recent first).
        family: ``basic``, ``rich`` or ``delta_mag``.

    Returns:
        (B, feature_dim(family, H)) float64 features, finite for finite states.
    """
    return assemble(snapshot(state, family).rows, history, family)


def _snapshot_quantities(
    positions: Tensor, velocities: Tensor, masses: Tensor, softening: float, rich: bool, scales: bool
) -> tuple[Tensor, Tensor]:
    """Per-snapshot quantities, shape (M, 2), (M, 6) with ``rich`` or (M, 4) with ``scales``,
    and the shortest free-fall time of each snapshot (M,).

    Columns: log k and cos phi of the critical pair; with ``rich`` then its eccentricity and
    log mass ratio, log(min / mean free-fall time) and log virial ratio; with ``scales`` log r and log v of
    the critical pair (not scale-free: only their differences over time are used). One pairwise
    pass over positions finds the critical pair; everything else is per pair.
    """
    separations = gravity.pair_separations(positions)  # (M, D, N, N)
    square = gravity.softened_square_distances(separations, softening)  # (M, N, N), inf on diagonal
    pair_mass_matrix = masses.unsqueeze(-1) + masses.unsqueeze(-2)
    free_fall_squared = gravity.free_fall_squared(square, pair_mass_matrix)
    count, dim, n_bodies = separations.shape[:3]
    shortest_squared, critical = free_fall_squared.flatten(1).min(dim=1, keepdim=True)  # (M, 1): pair i * N + j
    pair = torch.cat([critical // n_bodies, critical % n_bodies], dim=1)  # (M, 2): bodies i, j
    r_vec = separations.flatten(2).gather(2, critical.unsqueeze(1).expand(count, dim, 1)).squeeze(2)  # x_j - x_i
    pair_velocities = velocities.gather(1, pair.unsqueeze(-1).expand(count, 2, dim))  # (M, 2, D)
    v_vec = pair_velocities[:, 1] - pair_velocities[:, 0]
    pair_mass = pair_mass_matrix.flatten(1).gather(1, critical).squeeze(1)
    distance = square.flatten(1).gather(1, critical).squeeze(1).sqrt()
    bare_distance = r_vec.norm(dim=-1)
    speed = v_vec.norm(dim=-1)
    gm = gravity.GRAVITATIONAL_CONSTANT * pair_mass
    kinetic_ratio = speed.square() * distance / gm
    radial = (r_vec * v_vec).sum(-1)
    cos_phi = radial / (bare_distance * speed).clamp_min(_TINY)
    columns = [(kinetic_ratio + _LOG_FLOOR).log(), cos_phi]
    if rich:
        # eccentricity vector ((v^2 - GM/r) r - (r . v) v) / GM, free of cancellation at e = 0
        eccentricity_vector = (
            (speed.square() - gm / bare_distance.clamp_min(_TINY)).unsqueeze(-1) * r_vec - radial.unsqueeze(-1) * v_vec
        ) / gm.unsqueeze(-1)
        eccentricity = eccentricity_vector.norm(dim=-1)
        small, large = masses.gather(1, pair).aminmax(dim=1)
        off_diagonal = ~torch.eye(n_bodies, dtype=torch.bool, device=positions.device)
        mean_free_fall = free_fall_squared[:, off_diagonal].sqrt().mean(dim=1)
        columns += [
            eccentricity,
            (small / large).log(),
            (shortest_squared.squeeze(1).sqrt() / mean_free_fall).log(),
            (_virial_ratio(positions, velocities, masses, softening) + _LOG_FLOOR).log(),
        ]
    if scales:
        columns += [distance.clamp_min(_TINY).log(), speed.clamp_min(_TINY).log()]
    return torch.stack(columns, dim=1), shortest_squared.squeeze(1).sqrt()


def _virial_ratio(positions: Tensor, velocities: Tensor, masses: Tensor, softening: float) -> Tensor:
    """2 K / |W| with K measured in the centre-of-mass frame, shape (M,)."""
    weights = (masses / masses.sum(dim=1, keepdim=True)).unsqueeze(-1)
    com_velocity = (weights * velocities).sum(dim=1, keepdim=True)
    kinetic = gravity.kinetic_energy(velocities - com_velocity, masses)
    potential = gravity.potential_energy(positions, masses, softening)
    return 2.0 * kinetic / potential.abs().clamp_min(_TINY)
