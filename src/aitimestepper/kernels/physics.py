"""Compiled (numba) physics of one system: forces, energy, the leapfrog step and the classical
step criteria. Each mirrors its torch reference in :mod:`aitimestepper.physics` and
:mod:`aitimestepper.features` operation by operation; sums over bodies and pairs run in a fixed
sequential order (torch's reductions may group terms differently: the two agree to round-off).

Arrays of one system: positions, velocities, accelerations (N, D) float64, masses (N,) float64;
``eps`` its Plummer softening length. G = 1.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

TINY = 2.2250738585072014e-308  # smallest normal float64, as torch.finfo(float64).tiny


@njit(cache=True)
def square_distance(positions, i, j, eps):
    """|x_j - x_i|**2 + eps**2, summed over components in order."""
    total = 0.0
    for d in range(positions.shape[1]):
        r = positions[j, d] - positions[i, d]
        total += r * r
    return total + eps * eps


@njit(cache=True)
def accelerations(positions, masses, eps, out):
    """Fill ``out`` (N, D) with a_i = sum_j m_j (x_j - x_i) / (r**2 + eps**2)**1.5 and return the
    potential energy sum_{i<j} m_i m_j / (r**2 + eps**2)**0.5 (D = 2 or 3, as every state).

    One pass over the pairs (i < j, i outer) serves both bodies of a pair and the potential, with
    one square root per pair: body i still receives its terms in the order j = 0, 1, ..., each
    computed as in a loop over j, so the sums are those of that loop, bit for bit. Over its
    partners j > i, body i's sums stay in registers (1.2x faster from 16 bodies, measured)."""
    count, dim = positions.shape
    for i in range(count):
        for d in range(dim):
            out[i, d] = 0.0
    potential = 0.0
    three = dim > 2
    for i in range(count):
        x, y, z = positions[i, 0], positions[i, 1], positions[i, 2] if three else 0.0
        sum_x, sum_y, sum_z = out[i, 0], out[i, 1], out[i, 2] if three else 0.0
        for j in range(i + 1, count):
            square = square_distance(positions, i, j, eps)
            root = math.sqrt(square)
            inverse_cube = 1.0 / (square * root)
            on_i, on_j = masses[j] * inverse_cube, masses[i] * inverse_cube
            sum_x += on_i * (positions[j, 0] - x)
            out[j, 0] += on_j * (x - positions[j, 0])
            sum_y += on_i * (positions[j, 1] - y)
            out[j, 1] += on_j * (y - positions[j, 1])
            if three:
                sum_z += on_i * (positions[j, 2] - z)
                out[j, 2] += on_j * (z - positions[j, 2])
            potential += masses[i] * masses[j] * (1.0 / root)
        out[i, 0], out[i, 1] = sum_x, sum_y
        if three:
            out[i, 2] = sum_z
    return potential


@njit(cache=True)
def kinetic_energy(velocities, masses):
    """sum_i m_i |v_i|**2 / 2."""
    count, dim = velocities.shape
    kinetic = 0.0
    for i in range(count):
        speed = 0.0
        for d in range(dim):
            speed += velocities[i, d] * velocities[i, d]
        kinetic += masses[i] * speed
    return 0.5 * kinetic


#: a system's tidal-field row (:func:`aitimestepper.fast.field_rows`): host mass (0: no field), the
#: host's softening, the rotation rate Omega, then the host's position at time 0 (D)
FIELD_MASS, FIELD_SOFTENING, FIELD_ROTATION, FIELD_POSITION = 0, 1, 2, 3


@njit(cache=True)
def host_at(field, time, dim):
    """(D,) the host's position at ``time``: R(0) turned by Omega t in the x-y plane."""
    angle = field[FIELD_ROTATION] * time
    cos, sin = math.cos(angle), math.sin(angle)
    x0, y0 = field[FIELD_POSITION], field[FIELD_POSITION + 1]
    host = np.empty(dim)
    host[0], host[1] = cos * x0 - sin * y0, sin * x0 + cos * y0
    if dim > 2:
        host[2] = field[FIELD_POSITION + 2]
    return host


@njit(cache=True)
def _softened_square(host, eps2):
    square = eps2
    for d in range(host.shape[0]):
        square += host[d] * host[d]
    return square


