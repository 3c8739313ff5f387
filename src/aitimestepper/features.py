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
    System context, C = ``CONTEXT_FEATURES``: the crowding -(1/3) log sum_ij exp(-3 (log step_ij -
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
        log(|R| / sum_ij |pair term| + 1e-8) (how much the pairs' terms cancel).
    History rows (what a :class:`History` keeps of each past state, ``ROW_WIDTH``): its min log
        step and crowding, and the outcome of the step taken from it: log(error / threshold)
        (floored at 1e-4, capped at 1e4) and log(dt / (min step threshold**(1/3))), the correction
        the policy applied. A window of H past rows adds 5 H context columns: per slot a 0/1 flag
        (filled or not), the past min log step relative to the current one, the past crowding,
        error and correction; unfilled slots are all zeros (zero padding).

|E| and K are taken in the centre-of-mass frame. Every feature is a ratio of quantities built from
G, masses, separations, velocities and accelerations: unchanged when bodies are relabelled, the
system is translated, boosted or rotated, or lengths and masses are rescaled (velocities as
sqrt(mass / length)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.physics import gravity
from aitimestepper.physics.state import State

PAIR_FEATURES = 7
CONTEXT_FEATURES = 4
#: log(h_1 / min step) is clipped to +-RATE_STEP_CLIP (R vanishes at the apsides of an orbit)
RATE_STEP_CLIP = 3.0
CANCELLATION_FLOOR = 1e-8
#: what a look keeps of its state (min log step, crowding) ...
LOOK_ROW = 2
#: ... and a history row: those, and the step's log error over threshold and log correction
ROW_WIDTH = 4
#: context columns per history slot: filled flag and the four row quantities (relative)
SLOT_FEATURES = 5
ERROR_FLOOR, ERROR_CAP = 1e-4, 1e4
TINY = 1e-300
LOG_FLOOR = 1e-12
PERTURBATION_FLOOR = 1e-8
#: pairs' errors add as dt**3: the crowding is a soft minimum of temperature 1/3
_ERROR_ORDER = 3.0


def context_dim(history_len: int) -> int:
    """System context columns for a window of ``history_len`` past states."""
    return CONTEXT_FEATURES + SLOT_FEATURES * history_len


@dataclass(frozen=True)
class PairLook:
    """What a policy learns from one look at B current states, each with K candidate pairs.

    Attributes:
        log_step: (B, K) float64 log of the candidates' energy-normalised free-fall steps at
            threshold 1 (log time units), smallest first.
        pair_features: (B, K, PAIR_FEATURES) float64 per-candidate features.
        context: (B, CONTEXT_FEATURES) float64 system features of the current state.
        rows: (B, LOOK_ROW) float64 what a :class:`History` keeps of this state (before the step).
    """

    log_step: Tensor
    pair_features: Tensor
    context: Tensor
    rows: Tensor

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


def system_context(current: PairLook, history: History) -> Tensor:
    """(B, context_dim(H)) the current context and the window of past rows (zero-padded)."""
    if history.length == 0:
        return current.context
    slots = torch.arange(history.length, device=current.context.device)
    valid = (slots.unsqueeze(0) < history.filled.unsqueeze(1)).to(current.context.dtype)  # (B, H)
    past = history.rows
    relative = torch.cat([(past[:, :, 0] - current.rows[:, None, 0]).unsqueeze(2), past[:, :, 1:]], dim=2)
    slots = torch.cat([valid.unsqueeze(2), relative * valid[:, :, None]], dim=2)  # (B, H, SLOT_FEATURES)
    return torch.cat([current.context, slots.flatten(1)], dim=1)


def history_row(look_rows: Tensor, dt: Tensor, error: Tensor, energy_threshold: float | Tensor) -> Tensor:
    """(B, ROW_WIDTH) what a window keeps of a state once its step is taken: the (B, LOOK_ROW) rows
    of the look, and the step's (B,) ``dt`` and relative energy ``error`` against the threshold
    the policy aimed at."""
    threshold = torch.as_tensor(energy_threshold, dtype=dt.dtype)
    log_error = (error / threshold).clamp(ERROR_FLOOR, ERROR_CAP).log()
    correction = dt.log() - look_rows[:, 0] - threshold.log() / 3.0
    return torch.cat([look_rows, log_error.unsqueeze(1), correction.unsqueeze(1)], dim=1)


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
    energy = (kinetic - potential).abs().clamp_min(TINY)
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
    rate, spread = _energy_error_rate(pairs)
    rate_step = ((12.0 * pairs.energy / rate.clamp_min(TINY)).log() / _ERROR_ORDER - all_minimum.squeeze(1)).clamp(
        -RATE_STEP_CLIP, RATE_STEP_CLIP
    )
    cancellation = (rate / spread.clamp_min(TINY) + CANCELLATION_FLOOR).log()
    return PairLook(
        log_step=log_step,
        pair_features=features,
        context=torch.stack([crowding, virial, rate_step, cancellation], dim=1),
        rows=torch.stack([all_minimum.squeeze(1), crowding], dim=1),
    )


def _energy_error_rate(pairs: _Pairs) -> tuple[Tensor, Tensor]:
    """|R| and the sum of its pair terms' magnitudes (M,): R the rate of kick-drift-kick's
    leading-order one-step energy error dt**3 R / 12, summed over pairs (see the module doc)."""
    radial = (pairs.r * pairs.v).sum(dim=1)
    alpha = radial / pairs.square
    pull = (pairs.r * pairs.a).sum(dim=1)
    speed_square = pairs.v.square().sum(dim=1)
    pulling_velocity = (pairs.v * pairs.a).sum(dim=1)
    weight = pairs.product / (pairs.square * pairs.square.sqrt())
    terms = (
        -3.0
        * weight
        * (pulling_velocity - 3.0 * alpha * (pull + speed_square) + 5.0 * alpha * alpha * alpha * pairs.square)
    )
    return terms.sum(dim=1).abs(), terms.abs().sum(dim=1)


@functools.cache
def _pair_indices(n_bodies: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Bodies i and j of the P = N (N - 1) / 2 pairs i < j, row by row: two (P,) int64 tensors."""
    first, second = torch.triu_indices(n_bodies, n_bodies, offset=1, device=device)
    return first, second
