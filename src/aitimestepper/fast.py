"""The compiled rollout path: the same step, gate and policies as the torch reference, per system
in compiled code (:mod:`aitimestepper.kernels`), in parallel over systems.

:func:`supports` says whether a policy has a compiled twin (every classical policy, and the
learned policy with tanh layers); where it has one, the twin is the faster path at every batch
size measured (the learned policy: 1.2-20x faster than torch's batched matrix products from 16
to 32768 network rows per step, N = 2 to 32); :func:`fast_rollout` runs it and returns the same
:class:`aitimestepper.rollout.Rollout` as the torch path, whose results it matches to round-off
(tests compare them on every family). It records trajectories too, up to
``RECORD_BUDGET_BYTES`` of them (:func:`record_fits`; the torch path records any length).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aitimestepper.physics.state import DTYPE, State
from aitimestepper.policies import PRS23, EnergyFeedback, EnergyFreeFall, FixedStep, FreeFall, Oracle, TimeStepPolicy

_EMPTY = np.zeros(0)
#: what the kernel reads of a learned policy, for the other policies (one compiled signature)
_NO_NETWORK = (_EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, np.zeros((0, 3), dtype=np.int64))
_NO_NUMBERS = (0, 0, 1.0, 0.0, 0.0, 0.0)
#: the compiled path records a trajectory if its arrays, sized for every possible step, fit in this
RECORD_BUDGET_BYTES = 512 * 2**20


#: the modules whose code or constants the compiled kernels are built from
_KERNEL_SOURCES = (
    "kernels/physics.py",
    "kernels/kepler.py",
    "kernels/learned.py",
    "kernels/oracle.py",
    "kernels/rollout.py",
    "features.py",
    "model.py",
    "rollout.py",
)


@functools.cache
def _kernels():
    """The kernel module, compiled (or loaded from the on-disk cache) on first use.

    Numba's cache notices a change of a kernel's own file only, not of the functions and constants
    it imports: the cache lives in a directory named after a hash of every source the kernels are
    built from (``$NUMBA_CACHE_DIR`` if set, else ``~/.cache/aitimestepper/numba-<hash>``), so an
    edit to any of them compiles afresh instead of running stale code.
    """
    import numba

    root = Path(__file__).parent
    digest = hashlib.sha256(b"".join((root / name).read_bytes() for name in _KERNEL_SOURCES)).hexdigest()[:16]
    base = Path(os.environ.get("NUMBA_CACHE_DIR") or Path.home() / ".cache" / "aitimestepper")
    numba.config.CACHE_DIR = str(base / f"numba-{digest}")
    from aitimestepper.kernels import rollout

    return rollout


def kernel_threads() -> int:
    """The threads compiled rollouts run on (``NUMBA_NUM_THREADS``)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


