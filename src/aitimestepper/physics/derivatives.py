"""Analytic time derivatives of the gravitational acceleration and the PRS23 time scale.

The jerk j = da/dt and the snap s = d^2a/dt^2 of every body follow in closed form from the
positions, velocities and accelerations (no extra force evaluation), as in Aarseth's Hermite
schemes, here with Plummer softening. They feed the PRS23 criterion of Pham, Rein & Spiegel
(2024, arXiv 2401.02849), the default step criterion of REBOUND's IAS15:

    tau_i = sqrt(2 |a_i|^2 / (|j_i|^2 + |a_i| |s_i|)),    tau = min_i tau_i.

For any two-body orbit tau recovers the orbital time scale: 1 / omega on a circular orbit,
sqrt(q^3 / (G M (1 + 2 e))) at pericentre.

Every function reduces over bodies only and uses no pow (only arithmetic and sqrt, which give
the same bits in torch's vectorised and scalar code paths), so for the same per-system inputs
batched equals unbatched bit for bit. Units: G = 1; jerk in length / time^3, snap in
length / time^4, tau in time units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aitimestepper.physics import gravity


def jerk_and_snap(
    positions: Tensor,
    velocities: Tensor,
    accelerations: Tensor,
    masses: Tensor,
    softening: Tensor,
) -> tuple[Tensor, Tensor]:
    """Jerk and snap of every body under Plummer-softened gravity.

    With r = x_j - x_i, v = v_j - v_i, A = a_j - a_i, s2 = |r|^2 + eps^2 and the pair terms

        alpha = (r . v) / s2,    beta = (|v|^2 + r . A) / s2 + alpha^2,
        a_ij = G m_j r / s2^1.5,
        j_ij = G m_j v / s2^1.5 - 3 alpha a_ij,
        s_ij = G m_j A / s2^1.5 - 6 alpha j_ij - 3 beta a_ij,

    the jerk is j_i = sum_j j_ij and the snap s_i = sum_j s_ij. They are the exact first and
    second time derivatives of a_i = sum_j a_ij along the trajectory (d s2/dt = 2 r . v, dv/dt = A),
    provided ``accelerations`` are the total accelerations at ``positions`` (as in ``State``).
    Self-pairs contribute exactly zero: their s2 is +inf (see ``gravity.softened_square_distances``).

    Args:
        positions: (B, N, D) float64 positions (length).
        velocities: (B, N, D) float64 velocities (length / time).
        accelerations: (B, N, D) float64 total gravitational accelerations at ``positions``
            (length / time^2).
        masses: (B, N) float64 masses, positive.
        softening: (B,) float64 Plummer softening lengths eps >= 0 (length).

    Returns:
        (jerk, snap): two (B, N, D) float64 tensors, in length / time^3 and length / time^4.
    """
    separations = gravity.pair_separations(positions)  # (B, D, N, N), [b, :, i, j] = r = x_j - x_i
    relative_velocities = gravity.pair_separations(velocities)  # v
    relative_accelerations = gravity.pair_separations(accelerations)  # A
    square = gravity.softened_square_distances(separations, softening)  # s2, +inf on the diagonal
    # 1 / s2 and 1 / s2^1.5 from division and sqrt only, not pow, whose vectorised and scalar code
    # paths differ in the last bit: batched then equals unbatched bit for bit
    inverse_square = square.reciprocal()
    inverse_cube = inverse_square / square.sqrt()
    weights = gravity.GRAVITATIONAL_CONSTANT * masses.unsqueeze(-2) * inverse_cube  # G m_j / s2^1.5
    alpha = (separations * relative_velocities).sum(dim=-3) * inverse_square
    beta = (
        relative_velocities.square().sum(dim=-3) + (separations * relative_accelerations).sum(dim=-3)
    ) * inverse_square
    beta = beta + alpha.square()
    weights, alpha, beta = weights.unsqueeze(-3), alpha.unsqueeze(-3), beta.unsqueeze(-3)  # broadcast over D

    pair_accelerations = weights * separations
    pair_jerks = weights * relative_velocities - 3.0 * alpha * pair_accelerations
    pair_snaps = weights * relative_accelerations - 6.0 * alpha * pair_jerks - 3.0 * beta * pair_accelerations
    jerk = pair_jerks.sum(dim=-1).transpose(-1, -2).contiguous()
    snap = pair_snaps.sum(dim=-1).transpose(-1, -2).contiguous()
    return jerk, snap


def prs23_body_time_scales(accelerations: Tensor, jerks: Tensor, snaps: Tensor) -> Tensor:
    """Per-body PRS23 time scales sqrt(2 |a|^2 / (|j|^2 + |a| |s|)).

    A body with zero acceleration gets +inf (it sets no time scale; REBOUND skips such bodies
    too), as does one whose jerk and snap both vanish; 0/0 never yields NaN, and gradients stay
    finite at those bodies. NaN inputs propagate to NaN.

    Args:
        accelerations: (B, N, D) float64 accelerations (length / time^2).
        jerks: (B, N, D) float64 jerks (length / time^3).
        snaps: (B, N, D) float64 snaps (length / time^4).

    Returns:
        (B, N) float64 time scales (time units), in (0, +inf].
    """
    square_acceleration = accelerations.square().sum(dim=-1)
    acceleration_times_snap_squared = square_acceleration * snaps.square().sum(dim=-1)
    nonzero_product = acceleration_times_snap_squared != 0
    ones = torch.ones_like(acceleration_times_snap_squared)
    # |a| |s|, its square root taken only where it is nonzero so that its gradient stays finite
    safe_root = acceleration_times_snap_squared.where(nonzero_product, ones).sqrt()
    acceleration_times_snap = torch.where(nonzero_product, safe_root, torch.zeros_like(ones))
    denominator = jerks.square().sum(dim=-1) + acceleration_times_snap
    undefined = (square_acceleration == 0) | (denominator == 0)
    ratio = 2.0 * square_acceleration.where(~undefined, ones) / denominator.where(~undefined, ones)
    return torch.where(undefined, torch.full_like(ratio, float("inf")), ratio.sqrt())


def prs23_time_scale(
    positions: Tensor,
    velocities: Tensor,
    accelerations: Tensor,
    masses: Tensor,
    softening: Tensor,
) -> Tensor:
    """The PRS23 time scale of each system: min over bodies of sqrt(2 |a|^2 / (|j|^2 + |a| |s|)).

    Jerk and snap come from ``jerk_and_snap`` (no extra force evaluation). A step criterion uses
    dt = eta * tau with a dimensionless accuracy parameter eta (REBOUND's IAS15 uses
    tau * (5040 epsilon)^(1/7)). Invariant under relabelling, translations, boosts and rotations;
    scaling lengths by L and masses by M (velocities by sqrt(M / L)) scales tau by sqrt(L^3 / M).

    Args:
        positions: (B, N, D) float64 positions (length).
        velocities: (B, N, D) float64 velocities (length / time).
        accelerations: (B, N, D) float64 total gravitational accelerations at ``positions``
            (length / time^2).
        masses: (B, N) float64 masses, positive.
        softening: (B,) float64 Plummer softening lengths eps >= 0 (length).

    Returns:
        (B,) float64 time scales (time units); +inf for a system in which no body sets a time
        scale (see ``prs23_body_time_scales``), never NaN for finite inputs.
    """
    jerk, snap = jerk_and_snap(positions, velocities, accelerations, masses, softening)
    return prs23_body_time_scales(accelerations, jerk, snap).amin(dim=-1)
