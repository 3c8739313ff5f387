"""One policy over one family: per-system costs and errors, counted per time scale."""

from __future__ import annotations

from typing import Any

import torch

from aitimestepper.evaluation.suite import Family
from aitimestepper.policies import FixedStep, Oracle, TimeStepPolicy, pairwise_passes_per_step
from aitimestepper.rollout import rollout

#: the fixed-dt rule needs ~1e5 steps per orbit on eccentric systems; its pass rate is measured
#: on at most this many steps (its cost per time scale, time_scale / dt, is exact regardless)
FIXED_MAX_STEPS = 5_000


def run_family(
    family: Family,
    policy: TimeStepPolicy,
    *,
    energy_threshold: float,
    gated: bool,
    max_steps: int,
    duration: float | None = None,
    shadowed: bool = False,
) -> list[dict[str, Any]]:
    """Integrate every system of ``family`` with ``policy`` for ``duration`` time scales (default
    the family's) and describe each run.

    Returns:
        One dict per system, in the family's order: its labels, ``dim``, ``bodies``, and
        ``force_evaluations_per_time_scale`` (rejected tries and extra pairwise passes included;
        see :mod:`aitimestepper.policies`), ``steps_per_time_scale``, ``evaluations_per_time_scale``
        (every trial step of the oracle too), ``time_scales_simulated``, ``gate_pass_rate``,
        ``max_step_error_over_threshold``, ``max_energy_error``, ``final_energy_error``,
        ``reached_end``, ``failed``. A fixed step's cost per time scale is time_scale / dt, exact
        even when its run is cut short at ``FIXED_MAX_STEPS``. ``shadowed``: the greedy oracle
        also searches its step at every state of the run (see :func:`aitimestepper.rollout.rollout`),
        adding ``oracle_steps_same_path_per_time_scale``, its cost over the same path.
    """
    duration = family.duration if duration is None else duration
    fixed = isinstance(policy, FixedStep)
    trials = pairwise_passes_per_step(policy) - 1 - policy.extra_force_evaluations
    rows = []
    for group in family.groups:
        result = rollout(
            group.state,
            policy,
            duration * group.time_scale,
            energy_threshold=energy_threshold,
            max_steps=min(max_steps, FIXED_MAX_STEPS) if fixed else max_steps,
            gated=gated,
            shadow=Oracle(energy_threshold) if shadowed else None,
        )
        elapsed = (result.final_state.time / group.time_scale).clamp_min(torch.finfo(torch.float64).tiny)
        steps = result.steps.double()
        if fixed:
            per_time_scale = group.time_scale / policy.dt
            force_evaluations = per_time_scale
        else:
            per_time_scale = steps / elapsed
            force_evaluations = result.force_evaluations.double() / elapsed
        columns = {
            "force_evaluations_per_time_scale": force_evaluations,
            "steps_per_time_scale": per_time_scale,
            "evaluations_per_time_scale": force_evaluations + trials * per_time_scale,
            "time_scales_simulated": elapsed,
            "gate_pass_rate": result.steps_passed / steps.clamp_min(1),
            "max_step_error_over_threshold": result.max_step_error / energy_threshold,
            "max_energy_error": result.max_energy_error,
            "final_energy_error": result.final_energy_error,
            "reached_end": result.reached_end,
            "failed": result.failed,
        }
        if result.oracle_steps is not None:
            columns["oracle_steps_same_path_per_time_scale"] = result.oracle_steps / elapsed
        for k in range(group.state.batch_size):
            rows.append(
                {
                    **group.labels[k],
                    "dim": group.state.dim,
                    "bodies": group.state.num_bodies,
                    **{key: values[k].item() for key, values in columns.items()},
                }
            )
    return rows