@contextlib.contextmanager
def single_threaded_kernels():
    """Compiled rollouts of the calling thread run on one thread: for callers that run several
    rollouts side by side on threads of their own (numba's thread count is per calling thread;
    the rollout kernel releases the GIL). Results are the same on any number of threads."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def supports(policy: TimeStepPolicy) -> bool:
    """Whether ``policy`` has a compiled twin."""
    from aitimestepper.model import LearnedPolicy

    if isinstance(policy, LearnedPolicy):
        return policy.params.model.activation == "tanh"
    return type(policy) in (FixedStep, FreeFall, EnergyFreeFall, PRS23, EnergyFeedback, Oracle)


def record_fits(state: State, max_steps: int) -> bool:
    """Whether the compiled path can record a trajectory of ``max_steps`` steps of ``state``
    (B, N, D): time, step, energy error and positions per step, within ``RECORD_BUDGET_BYTES``."""
    per_row = state.batch_size * (3 + state.num_bodies * state.dim) * 8
    return (max_steps + 1) * per_row <= RECORD_BUDGET_BYTES


def fast_rollout(
    state: State,
    policy: TimeStepPolicy,
    end_time: Tensor,
    *,
    energy_threshold: float | Tensor,
    max_steps: int,
    step_caps: Tensor | None = None,
    gated: bool = False,
    shadow: Oracle | None = None,
    record: bool = False,
):
    """:func:`aitimestepper.rollout.rollout` in compiled code (no progress calls); ``record``:
    keep its :class:`aitimestepper.rollout.Trajectory` (see :func:`record_fits`)."""
    from aitimestepper.rollout import Rollout

    kernels = _kernels()
    batch = state.batch_size
    positions = state.positions.detach().numpy().copy()
    velocities = state.velocities.detach().numpy().copy()
    accelerations = state.accelerations.detach().numpy().copy()
    times = state.time.detach().numpy().copy()
    gate = _per_system(energy_threshold, batch)
    caps = (step_caps if step_caps is not None else torch.full((batch,), max_steps)).numpy().astype(np.int64)
    from aitimestepper.model import LearnedPolicy

    if isinstance(policy, LearnedPolicy):
        policy.refuse_field(state)
    spec = _kernel_policy(policy, batch, gate)
    int_stats = np.zeros((batch, 4), dtype=np.int64)
    float_stats = np.zeros((batch, len(kernels.FLOAT_STATS)))
    rows = min(int(caps.max(initial=0)), int(max_steps)) + 1 if record else 0
    records = (
        np.zeros((batch, rows)),
        np.zeros((batch, rows)),
        np.zeros((batch, rows)),
        np.zeros((batch, rows, state.num_bodies, state.dim)),
    )
    kernels.rollout_kernel(
        positions,
        velocities,
        accelerations,
        state.masses.detach().numpy(),
        state.softening.detach().numpy(),
        times,
        end_time.detach().numpy().astype(np.float64),
        gate,
        spec["aim"],
        caps,
        int(max_steps),
        bool(gated),
        kernels.KINDS[spec["kind"]],
        spec["scalars"],
        int(policy.extra_force_evaluations),
        spec.get("grid", _EMPTY),
        spec.get("history_length", 0),
        spec.get("network", _NO_NETWORK),
        spec.get("numbers", _NO_NUMBERS),
        shadow.grid.numpy() if shadow is not None else _EMPTY,
        shadow.bisections if shadow is not None else 0,
        shadow.energy_threshold if shadow is not None else 1.0,
        field_rows(state),
        int_stats,
        float_stats,
        *records,
    )
    final = State(
        positions=torch.from_numpy(positions),
        velocities=torch.from_numpy(velocities),
        masses=state.masses,
        accelerations=torch.from_numpy(accelerations),
        time=torch.from_numpy(times),
        softening=state.softening,
        external=state.external,
    )
    steps = torch.from_numpy(int_stats[:, 0].copy())
    floats = torch.from_numpy(float_stats)
    end = end_time.to(DTYPE)
    return Rollout(
        final_state=final,
        steps=steps,
        force_evaluations=torch.from_numpy(int_stats[:, 1].copy()),
        steps_passed=torch.from_numpy(int_stats[:, 2].copy()),
        max_energy_error=floats[:, 0].clone(),
        final_energy_error=floats[:, 1].clone(),
        max_step_error=floats[:, 2].clone(),
        dt_min=floats[:, 3].clone(),
        dt_max=floats[:, 4].clone(),
        dt_mean=floats[:, 5] / steps.clamp_min(1),
        proposed_dt_min=floats[:, 6].clone(),
        oracle_steps=floats[:, 7].clone() if shadow is not None else None,
        reached_end=end - final.time <= 1e-12 * end.abs(),
        failed=torch.from_numpy(int_stats[:, 3].copy()).bool(),
        momentum_drift=(final.momentum() - state.momentum()).norm(dim=-1),
        angular_momentum_drift=(final.angular_momentum() - state.angular_momentum()).reshape(batch, -1).norm(dim=-1),
        trajectory=_trajectory(records, int_stats[:, 0], int_stats[:, 3]) if record else None,
    )


def _trajectory(records: tuple[np.ndarray, ...], steps: np.ndarray, failed: np.ndarray):
    """The kernel's records (B, T, ...) as the torch path's :class:`aitimestepper.rollout.Trajectory`
    (T, B, ...): as long as the longest run's steps (and the failing try of a failed system) + 1,
    each system repeating its last row with dt 0 after its own run."""
    from aitimestepper.rollout import Trajectory

    length = int((steps + failed).max(initial=0)) + 1
    rows = np.arange(length)[None, :]
    index = np.minimum(rows, steps[:, None])  # (B, T): the system's row, held at its last step
    moved = rows <= steps[:, None]
    time, dt, error, positions = (np.take_along_axis(values, _expand(index, values), axis=1) for values in records)
    dt = np.where(moved, dt, 0.0)
    return Trajectory(
        time=torch.from_numpy(np.ascontiguousarray(time.T)),
        dt=torch.from_numpy(np.ascontiguousarray(dt.T)),
        energy_error=torch.from_numpy(np.ascontiguousarray(error.T)),
        positions=torch.from_numpy(np.ascontiguousarray(positions.transpose(1, 0, 2, 3))),
    )


def _expand(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    return index.reshape(index.shape + (1,) * (values.ndim - 2))


def field_rows(state: State) -> np.ndarray:
    """(B, 3 + D) each system's tidal field as the kernels read it: host mass (0: no field), the
    host's softening, its rotation rate, its position at time 0."""
    field = state.external
    if field is None:
        return np.zeros((state.batch_size, 3 + state.dim))
    columns = (field.host_mass[:, None], field.softening[:, None], field.rotation[:, None], field.host_position)
    return torch.cat(columns, dim=1).detach().numpy().astype(np.float64)


