"""Pairwise Newtonian gravity (G = 1) for batches of independent systems.

Every function works on a batch of B systems of N bodies in D dimensions and reduces over
bodies only, so each system's result depends on that system alone (batched equals unbatched,
bit for bit). Units: G = 1; lengths, masses and times in any consistent unit system.

Softening is Plummer softening, one length per system: the pair distance r is replaced by
sqrt(r**2 + eps**2). ``softening`` arguments are (B,) float64 tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

GRAVITATIONAL_CONSTANT = 1.0


def pair_separations(positions: Tensor) -> Tensor:
    """Separation vectors x_j - x_i, components first.

    Args:
        positions: (B, N, D) float64 positions.

    Returns:
        (B, D, N, N) tensor whose [b, :, i, j] entries point from body i to body j. Keeping the
        D components as the outer axis makes every pairwise operation work on contiguous
        (N, N) blocks, several times faster for small N and D than an inner axis of length D.
    """
    components = positions.transpose(-1, -2).contiguous()
    return components.unsqueeze(-2) - components.unsqueeze(-1)


def softened_square_distances(separations: Tensor, softening: Tensor) -> Tensor:
    """Softened squared distances from (B, D, N, N) separations and (B,) softening lengths,
    self-pairs set to +inf: shape (B, N, N).

    Setting the diagonal to +inf makes every inverse power of it exactly zero, so self-pairs
    drop out of sums without producing NaN values or NaN gradients.
    """
    square = separations.square().sum(dim=-3) + softening.square().view(-1, 1, 1)
    square.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    return square


def accelerations(positions: Tensor, masses: Tensor, softening: Tensor) -> Tensor:
    """Gravitational acceleration of every body.

    Args:
        positions: (B, N, D) float64 positions.
        masses: (B, N) float64 masses, all positive.
        softening: (B,) Plummer softening lengths eps >= 0 (length units).

    Returns:
        (B, N, D) accelerations a_i = G sum_j m_j (x_j - x_i) / (r_ij**2 + eps**2)**1.5.
    """
    separations = pair_separations(positions)
    square = softened_square_distances(separations, softening)
    # 1 / (s sqrt(s)), not s**-1.5: torch's pow rounds differently in the vectorised body and the
    # scalar tail of a kernel, so a system's bits would depend on its place in the batch; division
    # and sqrt give the same bits either way (measured; torch's sqrt is not always correctly rounded)
    inverse_cube = (square * square.sqrt()).reciprocal()
    weights = GRAVITATIONAL_CONSTANT * masses.unsqueeze(-2) * inverse_cube
    return (weights.unsqueeze(-3) * separations).sum(dim=-1).transpose(-1, -2).contiguous()


def potential_energy(positions: Tensor, masses: Tensor, softening: Tensor) -> Tensor:
    """Total gravitational potential energy -G sum_{i<j} m_i m_j / sqrt(r_ij**2 + eps**2).

    Args:
        positions: (B, N, D) float64 positions.
        masses: (B, N) float64 masses.
        softening: (B,) Plummer softening lengths.

    Returns:
        (B,) potential energies.
    """
    inverse_distance = softened_square_distances(pair_separations(positions), softening).rsqrt()
    mass_products = masses.unsqueeze(-1) * masses.unsqueeze(-2)
    return -0.5 * GRAVITATIONAL_CONSTANT * (mass_products * inverse_distance).sum(dim=(-2, -1))


def kinetic_energy(velocities: Tensor, masses: Tensor) -> Tensor:
    """Total kinetic energy sum_i m_i |v_i|**2 / 2, shape (B,)."""
    return 0.5 * (masses * velocities.square().sum(dim=-1)).sum(dim=-1)


def total_energy(positions: Tensor, velocities: Tensor, masses: Tensor, softening: Tensor) -> Tensor:
    """Kinetic plus potential energy, shape (B,)."""
    return kinetic_energy(velocities, masses) + potential_energy(positions, masses, softening)


def linear_momentum(velocities: Tensor, masses: Tensor) -> Tensor:
    """Total linear momentum sum_i m_i v_i, shape (B, D)."""
    return (masses.unsqueeze(-1) * velocities).sum(dim=-2)


def angular_momentum(positions: Tensor, velocities: Tensor, masses: Tensor) -> Tensor:
    """Total angular momentum about the origin.

    Returns:
        (B,) the z component for D = 2; (B, 3) the vector for D = 3.
    """
    momenta = masses.unsqueeze(-1) * velocities
    if positions.shape[-1] == 2:
        per_body = positions[..., 0] * momenta[..., 1] - positions[..., 1] * momenta[..., 0]
        return per_body.sum(dim=-1)
    return torch.linalg.cross(positions, momenta, dim=-1).sum(dim=-2)


def free_fall_times(positions: Tensor, masses: Tensor, softening: Tensor) -> Tensor:
    """Pairwise free-fall time scales sqrt(r_ij**3 / (G (m_i + m_j))), softened.

    Returns:
        (B, N, N) time scales with +inf on the diagonal (a body with itself).
    """
    square = softened_square_distances(pair_separations(positions), softening)
    return free_fall_squared(square, masses.unsqueeze(-1) + masses.unsqueeze(-2)).sqrt()


def free_fall_squared(square: Tensor, pair_mass: Tensor) -> Tensor:
    """Squared pairwise free-fall times r_ij**3 / (G (m_i + m_j)) from softened squared
    distances and pair masses of the same shape; r**3 is taken as r**2 sqrt(r**2), cheaper
    than pow(1.5)."""
    return square * square.sqrt() / pair_mass / GRAVITATIONAL_CONSTANT


def min_free_fall_time(positions: Tensor, masses: Tensor, softening: Tensor) -> Tensor:
    """Shortest pairwise free-fall time of each system, shape (B,): the dynamical time scale."""
    return free_fall_times(positions, masses, softening).amin(dim=(-2, -1))
