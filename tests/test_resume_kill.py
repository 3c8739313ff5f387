"""Resume after a real ``kill -9`` of ``aits train`` equals an uninterrupted run."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from aitimestepper.checkpoint import CheckpointError, read_checkpoint
from training_params import tiny_params

EPOCHS = 12


def command(params_path, models_dir, *extra):
    return [
        sys.executable,
        "-m",
        "aitimestepper",
        "train",
        "--params",
        str(params_path),
        "--models-dir",
        str(models_dir),
        "--metrics",
        str(models_dir / "train.json"),
        "--no-tracking",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_kill_9_reaches_the_same_weights(tmp_path):
    params = tiny_params(epochs=EPOCHS, **{"training.replay_steps": 40, "training.replay_min_steps": 40})
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(params_path, whole), check=True, capture_output=True, timeout=600)

    process = subprocess.Popen(command(params_path, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epoch_at_kill, deadline = 0, time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(CheckpointError):
            epoch_at_kill = read_checkpoint(killed / "checkpoint.pt")["epoch"]
        if epoch_at_kill >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert process.wait(timeout=60) == -signal.SIGKILL, "training finished before it could be killed"
    assert 2 <= epoch_at_kill < EPOCHS

    subprocess.run(command(params_path, killed, "--resume"), check=True, capture_output=True, timeout=600)
    final_whole = read_checkpoint(whole / "checkpoint.pt")
    final_resumed = read_checkpoint(killed / "checkpoint.pt")
    assert final_resumed["epoch"] == final_whole["epoch"] == EPOCHS
    for key, value in final_whole["model_state"].items():
        assert torch.equal(value, final_resumed["model_state"][key]), key