@njit(cache=True)
def tidal_frequency_square(field, time, dim):
    """M / |R(time)|_s**3, as :meth:`aitimestepper.physics.external.TidalField.tidal_frequency_square`
    (0 without a field)."""
    mass = field[FIELD_MASS]
    if mass == 0.0:
        return 0.0
    square = _softened_square(host_at(field, time, dim), field[FIELD_SOFTENING] * field[FIELD_SOFTENING])
    return mass / (square * math.sqrt(square))


@njit(cache=True)
def tidal_pull(positions, masses, field, time, acc):
    """Add the host's tidal accelerations at ``time`` to ``acc`` (N, D) and return the bodies'
    potential energy sum_i m_i Phi(x_i) in its field (as
    :class:`aitimestepper.physics.external.TidalField`); nothing to add and 0 without a field."""
    mass = field[FIELD_MASS]
    if mass == 0.0:
        return 0.0
    count, dim = positions.shape
    host = host_at(field, time, dim)
    eps2 = field[FIELD_SOFTENING] * field[FIELD_SOFTENING]
    host_square = _softened_square(host, eps2)
    host_root = math.sqrt(host_square)
    host_cube = host_square * host_root
    potential = 0.0
    for i in range(count):
        square = eps2
        along = 0.0
        own = 0.0
        for d in range(dim):
            toward = host[d] - positions[i, d]
            square += toward * toward
            along += positions[i, d] * host[d]
            own += positions[i, d] * positions[i, d]
        root = math.sqrt(square)
        cube = square * root
        # the cancellation-free forms of TidalField.accelerations and .potential_energy
        closer = (2.0 * along - own) / (root + host_root)  # r - d
        spread = closer * (host_square + host_root * root + square) / (cube * host_cube)  # 1/d**3 - 1/r**3
        for d in range(dim):
            acc[i, d] += mass * (host[d] * spread - positions[i, d] / cube)
        numerator = along * closer * (2.0 * host_root + root) - own * host_square
        potential += masses[i] * (-mass * numerator / (root * host_cube * (root + host_root)))
    return potential


@njit(cache=True)
def spin_term(positions, velocities, masses, field):
    """-Omega L_z, the Jacobi integral's addition to the energy (0 for a static host or none)."""
    rotation = field[FIELD_ROTATION]
    if rotation == 0.0:
        return 0.0
    spin = 0.0
    for i in range(positions.shape[0]):
        spin += masses[i] * (positions[i, 0] * velocities[i, 1] - positions[i, 1] * velocities[i, 0])
    return -rotation * spin


@njit(cache=True)
def energy(positions, velocities, masses, eps, field, time):
    """Kinetic plus potential energy; with a tidal field (``field``, at ``time``), the conserved
    quantity (:func:`aitimestepper.physics.state.conserved_energy`)."""
    count = positions.shape[0]
    potential = 0.0
    for i in range(count):
        for j in range(i + 1, count):
            potential += masses[i] * masses[j] * (1.0 / math.sqrt(square_distance(positions, i, j, eps)))
    total = kinetic_energy(velocities, masses) - potential
    if field[FIELD_MASS] == 0.0:
        return total
    ignored = np.zeros(positions.shape)
    tidal = tidal_pull(positions, masses, field, time, ignored)
    return total + tidal + spin_term(positions, velocities, masses, field)


@njit(cache=True)
def leapfrog(positions, velocities, acc, masses, eps, field, time, dt, new_positions, new_velocities, new_acc):
    """One kick-drift-kick step from ``time`` into the ``new_*`` arrays (the inputs are left
    unchanged); returns the energy after it (:func:`energy` of the new state, bit for bit without
    a field, from the same pass over the pairs as the new accelerations)."""
    count, dim = positions.shape
    half = 0.5 * dt
    for i in range(count):
        for d in range(dim):
            kicked = velocities[i, d] + half * acc[i, d]
            new_velocities[i, d] = kicked
            new_positions[i, d] = positions[i, d] + dt * kicked
    potential = accelerations(new_positions, masses, eps, new_acc)
    tidal = tidal_pull(new_positions, masses, field, time + dt, new_acc)
    for i in range(count):
        for d in range(dim):
            new_velocities[i, d] = new_velocities[i, d] + half * new_acc[i, d]
    total = kinetic_energy(new_velocities, masses) - potential
    if field[FIELD_MASS] == 0.0:
        return total
    return total + tidal + spin_term(new_positions, new_velocities, masses, field)


