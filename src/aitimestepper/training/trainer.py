"""Epochs of Part 1 + Part 2, validation-based model selection, checkpoints and resume."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numba
import torch

from aitimestepper.checkpoint import model_payload, read_checkpoint, save_checkpoint
from aitimestepper.config import MODEL_SETTINGS, Params
from aitimestepper.features import ROW_WIDTH, history_row, system_context
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy, build_network
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.collection import Collector
from aitimestepper.training.mixture import MixtureSampler, draw_thresholds
from aitimestepper.training.replay import replay
from aitimestepper.training.validation import score, validate, validation_sets

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
#: intra-op threads of a training run (torch's and the compiled validation rollouts'). Its tensors
#: are small, and with one thread every float sum is taken in the same order on every machine: the
#: trained weights do not depend on the core count (measured: 2 threads and 1 thread trained
#: different models from the same params)
TRAINING_THREADS = 1


class EpochLogger(Protocol):
    """Receives each epoch's metrics (e.g. the MLflow tracker)."""

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None: ...


@dataclass
class TrainingResult:
    """What a training run produced.

    Attributes:
        policy: the policy with the final weights.
        history: one dict of metrics per epoch (``part1/*``, ``part2/*``, ``validation/*``, ...).
        best: validation metrics and epoch of the kept model (``models/model.pt``).
        model_path, checkpoint_path: the files written.
        wall_time: seconds spent in this process.
    """

    policy: LearnedPolicy
    history: list[dict[str, float]]
    best: dict[str, float]
    model_path: Path
    checkpoint_path: Path
    wall_time: float
    summary: dict[str, Any] = field(default_factory=dict)