def _per_system(value: float | Tensor, batch: int) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().to(DTYPE).expand(batch).numpy().copy()
    return np.full(batch, float(value))


def _kernel_policy(policy: TimeStepPolicy, batch: int, gate: np.ndarray) -> dict:
    """The kernel's description of ``policy``: its kind, numbers, the threshold it aims at (B,)."""
    from aitimestepper.model import LearnedPolicy

    if not supports(policy):
        raise ValueError(f"policy {policy.name!r} has no compiled twin (the compiled network has tanh layers only)")
    if isinstance(policy, FixedStep):
        return {"kind": "fixed", "scalars": np.array([policy.dt]), "aim": gate}
    if isinstance(policy, (FreeFall, EnergyFreeFall, PRS23)):
        return {"kind": policy.name, "scalars": np.array([policy.eta]), "aim": gate}
    if isinstance(policy, EnergyFeedback):
        scalars = np.array([policy.target, policy.safety, policy.initial_fraction])
        return {"kind": "energy_feedback", "scalars": scalars, "aim": _per_system(policy.energy_threshold, batch)}
    if isinstance(policy, Oracle):
        return {
            "kind": "oracle",
            "scalars": np.array([float(policy.bisections)]),
            "grid": policy.grid.numpy(),
            "aim": _per_system(policy.energy_threshold, batch),
        }
    if isinstance(policy, LearnedPolicy):
        network = policy.network
        blocks, layout, offset = [], [], 0
        linears = [m for m in network.embed if isinstance(m, torch.nn.Linear)]
        linears += [m for m in network.head if isinstance(m, torch.nn.Linear)] + [network.skip]
        for linear in linears:
            # input-major, float64 (exact copies of the float32 weights: the kernel's products are unchanged)
            weight = linear.weight.detach().T.contiguous().numpy().astype(np.float64).ravel()
            bias = linear.bias.detach().numpy().astype(np.float64)
            layout.append((linear.in_features, linear.out_features, offset))
            blocks += [weight, bias]
            offset += weight.size + bias.size
        arrays = (network.pair_mean, network.pair_scale, network.context_mean, network.context_scale)
        return {
            "kind": "learned",
            "scalars": _EMPTY,
            "aim": _per_system(policy.energy_threshold, batch),
            "history_length": policy.history_len,
            "network": (
                *(array.numpy() for array in arrays),
                np.concatenate(blocks),
                np.array(layout, dtype=np.int64),
            ),
            "numbers": (
                int(policy.candidates),
                len(linears) - 3,
                float(policy.temperature),
                float(network.log_min),
                float(network.log_max),
                math.log(policy.params.energy_threshold),
            ),
        }
    raise ValueError(f"policy {policy.name!r} has no compiled twin")