@njit(cache=True)
def relative_error(before, after):
    """|E1 - E0| / |E0| with |E0| floored, +inf for a non-finite E1."""
    if not math.isfinite(after):
        return math.inf
    return abs(after - before) / max(abs(before), TINY)


@njit(cache=True)
def all_finite(values):
    """Whether every entry is finite (a loop that stops at the first that is not; compiled)."""
    for value in values.ravel():  # noqa: SIM110
        if not math.isfinite(value):
            return False
    return True


@njit(cache=True)
def min_free_fall(positions, masses, eps):
    """Shortest pairwise free-fall time sqrt(s**3 / (m_i + m_j))."""
    count = positions.shape[0]
    best = math.inf
    for i in range(count):
        for j in range(count):
            if j == i:
                continue
            square = square_distance(positions, i, j, eps)
            best = min(best, square * math.sqrt(square) / (masses[i] + masses[j]))
    return math.sqrt(best)


@njit(cache=True)
def bulk_velocity(velocities, masses):
    """The centre-of-mass velocity (D,)."""
    count, dim = velocities.shape
    total = 0.0
    for i in range(count):
        total += masses[i]
    bulk = np.zeros(dim)
    for d in range(dim):
        momentum = 0.0
        for i in range(count):
            momentum += masses[i] * velocities[i, d]
        bulk[d] = momentum / total
    return bulk


@njit(cache=True)
def com_kinetic_and_potential(positions, velocities, masses, eps):
    """Kinetic energy in the centre-of-mass frame and |W| = sum_{i<j} m_i m_j / s_ij."""
    count, dim = positions.shape
    bulk = bulk_velocity(velocities, masses)
    kinetic = 0.0
    for i in range(count):
        speed = 0.0
        for d in range(dim):
            relative = velocities[i, d] - bulk[d]
            speed += relative * relative
        kinetic += masses[i] * speed
    potential = 0.0
    for i in range(count):
        for j in range(i + 1, count):
            potential += masses[i] * masses[j] * (1.0 / math.sqrt(square_distance(positions, i, j, eps)))
    return 0.5 * kinetic, potential


@njit(cache=True)
def pair_log_steps(positions, masses, eps, system_energy, out):
    """Fill ``out`` (P,) with log of every pair's energy-normalised free-fall step (threshold 1),
    pairs i < j row by row: log tau - (log(m_i m_j / s) - log |E|) / 3."""
    count = positions.shape[0]
    log_energy = math.log(system_energy)
    k = 0
    for i in range(count):
        for j in range(i + 1, count):
            square = square_distance(positions, i, j, eps)
            log_tau = 0.5 * math.log(square * math.sqrt(square) / (masses[i] + masses[j]))
            log_share = math.log(masses[i] * masses[j] * (1.0 / math.sqrt(square))) - log_energy
            out[k] = log_tau - log_share / 3.0
            k += 1


