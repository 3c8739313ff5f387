"""Part 1: collect accepted states, retraining on rejected ones until they pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.features import snapshot_width
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.state import State
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.sampler import SystemSampler, draw_thresholds
from aitimestepper.training.step import gated_step, optimizer_step


class RetrainLimitError(RuntimeError):
    """Part 1 needed more optimizer steps in one epoch than ``training.max_retrain_steps``."""


@dataclass(frozen=True)
class CollectionStats:
    """What one Part 1 pass did (keys are the ``part1/*`` metric names)."""

    values: dict[str, float]


class Collector:
    """``num_orbits`` systems followed side by side; each epoch every one of them accepts
    ``steps_per_epoch`` steps, rejected systems driving optimizer steps and retrying the same state.

    Each system is gated at its own threshold, drawn with it (:func:`draw_thresholds`). Systems
    that exhaust their orbit budget, become unbound (E >= 0) or non-finite are replaced by fresh
    draws, so collection covers every orbital phase and many systems.
    """

    def __init__(self, params: Params, sampler: SystemSampler) -> None:
        self.params = params
        self.sampler = sampler
        self.state, period = sampler.draw(params.training.num_orbits)
        self.end_time = params.training.orbit_budget * period
        self.energy_threshold = draw_thresholds(params, self.state.batch_size, sampler.generator)
        self.history = History.empty(
            self.state.batch_size, params.features.history_len, snapshot_width(params.features.family)
        )

    def collect(self, policy: LearnedPolicy, optimizer: torch.optim.Optimizer, buffer: ReplayBuffer) -> CollectionStats:
        """Run Part 1 once; accepted pre-step states (with their windows) go to ``buffer``,
        except warm-up states whose history is still zero-padded."""
        params, training = self.params, self.params.training
        batch = self.state.batch_size
        accepted = torch.zeros(batch, dtype=torch.int64)
        retries = torch.zeros(batch, dtype=torch.int64)
        attempts = retrain_steps = skipped_updates = warmup_discarded = redrawn = 0
        accepted_errors: list[Tensor] = []
        accepted_fractions: list[Tensor] = []
        while bool((accepted < training.steps_per_epoch).any()):
            active = (accepted < training.steps_per_epoch).nonzero().squeeze(1)
            state, history = self.state.select(active), self.history.select(active)
            outcome = gated_step(policy, state, history, self.energy_threshold[active], params)
            attempts += active.numel()
            if not bool(outcome.passed.all()):
                if training.max_retrain_steps is not None and retrain_steps >= training.max_retrain_steps:
                    raise RetrainLimitError(
                        f"Part 1 reached training.max_retrain_steps = {training.max_retrain_steps} optimizer steps "
                        f"in one epoch with {int((~outcome.passed).sum())} systems still rejected; raise the cap, "
                        f"lower the learning rate or loosen energy_threshold"
                    )
                stepped = optimizer_step(outcome.loss, optimizer, policy.network.parameters(), training.grad_clip)
                retrain_steps += 1
                skipped_updates += not stepped
                retries[active[~outcome.passed]] += 1
            passed = outcome.passed
            if bool(passed.any()):
                keep = passed & ~history.warming_up()
                warmup_discarded += int((passed & history.warming_up()).sum())
                buffer.add(state.select(keep), history.select(keep))
                accepted_errors.append(outcome.error[passed] / self.energy_threshold[active][passed])
                accepted_fractions.append(outcome.dt[passed] / outcome.seen.free_fall_time[passed])
                rows = active[passed]
                self.history = self.history.replace_rows(rows, history.select(passed).push(outcome.seen.rows[passed]))
                self.state = self.state.replace_rows(rows, outcome.after.select(passed))
                accepted[rows] += 1
            redrawn += self._redraw_finished()
        errors = torch.cat(accepted_errors)
        fractions = torch.cat(accepted_fractions)
        needed = retries[retries > 0]
        return CollectionStats(
            {
                "acceptance_rate": float(accepted.sum()) / attempts,
                "attempts": float(attempts),
                "retrain_steps": float(retrain_steps),
                "skipped_updates": float(skipped_updates),
                "retrain_iterations_mean": float(needed.double().mean()) if needed.numel() else 0.0,
                "retrain_iterations_max": float(retries.max()),
                "error_over_threshold_mean": float(errors.mean()),
                "error_over_threshold_max": float(errors.max()),
                "dt_over_tff_mean": float(fractions.mean()),
                "dt_over_tff_min": float(fractions.min()),
                "dt_over_tff_max": float(fractions.max()),
                "warmup_discarded": float(warmup_discarded),
                "redrawn": float(redrawn),
            }
        )

    def _redraw_finished(self) -> int:
        """Replace systems past their orbit budget, unbound or non-finite; returns how many."""
        finished = (self.state.time >= self.end_time) | (self.state.energy() >= 0) | ~self.state.finite_mask()
        count = int(finished.sum())
        if count:
            rows = finished.nonzero().squeeze(1)
            fresh, period = self.sampler.draw(count)
            self.state = self.state.replace_rows(rows, fresh)
            self.end_time = self.end_time.index_copy(0, rows, self.params.training.orbit_budget * period)
            thresholds = draw_thresholds(self.params, count, self.sampler.generator)
            self.energy_threshold = self.energy_threshold.index_copy(0, rows, thresholds)
            self.history = self.history.reset_where(finished)
        return count

    def state_dict(self) -> dict:
        """Tensors of the systems being followed, for resuming."""
        s, h = self.state, self.history
        return {
            "positions": s.positions,
            "velocities": s.velocities,
            "masses": s.masses,
            "accelerations": s.accelerations,
            "time": s.time,
            "end_time": self.end_time,
            "energy_threshold": self.energy_threshold,
            "history_rows": h.rows,
            "filled": h.filled,
        }

    def load_state_dict(self, saved: dict) -> None:
        self.state = State(
            saved["positions"],
            saved["velocities"],
            saved["masses"],
            saved["accelerations"],
            saved["time"],
            self.state.softening,
        )
        self.end_time = saved["end_time"]
        self.energy_threshold = saved["energy_threshold"]
        self.history = History(saved["history_rows"], saved["filled"])
