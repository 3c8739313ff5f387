"""The learned policy of one system, compiled: the look of :func:`aitimestepper.features.look` and
the network of :class:`aitimestepper.model.PairNet`, operation by operation; the context's Kepler
step is :func:`aitimestepper.kernels.kepler.kepler_step` itself, as on the torch path.

The network's layers arrive as one flat float64 array of weights (exact copies of the float32
weights) and a (L, 3) int64 layout (inputs, outputs, offset of the weight matrix stored
input-major, (in, out); its bias follows it): the embedding
layers first, then the head's two, then the linear path from the inputs. Layers compute in
float32 (products summed in float64, then rounded: within round-off of torch's float32 matrix
products) with tanh activations.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aitimestepper.features import (
    CANCELLATION_FLOOR,
    CONTEXT_FEATURES,
    CROSSING_BISECTIONS,
    CROSSING_POINTS,
    KEPLER_CANCELLATION_COLUMN,
    KEPLER_COLUMN,
    LOG_FLOOR,
    LOOK_FEATURES,
    PAIR_FEATURES,
    PERTURBATION_FLOOR,
    QUARTIC_BISECTIONS,
    QUINTIC_COLUMN,
    RATE_BOUND,
    RATE_STEP_CLIP,
    SLOT_FEATURES,
    TIDAL_COLUMN,
    TIDAL_SCALE,
    TINY,
)
from aitimestepper.kernels.kepler import KEPLER_PAIR, kepler_step
from aitimestepper.kernels.physics import (
    FIELD_MASS,
    com_kinetic_and_potential,
    energy,
    energy_error_rate,
    pair_log_steps,
    rate_term,
    square_distance,
    tidal_frequency_square,
)
from aitimestepper.model import INPUT_CLIP


@njit(cache=True)
def _standardized(value, mean, scale):
    """As the torch network: (value - mean) / scale, NaN to 0, clipped to +-INPUT_CLIP, in float32."""
    standard = (value - mean) / scale
    if math.isnan(standard):
        standard = 0.0
    return np.float32(min(max(standard, -INPUT_CLIP), INPUT_CLIP))


@njit(cache=True)
def _dense(weights, layout, layer, inputs, activate):
    """One layer on a (K, in) float32 batch: (K, out) float32. Each output sums bias + w_0 x_0 +
    w_1 x_1 + ... in float64, in that order; the loop over outputs is innermost (the weights are
    stored input-major, as float64: exact copies of the float32 weights), so the outputs
    accumulate side by side in vector registers instead of in one chain of dependent additions."""
    size_in, size_out, offset = layout[layer, 0], layout[layer, 1], layout[layer, 2]
    bias = offset + size_in * size_out
    matrix = weights[offset:bias].reshape(size_in, size_out)
    out = np.empty((inputs.shape[0], size_out), dtype=np.float32)
    totals = np.empty(size_out)
    for k in range(inputs.shape[0]):
        for o in range(size_out):
            totals[o] = weights[bias + o]
        for i in range(size_in):
            value = np.float64(inputs[k, i])
            for o in range(size_out):
                totals[o] += matrix[i, o] * value
        for o in range(size_out):
            result = np.float32(totals[o])
            out[k, o] = np.tanh(result) if activate else result
    return out


@njit(cache=True)
def quartic_root(rate, change):
    """log x of the smallest x > 0 with x**3 |a + b x| = 1, as
    :func:`aitimestepper.features._quartic_root` (the same bracket and bisections)."""
    a = min(max(abs(rate), 1.0 / RATE_BOUND), RATE_BOUND)
    b = (-change if rate < 0 else change) / 2.0
    slope = min(max(abs(b), 1.0 / RATE_BOUND), RATE_BOUND)
    leading, trailing = a ** (-1.0 / 3.0), slope**-0.25
    if b >= 0:
        hi = min(leading, trailing)
        lo = 0.5 * hi
    elif (0.75 * a / slope) ** 3.0 * a / 4.0 >= 1.0:
        lo, hi = leading, (4.0 / a) ** (1.0 / 3.0)
    else:
        zero = a / slope
        lo, hi = max(zero, trailing), zero + trailing
    lo, hi = math.log(lo), math.log(hi)
    for _ in range(QUARTIC_BISECTIONS):
        middle = 0.5 * (lo + hi)
        x = math.exp(middle)
        if x * x * x * abs(a + b * x) >= 1.0:
            hi = middle
        else:
            lo = middle
    return hi


@njit(cache=True)
def _crossing_value(c0, c1, c2, log_x):
    x = math.exp(log_x)
    return x * x * x * abs(c0 + c1 * x + c2 * x * x)


@njit(cache=True)
def first_crossing(c0, c1, c2):
    """As :func:`aitimestepper.features._first_crossing`: the same grid and bisections."""
    spacing = 2.0 * RATE_STEP_CLIP / (CROSSING_POINTS - 1)
    for k in range(CROSSING_POINTS):
        hi = -RATE_STEP_CLIP + k * spacing
        if _crossing_value(c0, c1, c2, hi) >= 1.0:
            if k == 0:
                return -RATE_STEP_CLIP
            lo = -RATE_STEP_CLIP + (k - 1) * spacing
            for _ in range(CROSSING_BISECTIONS):
                middle = 0.5 * (lo + hi)
                if _crossing_value(c0, c1, c2, middle) >= 1.0:
                    hi = middle
                else:
                    lo = middle
            return hi
    return RATE_STEP_CLIP


@njit(cache=True, error_model="numpy")
def quintic_step(rate, minimum, history, filled):
    """As :func:`aitimestepper.features.quintic_step` for one system (a division by zero gives
    inf or NaN, as in torch)."""
    slope = curvature = 0.0
    if filled >= 1:
        step0 = math.exp(history[0, 0] + history[0, 3] - minimum)
        rate0 = history[0, 4] * math.exp(3.0 * (minimum - history[0, 0]))
        latest = (rate - rate0) / step0
        if filled >= 2:
            step1 = math.exp(history[1, 0] + history[1, 3] - minimum)
            rate1 = history[1, 4] * math.exp(3.0 * (minimum - history[1, 0]))
            earlier = (rate0 - rate1) / step1
            curvature = (latest - earlier) / (0.5 * (step0 + step1))
        slope = latest + 0.5 * curvature * step0
    return first_crossing(rate, slope / 2.0, curvature / 6.0)


@njit(cache=True)
def look_and_step(
    positions, velocities, acc, masses, eps, field, time, log_threshold, history, filled, network, numbers
):
    """log dt of the learned policy for one system, and the three quantities its look keeps (min
    log step, crowding, dimensionless rate).

    Args:
        field, time: the system's tidal-field row (host mass 0: none) and its time.
        log_threshold: log of the system's threshold.
        history: (H, ROW_WIDTH) float64 past rows, most recent first; ``filled`` of them are real.
        network: (pair_mean, pair_scale, context_mean, context_scale, weights, layout) arrays.
        numbers: (candidates, embed_layers, temperature, log_min, log_max, log_reference): the
            most candidate pairs, the embedding layers, the soft minimum's temperature, the
            corrections' clamp and the log of the contract's threshold.
    """
    pair_mean, pair_scale, context_mean, context_scale, weights, layout = network
    candidates, embed_layers, temperature, log_min, log_max, log_reference = numbers
    count, dim = positions.shape
    pairs = count * (count - 1) // 2
    kinetic, potential = com_kinetic_and_potential(positions, velocities, masses, eps)
    if field[FIELD_MASS] == 0.0:
        system_energy = max(abs(kinetic - potential), TINY)
    else:  # the gated quantity, with the field's terms, in the field's frame
        system_energy = max(abs(energy(positions, velocities, masses, eps, field, time)), TINY)
    log_energy = math.log(system_energy)
    log_steps = np.empty(pairs)
    pair_log_steps(positions, masses, eps, system_energy, log_steps)
    minimum = log_steps.min()
    shifted = np.empty(pairs)
    for p in range(pairs):
        shifted[p] = -3.0 * (log_steps[p] - minimum)
    top = shifted.max()
    total = 0.0
    for p in range(pairs):
        total += math.exp(shifted[p] - top)
    crowding = -(top + math.log(total)) / 3.0
    virial = math.log(2.0 * kinetic / max(potential, TINY) + LOG_FLOOR)
    signed_rate, spread = energy_error_rate(positions, velocities, acc, masses, eps)
    rate = abs(signed_rate)
    dimensionless_rate = signed_rate / (12.0 * system_energy) * math.exp(3.0 * minimum)
    change = 0.0
    if filled > 0:
        shift = minimum - history[0, 0]
        change = math.exp(shift - history[0, 3]) * (dimensionless_rate - history[0, 4] * math.exp(3.0 * shift))
    quartic = min(max(quartic_root(dimensionless_rate, change), -RATE_STEP_CLIP), RATE_STEP_CLIP)
    rate_step = math.log(12.0 * system_energy / max(rate, TINY)) / 3.0 - minimum
    rate_step = min(max(rate_step, -RATE_STEP_CLIP), RATE_STEP_CLIP)
    cancellation = math.log(rate / max(spread, TINY) + CANCELLATION_FLOOR)

    keep = min(pairs, candidates)
    chosen = np.argsort(log_steps, kind="mergesort")[:keep]
    first = np.empty(pairs, dtype=np.int64)
    second = np.empty(pairs, dtype=np.int64)
    p = 0
    for i in range(count):
        for j in range(i + 1, count):
            first[p] = i
            second[p] = j
            p += 1

    context_width = context_mean.shape[0]
    context = np.empty(context_width)
    context[0] = crowding
    context[1] = virial
    context[2] = rate_step
    context[3] = cancellation
    context[TIDAL_COLUMN] = math.log1p(tidal_frequency_square(field, time, dim) * math.exp(2.0 * minimum) / TIDAL_SCALE)
    context[LOOK_FEATURES] = quartic
    context[QUINTIC_COLUMN] = quintic_step(dimensionless_rate, minimum, history, filled)
    for slot in range(history.shape[0]):
        valid = 1.0 if slot < filled else 0.0
        start = CONTEXT_FEATURES + SLOT_FEATURES * slot
        context[start] = valid
        context[start + 1] = (history[slot, 0] - minimum) * valid
        for q in range(1, 4):
            context[start + 1 + q] = history[slot, q] * valid
    context[context_width - 1] = log_threshold - log_reference

    features = np.empty((keep, PAIR_FEATURES))
    kepler = np.empty((keep, KEPLER_PAIR))
    own_rate = 0.0
    for k in range(keep):
        i, j = first[chosen[k]], second[chosen[k]]
        square = square_distance(positions, i, j, eps)
        bare = 0.0
        speed = 0.0
        radial = 0.0
        for d in range(dim):
            r = positions[j, d] - positions[i, d]
            v = velocities[j, d] - velocities[i, d]
            bare += r * r
            speed += v * v
            radial += r * v
        mass = masses[i] + masses[j]
        product = masses[i] * masses[j]
        distance = math.sqrt(square)
        scale = mass / (square * distance)
        mutual_square = 0.0
        residual_square = 0.0
        pull = 0.0
        pulling_velocity = 0.0
        for d in range(dim):
            mutual = -scale * (positions[j, d] - positions[i, d])
            mutual_square += mutual * mutual
            residual = (acc[j, d] - acc[i, d]) - mutual
            residual_square += residual * residual
            pull += (positions[j, d] - positions[i, d]) * mutual
            pulling_velocity += (velocities[j, d] - velocities[i, d]) * mutual
        perturbation = math.sqrt(residual_square) / max(math.sqrt(mutual_square), TINY)
        cos_phi = radial / max(math.sqrt(bare * speed), TINY)
        features[k, 0] = math.log(speed * distance / mass + LOG_FLOOR)
        features[k, 1] = cos_phi
        features[k, 2] = log_steps[chosen[k]] - log_steps[chosen[0]]
        features[k, 3] = math.log(product / distance) - log_energy
        features[k, 4] = eps * eps / square
        features[k, 5] = math.log(min(masses[i], masses[j]) / max(masses[i], masses[j]))
        features[k, 6] = math.log(perturbation + PERTURBATION_FLOOR)
        own_rate += rate_term(radial, pull, speed, pulling_velocity, square, product)
        kepler[k, 0] = features[k, 0]
        kepler[k, 1] = math.acos(min(max(cos_phi, -1.0), 1.0))
        kepler[k, 2] = 0.5 * math.log(square * distance / mass) - minimum
        kepler[k, 3] = features[k, 3]
        kepler[k, 4] = features[k, 4]
    rest = (signed_rate - own_rate) / (12.0 * system_energy) * math.exp(3.0 * minimum)
    step, kepler_cancellation = kepler_step(kepler, keep, rest, log_threshold)
    context[KEPLER_COLUMN] = step
    context[KEPLER_CANCELLATION_COLUMN] = math.log(kepler_cancellation + CANCELLATION_FLOOR)

    inputs = np.empty((keep, PAIR_FEATURES + context_width), dtype=np.float32)
    for k in range(keep):
        for f in range(PAIR_FEATURES):
            inputs[k, f] = _standardized(features[k, f], pair_mean[f], pair_scale[f])
        for c in range(context_width):
            inputs[k, PAIR_FEATURES + c] = _standardized(context[c], context_mean[c], context_scale[c])

    hidden = inputs
    for layer in range(embed_layers):
        hidden = _dense(weights, layout, layer, hidden, True)
    width = hidden.shape[1]
    head_inputs = np.empty((keep, 2 * width), dtype=np.float32)
    for o in range(width):
        pooled = np.float32(0.0)
        for k in range(keep):
            pooled += hidden[k, o]
        pooled = np.float32(pooled / np.float32(keep))
        for k in range(keep):
            head_inputs[k, o] = hidden[k, o]
            head_inputs[k, width + o] = pooled
    head = _dense(weights, layout, embed_layers, head_inputs, True)
    corrections = _dense(weights, layout, embed_layers + 1, head, False)
    skip = _dense(weights, layout, embed_layers + 2, inputs, False)

    corrected = np.empty(keep)
    for k in range(keep):
        correction = min(max(np.float64(np.float32(corrections[k, 0] + skip[k, 0])), log_min), log_max)
        corrected[k] = -(log_steps[chosen[k]] + correction) / temperature
    top = corrected.max()
    total = 0.0
    for k in range(keep):
        total += math.exp(corrected[k] - top)
    reference = context[KEPLER_COLUMN]
    log_dt = -temperature * (top + math.log(total)) + reference + log_threshold / 3.0
    return log_dt, minimum, crowding, dimensionless_rate