@njit(cache=True)
def min_energy_free_fall(positions, velocities, masses, eps, field, time):
    """The smallest energy-normalised free-fall step of the system (threshold 1), against
    :func:`normalising_energy`."""
    count = positions.shape[0]
    steps = np.empty(count * (count - 1) // 2)
    pair_log_steps(positions, masses, eps, normalising_energy(positions, velocities, masses, eps, field, time), steps)
    return math.exp(steps.min())


@njit(cache=True)
def normalising_energy(positions, velocities, masses, eps, field, time):
    """The |E| energy-normalised steps are measured against (as :mod:`aitimestepper.features`):
    |K + W| in the centre-of-mass frame; in a tidal field (``field`` at ``time``) the gated
    quantity's, in the field's frame. Floored at 1e-300 (``features.TINY``)."""
    if field[FIELD_MASS] == 0.0:
        kinetic, potential = com_kinetic_and_potential(positions, velocities, masses, eps)
        return max(abs(kinetic - potential), 1e-300)
    return max(abs(energy(positions, velocities, masses, eps, field, time)), 1e-300)


@njit(cache=True)
def jerk_and_snap(positions, velocities, acc, masses, eps, jerks, snaps):
    """Fill ``jerks`` and ``snaps`` (N, D) with every body's analytic jerk and snap (as
    :func:`aitimestepper.physics.derivatives.jerk_and_snap`)."""
    count, dim = positions.shape
    for i in range(count):
        for d in range(dim):
            jerks[i, d] = 0.0
            snaps[i, d] = 0.0
        for j in range(count):
            if j == i:
                continue
            square = square_distance(positions, i, j, eps)
            inverse_square = 1.0 / square
            weight = masses[j] * (inverse_square / math.sqrt(square))
            radial = 0.0
            speed = 0.0
            pull = 0.0
            for d in range(dim):
                r = positions[j, d] - positions[i, d]
                v = velocities[j, d] - velocities[i, d]
                radial += r * v
                speed += v * v
                pull += r * (acc[j, d] - acc[i, d])
            alpha = radial * inverse_square
            beta = (speed + pull) * inverse_square + alpha * alpha
            for d in range(dim):
                r = positions[j, d] - positions[i, d]
                v = velocities[j, d] - velocities[i, d]
                a = acc[j, d] - acc[i, d]
                pair_acceleration = weight * r
                pair_jerk = weight * v - 3.0 * alpha * pair_acceleration
                jerks[i, d] += pair_jerk
                snaps[i, d] += weight * a - 6.0 * alpha * pair_jerk - 3.0 * beta * pair_acceleration


@njit(cache=True)
def prs23(positions, velocities, acc, masses, eps):
    """min over bodies of sqrt(2 |a|**2 / (|j|**2 + |a| |s|)), jerk j and snap s analytic."""
    count, dim = positions.shape
    jerks, snaps = np.empty((count, dim)), np.empty((count, dim))
    jerk_and_snap(positions, velocities, acc, masses, eps, jerks, snaps)
    best = math.inf
    for i in range(count):
        square_acceleration = 0.0
        square_jerk = 0.0
        square_snap = 0.0
        for d in range(dim):
            square_acceleration += acc[i, d] * acc[i, d]
            square_jerk += jerks[i, d] * jerks[i, d]
            square_snap += snaps[i, d] * snaps[i, d]
        product = square_acceleration * square_snap
        denominator = square_jerk + (math.sqrt(product) if product != 0.0 else 0.0)
        if square_acceleration == 0.0 or denominator == 0.0:
            continue
        best = min(best, math.sqrt(2.0 * square_acceleration / denominator))
    return best


@njit(cache=True)
def rate_term(radial, pull, speed, pulling_velocity, square, product):
    """One pair's term of R (:func:`energy_error_rate`) from its relative r . v, r . a, v . v and
    v . a, softened squared distance and mass product (a the pair's relative acceleration, the
    pull on it of the whole system or of the pair alone)."""
    alpha = radial / square
    weight = product / (square * math.sqrt(square))
    return -3.0 * weight * (pulling_velocity - 3.0 * alpha * (pull + speed) + 5.0 * alpha * alpha * alpha * square)


@njit(cache=True)
def energy_error_rate(positions, velocities, acc, masses, eps):
    """R and the sum of its pair terms' magnitudes, R the rate of the leading-order one-step
    energy error dt**3 R / 12 of kick-drift-kick, summed over pairs as
    :func:`aitimestepper.features._energy_error_rate`."""
    count, dim = positions.shape
    total = 0.0
    spread = 0.0
    for i in range(count):
        for j in range(i + 1, count):
            square = square_distance(positions, i, j, eps)
            radial = 0.0
            pull = 0.0
            speed = 0.0
            pulling_velocity = 0.0
            for d in range(dim):
                r = positions[j, d] - positions[i, d]
                v = velocities[j, d] - velocities[i, d]
                a = acc[j, d] - acc[i, d]
                radial += r * v
                pull += r * a
                speed += v * v
                pulling_velocity += v * a
            term = rate_term(radial, pull, speed, pulling_velocity, square, masses[i] * masses[j])
            total += term
            spread += abs(term)
    return total, spread