def train(
    params: Params,
    models_dir: Path,
    *,
    resume: bool = False,
    epoch_logger: EpochLogger | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainingResult:
    """Train the learned time-step policy with the two-phase, energy-gated routine.

    Every random draw comes from one generator seeded with ``params.seed`` (and the network's
    initial weights from ``torch.manual_seed(params.seed)``) and the run uses
    ``TRAINING_THREADS`` intra-op threads, so two runs with the same params produce identical
    weights and metrics on any CPU; ``resume`` continues from
    ``models_dir/checkpoint.pt`` and reaches the same final weights as an uninterrupted run.

    Args:
        params: all settings.
        models_dir: where ``model.pt`` (best by validation) and ``checkpoint.pt`` (full training
            state, written every ``training.checkpoint_every`` epochs and at the end) go.
        resume: continue from ``checkpoint.pt`` if it exists.
        epoch_logger: receives each epoch's metrics.
        on_epoch: progress callback ``on_epoch(epoch, metrics)``.
    """
    threads, compiled = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    numba.set_num_threads(TRAINING_THREADS)  # validation rollouts run compiled: one thread too
    try:
        return _train(params, Path(models_dir), resume, epoch_logger, on_epoch)
    finally:
        torch.set_num_threads(threads)
        numba.set_num_threads(compiled)


def _train(
    params: Params,
    models_dir: Path,
    resume: bool,
    epoch_logger: EpochLogger | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> TrainingResult:
    started = time.perf_counter()
    model_path, checkpoint_path = models_dir / MODEL_FILE, models_dir / CHECKPOINT_FILE
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    network = build_network(params)
    policy = LearnedPolicy(network, params)
    sampler = MixtureSampler(params, generator)
    network.set_normalization(*_normalization_inputs(params, policy, sampler))
    optimizer = torch.optim.Adam(network.parameters(), lr=params.training.learning_rate)
    collector = Collector(params, sampler)
    buffer = ReplayBuffer(params.training.replay_capacity)
    checking = validation_sets(params)
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    start_epoch = 0
    if resume and checkpoint_path.exists():
        saved = read_checkpoint(checkpoint_path)
        if _resumable_contract(saved.get("contract", {})) != _resumable_contract(params.model_contract()):
            raise ValueError(
                f"cannot resume from {checkpoint_path}: it was written with other training params "
                f"({', '.join(TRAINING_SETTINGS[1:])}; epochs, simulation, evaluation and tracking may change); "
                f"delete it or restore the params it was trained with"
            )
        network.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer_state"])
        generator.set_state(saved["rng_state"])
        buffer.load_state_dict(saved["buffer"])
        collector.load_state_dict(saved["collector"])
        history, best, start_epoch = list(saved["history"]), dict(saved["best"]), int(saved["epoch"])
        logger.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
    for epoch in range(start_epoch + 1, params.epochs + 1):
        epoch_started = time.perf_counter()
        rate = learning_rate(params, epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate
        network.train()
        part1 = collector.collect(policy, optimizer, buffer).values
        part2 = replay(policy, optimizer, buffer, params, generator)
        network.eval()
        validated = epoch % params.training.validate_every == 0 or epoch == params.epochs
        validation = validate(policy, params, checking) if validated else {}
        metrics = {
            **{f"part1/{k}": v for k, v in part1.items()},
            **{f"part2/{k}": v for k, v in part2.items()},
            **{f"validation/{k}": v for k, v in validation.items()},
            "loss": part2["loss_mean"],
            "buffer_size": float(len(buffer)),
            "learning_rate": rate,
            "epoch_time_s": time.perf_counter() - epoch_started,
        }
        history.append(metrics)
        competes = validated and (epoch > params.training.selection_start * params.epochs or epoch == params.epochs)
        if competes and (not best or score(validation) > score(_unprefixed(best))):
            best = {"epoch": float(epoch), **{f"validation/{k}": v for k, v in validation.items()}}
            save_checkpoint(model_path, model_payload(network, params, epoch, validation))
        if epoch % params.training.checkpoint_every == 0 or epoch == params.epochs:
            save_checkpoint(
                checkpoint_path,
                {
                    **model_payload(network, params, epoch, validation),
                    "optimizer_state": optimizer.state_dict(),
                    "rng_state": generator.get_state(),
                    "buffer": buffer.state_dict(),
                    "collector": collector.state_dict(),
                    "history": history,
                    "best": best,
                },
            )
        if epoch_logger is not None:
            epoch_logger.log_epoch(metrics, epoch)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    wall_time = time.perf_counter() - started
    return TrainingResult(
        policy=policy,
        history=history,
        best=best,
        model_path=model_path,
        checkpoint_path=checkpoint_path,
        wall_time=wall_time,
        summary=_summary(history, best, wall_time),
    )


def learning_rate(params: Params, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based): ``training.learning_rate`` at the first epoch,
    falling on a half cosine to ``training.learning_rate_final`` at the last (constant when that
    is null). A pure function of the epoch, so a resumed run follows the same schedule."""
    first, last = params.training.learning_rate, params.training.learning_rate_final
    if last is None or params.epochs == 1:
        return first
    progress = (epoch - 1) / (params.epochs - 1)
    return last + 0.5 * (first - last) * (1.0 + math.cos(math.pi * progress))


def _normalization_inputs(
    params: Params, policy: LearnedPolicy, sampler: MixtureSampler
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs of freshly drawn training systems after ``history_len + 4`` small steps
    (full windows): (S, F) candidate-pair features and (S', C) contexts with the
    log(threshold / energy_threshold) column of drawn training thresholds."""
    pair_features, contexts = [], []
    for state, _, _ in sampler.lanes().values():
        history = History.empty(state.batch_size, params.features.history_len, ROW_WIDTH)
        for _ in range(params.features.history_len + 4):
            seen = policy.look(state)
            dt = params.model.initial_correction * seen.min_step * params.energy_threshold ** (1.0 / 3.0)
            after, error = step_energy_error(state, dt)
            history = history.push(history_row(seen.rows, dt, error, params.energy_threshold))
            state = after
        seen = policy.look(state)
        thresholds = draw_thresholds(params, state.batch_size, sampler.generator)
        log_ratio = (thresholds / params.energy_threshold).log().unsqueeze(1)
        pair_features.append(seen.pair_features.flatten(0, 1))
        contexts.append(torch.cat([system_context(seen, history, thresholds.log()), log_ratio], dim=1))
    return torch.cat(pair_features), torch.cat(contexts)


#: the settings training reads, besides ``epochs`` (a run may be resumed to train longer)
TRAINING_SETTINGS = tuple(key for key in ("contract_version", *MODEL_SETTINGS) if key != "epochs")


def _resumable_contract(contract: dict[str, Any]) -> dict[str, Any]:
    """The part of a contract a resumed run must share with the checkpoint."""
    return {k: contract.get(k) for k in TRAINING_SETTINGS}


def _unprefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("validation/"): v for k, v in metrics.items()}


def _summary(history: list[dict[str, float]], best: dict[str, float], wall_time: float) -> dict[str, Any]:
    """End-of-run summary: epochs, time, Part 2 convergence rate, final pass rate, mean dt."""
    if not history:
        return {"epochs": 0, "wall_time_s": wall_time}
    last = history[-1]
    return {
        "epochs": len(history),
        "wall_time_s": wall_time,
        "part2_convergence_rate": sum(h["part2/converged"] for h in history) / len(history),
        "final_part2_pass_rate": last["part2/pass_rate"],
        "final_dt_over_energy_free_fall_mean": last["part1/dt_over_energy_free_fall_mean"],
        "kept_epoch": int(best["epoch"]),
        "kept_validation_pass_rate": best["validation/pass_rate"],
        "kept_validation_worst_family_pass_rate": best["validation/worst_family_pass_rate"],
        "kept_validation_steps_per_time_scale": best["validation/steps_per_time_scale"],
    }
