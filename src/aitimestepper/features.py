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
"""

from __future__ import annotations

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


def compute_features(state: State, history: History, family: FeatureFamily) -> Tensor:
    """Feature vectors of B systems.

    Args:
        state: the current states (B systems).
        history: their past states (H slots each, most recent first).
        family: ``basic``, ``rich`` or ``delta_mag``.

    Returns:
        (B, feature_dim(family, H)) float64 features, finite for finite states; no gradient
        flows back into the states.
    """
    return features_and_free_fall_time(state, history, family)[0]


def features_and_free_fall_time(state: State, history: History, family: FeatureFamily) -> tuple[Tensor, Tensor]:
    """:func:`compute_features` and, from the same pairwise pass, the shortest free-fall time
    of each current state (B,), as :meth:`State.free_fall_time` gives it."""
    if family not in FEATURE_FAMILIES:
        raise ValueError(f"unknown feature family {family!r}; choose one of {FEATURE_FAMILIES}")
    with torch.no_grad():
        snapshots, valid = _stack_snapshots(state.detach(), history)
        batch, slots = valid.shape
        flat, free_fall = _snapshot_quantities(
            snapshots[0].flatten(0, 1),
            snapshots[1].flatten(0, 1),
            state.masses.detach().repeat_interleave(slots, dim=0),
            state.softening,
            rich=family == "rich",
        )
        flat = flat.view(batch, slots, -1)
        current_free_fall = free_fall.view(batch, slots)[:, 0]
        if family == "delta_mag":
            current = flat[:, 0, :2]
            log_scales = flat[:, :, -2:]
            deltas = (log_scales[:, 1:] - log_scales[:, :1]) * valid[:, 1:, None]
            return torch.cat([current, deltas.flatten(1)], dim=1), current_free_fall
        per_snapshot = _PER_SNAPSHOT[family]
        return (flat[:, :, :per_snapshot] * valid[:, :, None]).flatten(1), current_free_fall


def _stack_snapshots(state: State, history: History) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """Current state and past states as (B, H + 1, N, D) tensors, plus a (B, H + 1) valid mask.

    Unfilled slots are replaced by the current state so every snapshot is finite; the mask
    later zeroes their features.
    """
    slots = torch.arange(history.length + 1, device=history.filled.device)
    valid = slots.unsqueeze(0) <= history.filled.unsqueeze(1)
    keep = valid[:, 1:, None, None]
    past_positions = torch.where(keep, history.positions, state.positions.unsqueeze(1))
    past_velocities = torch.where(keep, history.velocities, state.velocities.unsqueeze(1))
    positions = torch.cat([state.positions.unsqueeze(1), past_positions], dim=1)
    velocities = torch.cat([state.velocities.unsqueeze(1), past_velocities], dim=1)
    return (positions, velocities), valid.to(state.positions.dtype)


def _snapshot_quantities(
    positions: Tensor, velocities: Tensor, masses: Tensor, softening: float, rich: bool
) -> tuple[Tensor, Tensor]:
    """Per-snapshot quantities, shape (M, 4) or (M, 8) with ``rich``, and the shortest
    free-fall time of each snapshot (M,).

    Columns: log k and cos phi of the critical pair; with ``rich`` then its eccentricity and
    log mass ratio, log(min / mean free-fall time) and log virial ratio; last, log r and log v of
    the critical pair (not scale-free: only their differences over time are used). One pairwise
    pass over positions finds the critical pair; everything else is per pair.
    """
    separations = gravity.pair_separations(positions)
    square = gravity.softened_square_distances(separations, softening)  # (M, N, N), inf on diagonal
    pair_mass_matrix = masses.unsqueeze(-1) + masses.unsqueeze(-2)
    free_fall_squared = square.pow(1.5) / (gravity.GRAVITATIONAL_CONSTANT * pair_mass_matrix)
    n_bodies = positions.shape[1]
    shortest_squared, critical = free_fall_squared.flatten(1).min(dim=1)
    i, j = critical // n_bodies, critical % n_bodies
    rows = torch.arange(positions.shape[0], device=positions.device)
    r_vec = positions[rows, j] - positions[rows, i]
    v_vec = velocities[rows, j] - velocities[rows, i]
    pair_mass = masses[rows, i] + masses[rows, j]
    distance = square[rows, i, j].sqrt()
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
        small = torch.minimum(masses[rows, i], masses[rows, j])
        large = torch.maximum(masses[rows, i], masses[rows, j])
        off_diagonal = ~torch.eye(n_bodies, dtype=torch.bool, device=positions.device)
        mean_free_fall = free_fall_squared[:, off_diagonal].sqrt().mean(dim=1)
        columns += [
            eccentricity,
            (small / large).log(),
            (shortest_squared.sqrt() / mean_free_fall).log(),
            (_virial_ratio(positions, velocities, masses, softening) + _LOG_FLOOR).log(),
        ]
    columns += [distance.clamp_min(_TINY).log(), speed.clamp_min(_TINY).log()]
    return torch.stack(columns, dim=1), shortest_squared.sqrt()


def _virial_ratio(positions: Tensor, velocities: Tensor, masses: Tensor, softening: float) -> Tensor:
    """2 K / |W| with K measured in the centre-of-mass frame, shape (M,)."""
    weights = (masses / masses.sum(dim=1, keepdim=True)).unsqueeze(-1)
    com_velocity = (weights * velocities).sum(dim=1, keepdim=True)
    kinetic = gravity.kinetic_energy(velocities - com_velocity, masses)
    potential = gravity.potential_energy(positions, masses, softening)
    return 2.0 * kinetic / potential.abs().clamp_min(_TINY)
