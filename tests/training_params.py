"""Tiny, fast training settings for the tests."""

from __future__ import annotations

from pathlib import Path

from aitimestepper.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


#: an evaluation suite small enough for the tests (same families, minutes -> seconds)
SMALL_EVALUATION = {
    "duration_periods": 0.5,
    "three_body_systems": 2,
    "three_body_crossing_times": 1.0,
    "tuning_systems": 4,
    "tuning_periods": 0.5,
    "fixed_dt_periods": 0.01,
}


def tiny_params(**overrides) -> Params:
    """The shipped params shrunk to seconds of training; ``overrides`` use dotted keys."""
    data = load_params(REPO / "params.yaml").model_dump()
    settings = {
        "epochs": 2,
        "training.num_orbits": 16,
        "training.steps_per_epoch": 4,
        "training.replay_batch_size": 64,
        "training.replay_steps": 10,
        "training.replay_min_steps": 5,
        "training.validation_periods": 0.25,
        "model.hidden_sizes": [16, 16],
        **overrides,
    }
    for key, value in settings.items():
        *sections, leaf = key.split(".")
        target = data
        for section in sections:
            target = target[section]
        target[leaf] = value
    return Params.model_validate(data)
