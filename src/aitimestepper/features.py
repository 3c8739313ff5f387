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

import functools
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
    the critical pair (not scale-free: only their differences over time are used). One pass over
    the pairs finds the critical pair; everything else is per pair.
    """
    pairs = _critical_pair(positions, velocities, masses, softening)
    shortest_squared = gravity.free_fall_squared(pairs.square, pairs.mass)  # (M,)
    distance = pairs.square.sqrt()
    bare_distance = pairs.r.norm(dim=-1)
    speed = pairs.v.norm(dim=-1)
    gm = gravity.GRAVITATIONAL_CONSTANT * pairs.mass
    kinetic_ratio = speed.square() * distance / gm
    radial = (pairs.r * pairs.v).sum(-1)
    cos_phi = radial / (bare_distance * speed).clamp_min(_TINY)
    columns = [(kinetic_ratio + _LOG_FLOOR).log(), cos_phi]
    if rich:
        # eccentricity vector ((v^2 - GM/r) r - (r . v) v) / GM, free of cancellation at e = 0
        eccentricity_vector = (
            (speed.square() - gm / bare_distance.clamp_min(_TINY)).unsqueeze(-1) * pairs.r
            - radial.unsqueeze(-1) * pairs.v
        ) / gm.unsqueeze(-1)
        eccentricity = eccentricity_vector.norm(dim=-1)
        first, second = _pair_indices(masses.shape[1], masses.device)
        bodies = torch.stack([first[pairs.index], second[pairs.index]], dim=1)  # (M, 2): i, j
        small, large = masses.gather(1, bodies).aminmax(dim=1)
        mean_free_fall = gravity.free_fall_squared(pairs.all_squares, pairs.all_masses).sqrt().mean(dim=1)
        columns += [
            eccentricity,
            (small / large).log(),
            (shortest_squared.sqrt() / mean_free_fall).log(),
            (_virial_ratio(positions, velocities, masses, softening) + _LOG_FLOOR).log(),
        ]
    if scales:
        columns += [distance.clamp_min(_TINY).log(), speed.clamp_min(_TINY).log()]
    return torch.stack(columns, dim=1), shortest_squared.sqrt()


@dataclass(frozen=True)
class _CriticalPairs:
    """The critical pair of each of M snapshots: ``r`` = x_j - x_i and ``v`` = v_j - v_i (M, D),
    softened ``square`` distance and pair ``mass`` m_i + m_j (M,), its ``index`` (M,) among the
    P = N (N - 1) / 2 pairs i < j, and over all those pairs ``all_squares`` and ``all_masses`` (M, P)."""

    r: Tensor
    v: Tensor
    square: Tensor
    mass: Tensor
    index: Tensor
    all_squares: Tensor
    all_masses: Tensor


def _critical_pair(positions: Tensor, velocities: Tensor, masses: Tensor, softening: float) -> _CriticalPairs:
    """The pair with the shortest free-fall time in each of M snapshots (M, N, D), found over
    the pairs i < j (a list of P pairs rather than an N x N matrix: fewer, cheaper operations)."""
    count, n_bodies, _ = positions.shape
    first, second = _pair_indices(n_bodies, positions.device)

    def differences(values: Tensor) -> Tensor:
        """(M, N, D) -> (M, D, P): components first, as in ``gravity``, so that every operation
        runs over contiguous rows of P pairs (an inner axis of D = 2 is several times slower)."""
        components = values.transpose(1, 2)
        return components.index_select(2, second) - components.index_select(2, first)

    separations, relative_velocities = differences(positions), differences(velocities)
    squares = functools.reduce(torch.add, separations.square().unbind(1)) + softening**2  # (M, P)
    pair_masses = masses.index_select(1, first) + masses.index_select(1, second)  # (M, P)
    if n_bodies == 2:  # a single pair
        index = torch.zeros(count, dtype=torch.int64, device=positions.device)

        def pick(values: Tensor) -> Tensor:
            return values[..., 0]
    else:
        # t_ff**4 = r**6 / (G m)**2 orders the pairs as t_ff does, with no square root per pair;
        # it stays finite for separations up to 1e50
        index = (squares * squares * squares / pair_masses.square()).argmin(dim=1)  # (M,)
        rows = torch.arange(count, device=positions.device)

        def pick(values: Tensor) -> Tensor:
            return values[rows, ..., index]

    return _CriticalPairs(
        r=pick(separations),
        v=pick(relative_velocities),
        square=pick(squares),
        mass=pick(pair_masses),
        index=index,
        all_squares=squares,
        all_masses=pair_masses,
    )


@functools.cache
def _pair_indices(n_bodies: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Bodies i and j of the P = N (N - 1) / 2 pairs i < j, row by row: two (P,) int64 tensors."""
    first, second = torch.triu_indices(n_bodies, n_bodies, offset=1, device=device)
    return first, second


def _virial_ratio(positions: Tensor, velocities: Tensor, masses: Tensor, softening: float) -> Tensor:
    """2 K / |W| with K measured in the centre-of-mass frame, shape (M,)."""
    weights = (masses / masses.sum(dim=1, keepdim=True)).unsqueeze(-1)
    com_velocity = (weights * velocities).sum(dim=1, keepdim=True)
    kinetic = gravity.kinetic_energy(velocities - com_velocity, masses)
    potential = gravity.potential_energy(positions, masses, softening)
    return 2.0 * kinetic / potential.abs().clamp_min(_TINY)
