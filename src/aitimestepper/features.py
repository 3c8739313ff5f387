"""The learned policy's look at a whole system: dimensionless features of its pairs, in one pass.

The one-step energy error of a kick-drift-kick step is, to leading order, a sum of the errors of
the pairs, each growing as (dt / tau_ij)**3 times the pair's binding energy G m_i m_j / r_ij, and
it is gated against the system's |E|. A pair alone would therefore allow

    step_ij = tau_ij * (|E| r_ij / (G m_i m_j)) ** (1/3)     (times threshold ** (1/3)),

the *energy-normalised free-fall step* of the pair (tau_ij = sqrt(r_ij**3 / (G (m_i + m_j))),
r_ij softened). A close pair in a cluster, or a planet around a star, holds a small share of |E|
and so allows a longer step than its free-fall time suggests. The policy corrects these steps per
pair and combines them (:mod:`aitimestepper.model`); this module measures what it needs.

Per look, over the P = N (N - 1) / 2 pairs i < j (components-first, one pass):
    ``log_step``: log step_ij of every pair (time units, threshold 1), and of those the K
        *candidate* pairs with the smallest steps (K = min(P, ``candidates``)): the pairs that can
        decide the step. Their per-pair features, F = ``PAIR_FEATURES``:
        0. log k, k = v**2 s / (G (m_i + m_j)) (twice the pair's kinetic-to-potential ratio),
        1. cos phi = (r . v) / (|r| |v|) (approaching < 0 < receding),
        2. log step_ij - min log step (>= 0: how far from deciding the step),
        3. log (G m_i m_j / s) / |E| (the pair's share of the system's energy),
        4. eps**2 / s**2 (how softened the pair is),
        5. log (m_small / m_large),
        6. log (|a_j - a_i - a_mutual| / |a_mutual| + 1e-8) (how strongly the rest of the system
           perturbs the pair; a_mutual the pair's own attraction),
      with s**2 = r**2 + eps**2, r = x_j - x_i, v = v_j - v_i, a the accelerations carried in the
      state (no extra force evaluation).
    System context, ``LOOK_FEATURES``: the crowding -(1/3) log sum_ij exp(-3 (log step_ij -
        min log step)) (<= 0; how many pairs share the smallest step, summed as errors add),
        log 2 K / |W| (virial ratio), and the leading-order energy error of the step itself:
        kick-drift-kick changes the energy by dt**3 R / 12 + O(dt**4), R = sum_i m_i (2 a_i . j_i +
        v_i . s_i) with the jerk j and snap s of every body (analytic, from positions, velocities and
        the accelerations: no extra force evaluation; measured: the ratio to the true one-step error
        tends to 1 as dt -> 0 on binaries and clusters). As the pairs' forces and their derivatives
        are antisymmetric, R is a sum over pairs of relative quantities (no bulk motion to cancel):
        R = -3 sum_ij (m_i m_j / s**3) [v . A - 3 alpha (r . A + v**2) + 5 alpha**3 s**2],
        alpha = (r . v) / s**2, A = a_j - a_i. The step that would reach the gate is
        h_1 = (12 |E| / |R|)**(1/3) (threshold 1). The context holds log(h_1 / min step) (clipped to
        [-3, 3]: R vanishes at the apsides of an orbit, where higher orders decide) and
        log(|R| / sum_ij |pair term| + 1e-8) (how much the pairs' terms cancel), and the *tidal
        strength* of a host's field (:mod:`aitimestepper.physics.external`): log(1 + chi / 1e-4),
        chi = M s**2 / |R|_s**3 with s the smallest step (threshold 1), the host's tidal pull
        across the step's time against the critical pair's own (about (r / r_J)**3 / 5 for a
        binary of size r and Jacobi radius r_J; it grows without bound as a system dissolves into
        the field, where the field's own step error decides); 0 without a field.
    The leading-order step ignores how R changes during the step; the *quartic step* does not.
        A symmetric integrator conserves a modified energy E + dt**2 H_2 + O(dt**4), so one step
        changes E by -dt**2 [H_2(t + dt) - H_2(t)], and with R / 12 = -dH_2/dt the error is
        dt**3 / 12 (R + dt R' / 2) + O(dt**5). R' is taken from the previous state (the finite
        difference of R over the step just made, free: the history keeps R), and the quartic step
        is the smallest h with |h**3 (R + h R' / 2)| = 12 |E| threshold, found by bisection in a
        bracket of ratio <= 2 (it steps across the zero of R where the error's sign changes). The
        context holds its log over min step (threshold 1, clipped to [-3, 3]); without a past state
        it equals the leading-order one (R' = 0). Measured along learned runs (2e-4, 300 steps per
        held-out system): the log spread of the oracle's step over the quartic step is 0.08-0.14 on
        binaries and triples, 0.23-0.27 on clusters and planetary systems, against 0.12-0.34 over
        the leading-order step.
    The *quintic step* adds the curvature of R: R' and R'' from the last two steps' changes (divided
        differences), the step the smallest h with |h**3 (R + h R' / 2 + h**2 R'' / 6)| = 12 |E|
        threshold (the first crossing on a log grid, refined by bisection). Measured along
        controller-like runs (0.8 oracle steps): the oracle's step is at least 0.94 of it on 99% of
        binaries' steps (0.88 for the quartic step), 0.75-0.79 on triples (0.62-0.64).
    The Taylor series of the step's error fails where the step is not small against a pair's own
        time (a light planet's, an eccentric pair's pericentre passage, a softened core); the
        *Kepler step* does not. A pair alone is a one-body problem whose kick-drift-kick error at
        any step is computed exactly from its k, phi and softening (a dozen operations per pair
        and trial step, :mod:`aitimestepper.kernels.kepler`); the Kepler step is the first step at
        which the candidates' errors, summed with their signs, plus the leading order of what they
        miss (h**3 / 12 times R less the candidates' own terms of R: the rest of the system's pull
        on them, the other pairs) reach the threshold (it depends on the threshold itself, not
        only through dt**3). Measured along runs at 0.8 oracle steps (2e-4, 150-300 steps per
        held-out system): the oracle's step is at most 0.2% shorter than it on 99% of the steps
        of binaries, hierarchical triples and planetary systems, 3.5% on softened triples, 6% and
        21% on unsoftened triples (2-D, 3-D), 5% on clusters of 4 bodies, 8-17% of 16 and 34-35% of
        32; its median is the oracle's step to 0.1% on every family, its log spread below 0.01 on
        the first three families, 0.03-0.1 on triples and clusters. The policy's step is taken
        relative to it. It is the *first* crossing (the error is not monotonic in the step where a
        pair's step is not small against its own time), and the context also holds its
        *cancellation*, |the Kepler error| over the sum of its terms' magnitudes there: where the
        candidates' errors are large and cancel, what the pairs alone miss decides, and the Kepler
        step overshoots (see :func:`aitimestepper.kernels.kepler.kepler_step`).

    History rows (what a :class:`History` keeps of each past state, ``ROW_WIDTH``): its min log
        step, crowding and dimensionless rate u = R s**3 / (12 |E|) (s = exp(min log step)), and
        the outcome of the step taken from it: log(error / threshold) (floored at 1e-4, capped at
        1e4) and log(dt / (s threshold**(1/3))), the correction the policy applied. A window of H
        past rows adds 5 H context columns: per slot a 0/1 flag (filled or not), the past min log
        step relative to the current one, the past crowding, error and correction; unfilled slots
        are all zeros (zero padding).

|E| and K are taken in the centre-of-mass frame; in a tidal field |E| is the quantity the gate
measures (the energy with the field's potential, or the Jacobi integral) in the field's frame. Every
feature is a ratio of quantities built from G, masses, separations, velocities and accelerations:
unchanged when bodies are relabelled, the system is translated, boosted or rotated, or lengths and
masses are rescaled (velocities as sqrt(mass / length); a host's mass and position with them). A
field breaks translations and boosts (the host pulls towards itself) but not the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.kernels import kepler
from aitimestepper.physics import gravity
from aitimestepper.physics.state import State

PAIR_FEATURES = 7
#: context columns of a look (crowding, virial ratio, leading-order step, cancellation, tidal
#: strength) ...
LOOK_FEATURES = 5
#: the tidal strength's column: log(1 + chi / TIDAL_SCALE), chi = M s**2 / |R|_s**3 (0 without a field)
TIDAL_COLUMN = 4
TIDAL_SCALE = 1e-4
#: ... and of the current state in the network's context: those, the quartic, quintic and Kepler
#: steps and the cancellation of the Kepler error at the Kepler step
CONTEXT_FEATURES = LOOK_FEATURES + 4
#: the quintic and Kepler steps' columns in the context (the policy's step is taken relative to
#: the Kepler step), and the Kepler cancellation's
QUINTIC_COLUMN, KEPLER_COLUMN, KEPLER_CANCELLATION_COLUMN = LOOK_FEATURES + 1, LOOK_FEATURES + 2, LOOK_FEATURES + 3
#: log(h_1 / min step) is clipped to +-RATE_STEP_CLIP (R vanishes at the apsides of an orbit)
RATE_STEP_CLIP = kepler.STEP_CLIP  # one clip for every step of the context
CANCELLATION_FLOOR = 1e-8
#: what a look keeps of its state (min log step, crowding, dimensionless rate u) ...
LOOK_ROW = 3
#: ... and a history row: min log step, crowding, the step's log error over threshold, its log
#: correction, and u
ROW_WIDTH = 5
#: context columns per history slot: filled flag and the first four row quantities (relative)
SLOT_FEATURES = 5
#: bisections of the quartic step in its bracket (ratio <= 2): 2**-40 relative precision
QUARTIC_BISECTIONS = 40
#: the dimensionless rates are kept within [1/RATE_BOUND, RATE_BOUND] in the quartic step's root
RATE_BOUND = 1e30
#: the quintic step's first crossing: a grid of log x over +-RATE_STEP_CLIP, then bisections
CROSSING_POINTS = 61
CROSSING_BISECTIONS = 30
ERROR_FLOOR, ERROR_CAP = 1e-4, 1e4
TINY = 1e-300
LOG_FLOOR = 1e-12
PERTURBATION_FLOOR = 1e-8
#: pairs' errors add as dt**3: the crowding is a soft minimum of temperature 1/3
_ERROR_ORDER = 3.0


def context_dim(history_len: int) -> int:
    """System context columns for a window of ``history_len`` past states (the network adds the
    threshold's)."""
    return CONTEXT_FEATURES + SLOT_FEATURES * history_len


@dataclass(frozen=True)
class PairLook:
    """What a policy learns from one look at B current states, each with K candidate pairs.

    Attributes:
        log_step: (B, K) float64 log of the candidates' energy-normalised free-fall steps at
            threshold 1 (log time units), smallest first.
        pair_features: (B, K, PAIR_FEATURES) float64 per-candidate features.
        context: (B, LOOK_FEATURES) float64 system features of the current state.
        rows: (B, LOOK_ROW) float64 what a :class:`History` keeps of this state (before the step).
        kepler: (B, K, kepler.KEPLER_PAIR) float64 what the Kepler step reads of each candidate: log k,
            phi, log tau - min log step, log share, eps**2 / s**2
            (:mod:`aitimestepper.kernels.kepler`).
        kepler_rest: (B,) float64 the leading-order rate the candidates alone miss, (R - sum_k
            R_k) s**3 / (12 |E|) (s = the min step, as the rate u of ``rows``).
    """

    log_step: Tensor
    pair_features: Tensor
    context: Tensor
    rows: Tensor
    kepler: Tensor
    kepler_rest: Tensor

    @property
    def min_step(self) -> Tensor:
        """(B,) the smallest energy-normalised free-fall step (threshold 1, time units)."""
        return self.log_step[:, 0].exp()


def look(state: State, candidates: int) -> PairLook:
    """One pass over the pairs of B states: candidate pairs, their features, the context.

    Args:
        state: B systems (no gradient flows back into them).
        candidates: K_max, the most candidate pairs kept per system.
    """
    with torch.no_grad():
        return _look(state.detach(), candidates)


def system_context(current: PairLook, history: History, log_threshold: Tensor) -> Tensor:
    """(B, context_dim(H)) the current context, the quartic, quintic and Kepler steps and the
    Kepler cancellation (the last two at the (B,) thresholds exp(log_threshold)), and the window of
    past rows (zero-padded)."""
    kepler_columns = kepler_step(current, log_threshold)
    steps = torch.stack(
        [quartic_step(current.rows, history), quintic_step(current.rows, history), *kepler_columns], dim=1
    )
    if history.length == 0:
        return torch.cat([current.context, steps], dim=1)
    slots = torch.arange(history.length, device=current.context.device)
    valid = (slots.unsqueeze(0) < history.filled.unsqueeze(1)).to(current.context.dtype)  # (B, H)
    past = history.rows[:, :, : SLOT_FEATURES - 1]
    relative = torch.cat([(past[:, :, 0] - current.rows[:, None, 0]).unsqueeze(2), past[:, :, 1:]], dim=2)
    slots = torch.cat([valid.unsqueeze(2), relative * valid[:, :, None]], dim=2)  # (B, H, SLOT_FEATURES)
    return torch.cat([current.context, steps, slots.flatten(1)], dim=1)


def quartic_step(look_rows: Tensor, history: History) -> Tensor:
    """(B,) log of the quartic step over min step (threshold 1), clipped to +-RATE_STEP_CLIP,
    from the (B, LOOK_ROW) rows of the current look and the most recent past row (module doc).

    In units x of the current min step (times threshold**(1/3)), the step solves
    |x**3 (u + w x / 2)| = 1, u the current dimensionless rate and w = exp(d - c) (u - u_p
    exp(3 d)) its change over the last step, d the change of min log step, c the last correction,
    u_p the last rate (w = 0 without a past state)."""
    rate = look_rows[:, 2]
    if history.length == 0:
        change = torch.zeros_like(rate)
    else:
        last = history.rows[:, 0]
        shift = look_rows[:, 0] - last[:, 0]
        change = torch.where(
            history.filled > 0, (shift - last[:, 3]).exp() * (rate - last[:, 4] * (3.0 * shift).exp()), 0.0
        )
    return _quartic_root(rate, change).clamp(-RATE_STEP_CLIP, RATE_STEP_CLIP)


def quintic_step(look_rows: Tensor, history: History) -> Tensor:
    """(B,) log of the quintic step over min step (threshold 1), clipped to +-RATE_STEP_CLIP: as
    :func:`quartic_step` with R also curving, R'' from the last two steps' changes of R, and R'
    taken now: |x**3 (u + p x / 2 + q x**2 / 6)| = 1 (the error is h**3 / 12 times R averaged over
    the step). In units of the current step unit, the past rates are u_k exp(3 (m - m_k)) and the
    past steps exp(m_k + c_k - m); p and q are their divided differences (0 where the window holds
    fewer than one and two past states)."""
    rate, minimum = look_rows[:, 2], look_rows[:, 0]
    slope = curvature = torch.zeros_like(rate)
    if history.length >= 1:
        rows = history.rows[:, : min(history.length, 2)]
        steps = (rows[:, :, 0] + rows[:, :, 3] - minimum.unsqueeze(1)).exp()  # (B, <=2)
        rates = rows[:, :, 4] * (3.0 * (minimum.unsqueeze(1) - rows[:, :, 0])).exp()
        latest = (rate - rates[:, 0]) / steps[:, 0]
        if history.length >= 2:
            earlier = (rates[:, 0] - rates[:, 1]) / steps[:, 1]
            curvature = torch.where(history.filled >= 2, (latest - earlier) / (0.5 * (steps[:, 0] + steps[:, 1])), 0.0)
        slope = torch.where(history.filled >= 1, latest + 0.5 * curvature * steps[:, 0], 0.0)
    return _first_crossing(rate, slope / 2.0, curvature / 6.0)


def kepler_step(current: PairLook, log_threshold: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) log of the Kepler step over the step unit s threshold**(1/3), in [-RATE_STEP_CLIP,
    RATE_STEP_CLIP], at the (B,) thresholds exp(log_threshold): the first step at which the
    candidates' own errors, each that of the pair alone, plus the leading order of what they miss
    reach the threshold; and (B,) log(its cancellation + CANCELLATION_FLOOR), how much of the sum
    of its terms' magnitudes survives in the error there (computed by
    :func:`aitimestepper.kernels.kepler.kepler_steps`, the compiled policy's own code)."""
    steps, cancellations = kepler.kepler_steps(
        current.kepler.detach().contiguous().numpy(),
        current.kepler_rest.detach().contiguous().numpy(),
        log_threshold.detach().to(current.kepler.dtype).contiguous().numpy(),
    )
    return torch.from_numpy(steps), (torch.from_numpy(cancellations) + CANCELLATION_FLOOR).log()


def _crossing_grid(dtype: torch.dtype) -> Tensor:
    """The log x grid of :func:`_first_crossing`, -clip + k spacing (as the kernel builds it)."""
    spacing = 2.0 * RATE_STEP_CLIP / (CROSSING_POINTS - 1)
    return -RATE_STEP_CLIP + torch.arange(CROSSING_POINTS, dtype=dtype) * spacing


def _first_crossing(c0: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """(B,) the smallest log x in [-clip, clip] with x**3 |c0 + c1 x + c2 x**2| >= 1: the first
    grid point that reaches 1, refined by bisection against the one before; -clip if the grid's
    first point reaches it, +clip if none does."""
    grid = _crossing_grid(c0.dtype)
    scale = grid.exp()
    reached = scale**3 * (c0[:, None] + c1[:, None] * scale + c2[:, None] * scale * scale).abs() >= 1.0
    first = reached.to(torch.int64).argmax(dim=1)
    hi, lo = grid[first], grid[(first - 1).clamp_min(0)]
    for _ in range(CROSSING_BISECTIONS):
        middle = 0.5 * (lo + hi)
        x = middle.exp()
        above = x * x * x * (c0 + c1 * x + c2 * x * x).abs() >= 1.0
        hi, lo = torch.where(above, middle, hi), torch.where(above, lo, middle)
    edge = torch.full_like(c0, RATE_STEP_CLIP)
    return torch.where(reached.any(dim=1), torch.where(first == 0, -edge, hi), edge)


def _quartic_root(rate: Tensor, change: Tensor) -> Tensor:
    """(B,) log x of the smallest x > 0 with x**3 |a + b x| = 1, a = |u|, b = sign(u) w / 2.

    The bracket: for b >= 0, x**3 |a + b x| grows, and the root lies in [hi / 2, hi], hi =
    min(a**(-1/3), b**(-1/4)). For b < 0 it rises to a peak at 3 a / (4 |b|): if the peak reaches
    1 the root lies in [a**(-1/3), (4 / a)**(1/3)]; else beyond the zero a / |b|, in [max(a / |b|,
    |b|**(-1/4)), a / |b| + |b|**(-1/4)]. Bisection in log x then halves the bracket
    ``QUARTIC_BISECTIONS`` times (the function grows in every bracket)."""
    a = rate.abs().clamp(1.0 / RATE_BOUND, RATE_BOUND)
    b = torch.where(rate < 0, -change, change) / 2.0
    slope = b.abs().clamp(1.0 / RATE_BOUND, RATE_BOUND)
    leading, trailing = a.pow(-1.0 / 3.0), slope.pow(-0.25)
    growing = b >= 0
    zero = a / slope
    reaches = (0.75 * a / slope).pow(3.0) * a / 4.0 >= 1.0
    lo = torch.where(
        growing, 0.5 * torch.minimum(leading, trailing), torch.where(reaches, leading, torch.maximum(zero, trailing))
    )
    hi = torch.where(
        growing, torch.minimum(leading, trailing), torch.where(reaches, (4.0 / a).pow(1.0 / 3.0), zero + trailing)
    )
    lo, hi = lo.log(), hi.log()
    for _ in range(QUARTIC_BISECTIONS):
        middle = 0.5 * (lo + hi)
        x = middle.exp()
        above = x * x * x * (a + b * x).abs() >= 1.0
        hi, lo = torch.where(above, middle, hi), torch.where(above, lo, middle)
    return hi


def history_row(look_rows: Tensor, dt: Tensor, error: Tensor, energy_threshold: float | Tensor) -> Tensor:
    """(B, ROW_WIDTH) what a window keeps of a state once its step is taken: the (B, LOOK_ROW) rows
    of the look, and the step's (B,) ``dt`` and relative energy ``error`` against the threshold
    the policy aimed at."""
    threshold = torch.as_tensor(energy_threshold, dtype=dt.dtype)
    log_error = (error / threshold).clamp(ERROR_FLOOR, ERROR_CAP).log()
    correction = dt.log() - look_rows[:, 0] - threshold.log() / 3.0
    return torch.cat([look_rows[:, :2], log_error.unsqueeze(1), correction.unsqueeze(1), look_rows[:, 2:]], dim=1)


def energy_normalised_steps(state: State) -> Tensor:
    """(B, P) the energy-normalised free-fall step of every pair (threshold 1, time units)."""
    with torch.no_grad():
        pairs = _pairs(state.detach())
        return pairs.log_step.exp()


@dataclass(frozen=True)
class _Pairs:
    """Every pair i < j of M systems: ``r``, ``v``, ``a`` = x, v, a of j minus those of i
    (M, D, P); softened ``square`` distance, pair ``mass`` m_i + m_j, ``product`` m_i m_j and
    ``log_step`` (M, P), the masses ``mass_i``, ``mass_j`` (M, P); ``energy`` |E| and
    ``virial`` 2 K / |W| (M,), centre-of-mass frame; ``softening_square`` (M, 1)."""

    r: Tensor
    v: Tensor
    a: Tensor
    square: Tensor
    mass_i: Tensor
    mass_j: Tensor
    mass: Tensor
    product: Tensor
    log_step: Tensor
    energy: Tensor
    virial: Tensor
    softening_square: Tensor


def _pairs(state: State) -> _Pairs:
    first, second = _pair_indices(state.num_bodies, state.positions.device)

    def differences(values: Tensor) -> Tensor:
        """(M, N, D) -> (M, D, P): components first, so every operation runs over contiguous
        rows of P pairs (an inner axis of D = 2 is several times slower)."""
        components = values.transpose(1, 2)
        return components.index_select(2, second) - components.index_select(2, first)

    masses = state.masses
    r, v, a = differences(state.positions), differences(state.velocities), differences(state.accelerations)
    softening_square = state.softening.square().unsqueeze(1)
    square = functools.reduce(torch.add, r.square().unbind(1)) + softening_square  # (M, P)
    mass_i, mass_j = masses.index_select(1, first), masses.index_select(1, second)
    mass, product = mass_i + mass_j, mass_i * mass_j
    inverse_distance = square.rsqrt()
    potential = gravity.GRAVITATIONAL_CONSTANT * (product * inverse_distance).sum(dim=1)  # |W|, (M,)
    total = masses.sum(dim=1, keepdim=True)
    bulk = (masses.unsqueeze(-1) * state.velocities).sum(dim=1) / total  # (M, D)
    kinetic = gravity.kinetic_energy(state.velocities - bulk.unsqueeze(1), masses)
    energy = (kinetic - potential).abs()
    if state.external is not None:  # the gated quantity: with the field's terms, in the field's frame
        energy = torch.where(state.external.present, state.energy().abs(), energy)
    energy = energy.clamp_min(TINY)
    gm = gravity.GRAVITATIONAL_CONSTANT * mass
    # log [tau (|E| r / (G m_i m_j))**(1/3)] = log tau + (log |E| - log G m_i m_j - log(1/r)) / 3
    log_tau = 0.5 * ((square * square.sqrt()) / gm).log()
    log_share = (gravity.GRAVITATIONAL_CONSTANT * product * inverse_distance).log() - energy.log().unsqueeze(1)
    return _Pairs(
        r=r,
        v=v,
        a=a,
        square=square,
        mass_i=mass_i,
        mass_j=mass_j,
        mass=mass,
        product=product,
        log_step=log_tau - log_share / _ERROR_ORDER,
        energy=energy,
        virial=2.0 * kinetic / potential.clamp_min(TINY),
        softening_square=softening_square,
    )


def _look(state: State, candidates: int) -> PairLook:
    pairs = _pairs(state)
    count = pairs.log_step.shape[1]
    keep = min(count, candidates)
    if keep == count and count == 1:
        log_step, index = pairs.log_step, None
    else:
        log_step, index = pairs.log_step.topk(keep, dim=1, largest=False, sorted=True)  # (M, K)

    def pick(values: Tensor) -> Tensor:
        """(M, P) or (M, D, P) -> the candidates' (M, K) or (M, D, K)."""
        if index is None:
            return values
        if values.ndim == 2:
            return values.gather(1, index)
        return values.gather(2, index.unsqueeze(1).expand(-1, values.shape[1], -1))

    r, v, a = pick(pairs.r), pick(pairs.v), pick(pairs.a)
    square, mass, product = pick(pairs.square), pick(pairs.mass), pick(pairs.product)
    gm = gravity.GRAVITATIONAL_CONSTANT * mass
    bare_square = r.square().sum(dim=1)
    speed_square = v.square().sum(dim=1)
    distance = square.sqrt()
    radial = (r * v).sum(dim=1)
    cos_phi = radial / (bare_square * speed_square).sqrt().clamp_min(TINY)
    mutual = -(gm / (square * distance)).unsqueeze(1) * r  # the pair's own pull on j relative to i
    perturbation = (a - mutual).square().sum(dim=1).sqrt() / mutual.square().sum(dim=1).sqrt().clamp_min(TINY)
    minimum = log_step[:, :1]
    mass_i, mass_j = pick(pairs.mass_i), pick(pairs.mass_j)
    small_over_large = torch.minimum(mass_i, mass_j) / torch.maximum(mass_i, mass_j)
    features = torch.stack(
        [
            (speed_square * distance / gm + LOG_FLOOR).log(),
            cos_phi,
            log_step - minimum,
            (gravity.GRAVITATIONAL_CONSTANT * product / distance).log() - pairs.energy.log().unsqueeze(1),
            pairs.softening_square / square,
            small_over_large.log(),
            (perturbation + PERTURBATION_FLOOR).log(),
        ],
        dim=2,
    )
    all_minimum = pairs.log_step.amin(dim=1, keepdim=True)
    crowding = -torch.logsumexp(-_ERROR_ORDER * (pairs.log_step - all_minimum), dim=1) / _ERROR_ORDER
    virial = (pairs.virial + LOG_FLOOR).log()
    signed_rate, spread = _energy_error_rate(pairs)
    rate = signed_rate.abs()
    rate_step = ((12.0 * pairs.energy / rate.clamp_min(TINY)).log() / _ERROR_ORDER - all_minimum.squeeze(1)).clamp(
        -RATE_STEP_CLIP, RATE_STEP_CLIP
    )
    cancellation = (rate / spread.clamp_min(TINY) + CANCELLATION_FLOOR).log()
    tidal = _tidal_strength(state, all_minimum.squeeze(1))
    # what the candidates alone would add to R: the rest of R stays with the leading order
    own_rate = _rate_terms(r, v, mutual, square, product).sum(dim=1)
    cube = (_ERROR_ORDER * all_minimum.squeeze(1)).exp()
    kepler = torch.stack(
        [
            features[:, :, 0],
            cos_phi.clamp(-1.0, 1.0).acos(),
            0.5 * (square * distance / gm).log() - all_minimum,
            features[:, :, 3],
            features[:, :, 4],
        ],
        dim=2,
    )
    return PairLook(
        log_step=log_step,
        pair_features=features,
        context=torch.stack([crowding, virial, rate_step, cancellation, tidal], dim=1),
        rows=torch.stack([all_minimum.squeeze(1), crowding, signed_rate / (12.0 * pairs.energy) * cube], dim=1),
        kepler=kepler,
        kepler_rest=(signed_rate - own_rate) / (12.0 * pairs.energy) * cube,
    )


def _tidal_strength(state: State, minimum: Tensor) -> Tensor:
    """(B,) log(1 + chi / TIDAL_SCALE), chi = M s**2 / |R|_s**3 the host's tidal pull across the
    step unit s = exp(``minimum``) (threshold 1) against the critical pair's: 0 without a field."""
    if state.external is None:
        return torch.zeros_like(minimum)
    chi = state.external.tidal_frequency_square(state.time) * (2.0 * minimum).exp()
    return (chi / TIDAL_SCALE).log1p()


def _energy_error_rate(pairs: _Pairs) -> tuple[Tensor, Tensor]:
    """R and the sum of its pair terms' magnitudes (M,): R the rate of kick-drift-kick's
    leading-order one-step energy error dt**3 R / 12, summed over pairs (see the module doc)."""
    terms = _rate_terms(pairs.r, pairs.v, pairs.a, pairs.square, pairs.product)
    return terms.sum(dim=1), terms.abs().sum(dim=1)


def _rate_terms(r: Tensor, v: Tensor, a: Tensor, square: Tensor, product: Tensor) -> Tensor:
    """(M, P) the pairs' terms of R from relative r, v, a (M, D, P), softened squared distances and
    mass products (M, P) (see the module doc)."""
    alpha = (r * v).sum(dim=1) / square
    pull = (r * a).sum(dim=1)
    speed_square = v.square().sum(dim=1)
    pulling_velocity = (v * a).sum(dim=1)
    weight = product / (square * square.sqrt())
    return (
        -3.0 * weight * (pulling_velocity - 3.0 * alpha * (pull + speed_square) + 5.0 * alpha * alpha * alpha * square)
    )


@functools.cache
def _pair_indices(n_bodies: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Bodies i and j of the P = N (N - 1) / 2 pairs i < j, row by row: two (P,) int64 tensors."""
    first, second = torch.triu_indices(n_bodies, n_bodies, offset=1, device=device)
    return first, second
