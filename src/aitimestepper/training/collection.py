"""Part 1: collect accepted states, retraining on rejected ones until they pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.features import ROW_WIDTH, history_row
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics import gravity
from aitimestepper.physics.external import TidalField
from aitimestepper.physics.state import State
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.mixture import MixtureSampler, draw_thresholds
from aitimestepper.training.step import gated_steps, optimizer_step


class RetrainLimitError(RuntimeError):
    """Part 1 needed more optimizer steps in one epoch than ``training.max_retrain_steps``."""


@dataclass(frozen=True)
class CollectionStats:
    """What one Part 1 pass did (keys are the ``part1/*`` metric names)."""

    values: dict[str, float]


@dataclass
class Lane:
    """The Part 1 systems of one body count N (3-D), with per-system bookkeeping, each (B,):
    ``end_time``, ``source`` (index into the sampler's sources), ``threshold`` (the system's
    gate), ``rejections`` (consecutive rejections of its current state)."""

    state: State
    history: History
    end_time: Tensor
    source: Tensor
    threshold: Tensor
    rejections: Tensor

    def replace(self, rows: Tensor, state: State, history: History) -> None:
        self.state = self.state.replace_rows(rows, state)
        self.history = self.history.replace_rows(rows, history)


class Collector:
    """``training.num_systems`` systems of the training mixture followed side by side, in lanes
    of equal body count; each epoch every one of them accepts ``steps_per_epoch`` steps, rejected
    systems driving optimizer steps and retrying the same state.

    Each system is gated at its own threshold, drawn with it (:func:`draw_thresholds`). Systems
    that exhaust their time budget, become unbound (E >= 0) or non-finite are replaced by fresh
    draws of the same source, and so is a system rejected ``training.max_retries_per_state`` times
    in a row on one state (a close encounter the network cannot yet resolve must not stall the
    epoch; counted as ``part1/stuck_redrawn``).
    """

    def __init__(self, params: Params, sampler: MixtureSampler) -> None:
        self.params = params
        self.sampler = sampler
        self.lanes: dict[int, Lane] = {}
        for bodies, (state, time_scale, source) in sampler.lanes().items():
            count = state.batch_size
            self.lanes[bodies] = Lane(
                state=state,
                history=History.empty(count, params.features.history_len, ROW_WIDTH),
                end_time=params.training.time_budget * time_scale,
                source=source,
                threshold=draw_thresholds(params, count, sampler.generator),
                rejections=torch.zeros(count, dtype=torch.int64),
            )

    @property
    def num_systems(self) -> int:
        return sum(lane.state.batch_size for lane in self.lanes.values())

    def collect(self, policy: LearnedPolicy, optimizer: torch.optim.Optimizer, buffer: ReplayBuffer) -> CollectionStats:
        """Run Part 1 once; accepted pre-step states (with their windows) go to ``buffer``,
        except warm-up states whose history is still zero-padded."""
        params, training = self.params, self.params.training
        accepted = {n: torch.zeros(lane.state.batch_size, dtype=torch.int64) for n, lane in self.lanes.items()}
        retries = {n: torch.zeros_like(count) for n, count in accepted.items()}
        attempts = retrain_steps = skipped_updates = warmup_discarded = 0
        redrawn = {"finished": 0, "stuck": 0}
        accepted_errors: list[Tensor] = []
        accepted_fractions: list[Tensor] = []
        while True:
            active = {n: (count < training.steps_per_epoch).nonzero().squeeze(1) for n, count in accepted.items()}
            active = {n: rows for n, rows in active.items() if rows.numel()}
            if not active:
                break
            lanes = {n: self.lanes[n] for n in active}
            states = [lanes[n].state.select(rows) for n, rows in active.items()]
            histories = [lanes[n].history.select(rows) for n, rows in active.items()]
            thresholds = [lanes[n].threshold[rows] for n, rows in active.items()]
            outcomes, loss = gated_steps(policy, states, histories, thresholds, params)
            attempts += sum(rows.numel() for rows in active.values())
            if not all(bool(outcome.passed.all()) for outcome in outcomes):
                if training.max_retrain_steps is not None and retrain_steps >= training.max_retrain_steps:
                    rejected = sum(int((~outcome.passed).sum()) for outcome in outcomes)
                    raise RetrainLimitError(
                        f"Part 1 reached training.max_retrain_steps = {training.max_retrain_steps} optimizer steps "
                        f"in one epoch with {rejected} systems still rejected; raise the cap, "
                        f"lower the learning rate or loosen energy_threshold"
                    )
                stepped = optimizer_step(loss, optimizer, policy.network.parameters(), training.grad_clip)
                retrain_steps += 1
                skipped_updates += not stepped
            for (bodies, rows), state, history, threshold, outcome in zip(
                active.items(), states, histories, thresholds, outcomes, strict=True
            ):
                lane = lanes[bodies]
                passed = outcome.passed
                retries[bodies][rows[~passed]] += 1
                lane.rejections[rows] = torch.where(passed, 0, lane.rejections[rows] + 1)
                if bool(passed.any()):
                    warming = history.warming_up()
                    buffer.add(state.select(passed & ~warming), history.select(passed & ~warming))
                    warmup_discarded += int((passed & warming).sum())
                    accepted_errors.append(outcome.error[passed] / threshold[passed])
                    scale = outcome.seen.min_step[passed] * threshold[passed] ** (1.0 / 3.0)
                    accepted_fractions.append(outcome.dt[passed] / scale)
                    row = history_row(
                        outcome.seen.rows[passed], outcome.dt[passed], outcome.error[passed], threshold[passed]
                    )
                    lane.replace(rows[passed], outcome.after.select(passed), history.select(passed).push(row))
                    accepted[bodies][rows[passed]] += 1
            for bodies in active:
                finished, stuck = self._redraw(bodies)
                redrawn["finished"] += finished
                redrawn["stuck"] += stuck
        errors = torch.cat(accepted_errors)
        fractions = torch.cat(accepted_fractions)
        all_retries = torch.cat(list(retries.values()))
        needed = all_retries[all_retries > 0]
        return CollectionStats(
            {
                "acceptance_rate": float(sum(int(c.sum()) for c in accepted.values())) / attempts,
                "attempts": float(attempts),
                "retrain_steps": float(retrain_steps),
                "skipped_updates": float(skipped_updates),
                "retrain_iterations_mean": float(needed.double().mean()) if needed.numel() else 0.0,
                "retrain_iterations_max": float(all_retries.max()),
                "error_over_threshold_mean": float(errors.mean()),
                "error_over_threshold_max": float(errors.max()),
                "dt_over_energy_free_fall_mean": float(fractions.mean()),
                "dt_over_energy_free_fall_min": float(fractions.min()),
                "dt_over_energy_free_fall_max": float(fractions.max()),
                "warmup_discarded": float(warmup_discarded),
                "redrawn": float(redrawn["finished"]),
                "stuck_redrawn": float(redrawn["stuck"]),
            }
        )

    def _redraw(self, bodies: int) -> tuple[int, int]:
        """Replace the systems of lane ``bodies`` that are past their time budget, unbound,
        non-finite or stuck; returns (finished, stuck) counts."""
        lane = self.lanes[bodies]
        state = lane.state
        own_energy = gravity.total_energy(state.positions, state.velocities, state.masses, state.softening)
        finished = (state.time >= lane.end_time) | (own_energy >= 0) | ~state.finite_mask()
        stuck = lane.rejections >= self.params.training.max_retries_per_state
        replace = finished | stuck
        if not bool(replace.any()):
            return 0, 0
        rows = replace.nonzero().squeeze(1)
        fresh, time_scale = self.sampler.redraw(lane.source[rows])
        lane.replace(rows, fresh, History.empty(rows.numel(), lane.history.length, ROW_WIDTH))
        lane.end_time = lane.end_time.index_copy(0, rows, self.params.training.time_budget * time_scale)
        lane.threshold = lane.threshold.index_copy(
            0, rows, draw_thresholds(self.params, rows.numel(), self.sampler.generator)
        )
        lane.rejections[rows] = 0
        return int(finished.sum()), int((stuck & ~finished).sum())

    def state_dict(self) -> dict:
        """Tensors of the systems being followed, for resuming."""
        return {
            str(n): {
                "positions": lane.state.positions,
                "velocities": lane.state.velocities,
                "masses": lane.state.masses,
                "accelerations": lane.state.accelerations,
                "time": lane.state.time,
                "softening": lane.state.softening,
                "history_rows": lane.history.rows,
                "filled": lane.history.filled,
                "end_time": lane.end_time,
                "source": lane.source,
                "threshold": lane.threshold,
                "rejections": lane.rejections,
                "field": lane.state.field.as_dict(),
            }
            for n, lane in self.lanes.items()
        }

    def load_state_dict(self, saved: dict) -> None:
        self.lanes = {
            int(n): Lane(
                state=State(
                    v["positions"],
                    v["velocities"],
                    v["masses"],
                    v["accelerations"],
                    v["time"],
                    v["softening"],
                    TidalField.from_dict(v["field"]),
                ),
                history=History(v["history_rows"], v["filled"]),
                end_time=v["end_time"],
                source=v["source"],
                threshold=v["threshold"],
                rejections=v["rejections"],
            )
            for n, v in saved.items()
        }
