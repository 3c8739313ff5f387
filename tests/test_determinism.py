"""Same inputs, same bits: a training and a chaotic simulation, each run as ``aits`` in
subprocesses under other thread counts and CPU-feature caps, compared bit for bit.

The caps emulate other CPUs on this one: oneMKL limited to AVX2 (an Intel machine without
AVX-512 takes that path), oneDNN limited to AVX2, torch's own kernels at their default (scalar)
level, oneMKL's Intel-only AVX2 reproducibility path asked for (on an Intel CPU it is taken, on
an AMD one oneMKL falls back to its own choice: either way not the path of the pin). The project
pins torch's and oneMKL's kernels (:data:`aitimestepper.runtime.PORTABLE_NUMERICS`) and runs torch
on one thread, so none of that may change a bit; without the pin the same caps (and two torch
threads) do change the weights (the control below: the caps bite). A real second vendor is
checked by `make repro-check` on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aitimestepper.reproduction import differences
from aitimestepper.systems.families import democratic_triples
from aitimestepper.systems.files import save_systems
from training_params import tiny_params

REPO = Path(__file__).resolve().parents[1]

ONE_THREAD = {"AITS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
CAPPED = {
    "OMP_NUM_THREADS": "2",
    "NUMBA_NUM_THREADS": "2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "AVX2",
}


def aits(*args: str, cwd: Path, environment: dict[str, str]) -> None:
    """Run ``aits`` in a fresh interpreter with ``environment`` on top of a cleaned one."""
    inherited = {
        key: value for key, value in os.environ.items() if key not in {*CAPPED, *ONE_THREAD, "AITS_PORTABLE_NUMERICS"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "aitimestepper", *args],
        cwd=cwd,
        env={**inherited, **environment},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(directory / "model.pt", weights_only=True)["model_state"]


def train_in(tmp_path: Path, name: str, environment: dict[str, str]) -> Path:
    """A tiny training (every family, both dimensions) in a subprocess; its models directory."""
    params = tmp_path / "params.yaml"
    if not params.exists():
        params.write_text(yaml.safe_dump(tiny_params(**{"model.hidden_sizes": [32, 32]}).model_dump(mode="json")))
    directory = tmp_path / name
    metrics = directory / "train.json"
    options = ["--params", str(params), "--models-dir", str(directory), "--metrics", str(metrics), "--no-tracking"]
    aits("train", *options, cwd=tmp_path, environment=environment)
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("determinism")
    return {
        "one_thread": train_in(root, "one_thread", ONE_THREAD),
        "capped": train_in(root, "capped", CAPPED),
        "capped_unpinned": train_in(
            root, "capped_unpinned", {**CAPPED, "AITS_NUM_THREADS": "2", "AITS_PORTABLE_NUMERICS": "false"}
        ),
    }


@pytest.mark.slow
def test_training_gives_the_same_bits_under_other_threads_and_cpu_feature_caps(trained):
    first, second = weights(trained["one_thread"]), weights(trained["capped"])
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    metrics = [json.loads((trained[name] / "train.json").read_text()) for name in ("one_thread", "capped")]
    assert differences(metrics[0], metrics[1]) == []  # wall times aside


@pytest.mark.slow
def test_without_the_pin_the_caps_change_the_weights(trained):
    """The control: the same caps, kernels left to each library's choice, give other weights."""
    first, unpinned = weights(trained["one_thread"]), weights(trained["capped_unpinned"])
    assert any(not torch.equal(first[key], unpinned[key]) for key in first)


@pytest.mark.slow
@pytest.mark.parametrize("systems", [4, 90])
def test_a_chaotic_simulation_gives_the_same_bits_under_other_threads_and_cpu_feature_caps(trained, tmp_path, systems):
    """Unsoftened democratic triples (close encounters amplify any round-off; a bit-for-bit
    comparison needs none) for a quarter crossing time with the tiny training's learned policy
    (about 300 steps): 4 run compiled, 90 (270 network rows) on the torch path."""
    (group,) = democratic_triples(systems, torch.Generator().manual_seed(8), dim=3, softening=(0.0, 0.0))
    ics = tmp_path / "triples.npz"
    save_systems(ics, group.state)
    model = trained["one_thread"] / "model.pt"
    outputs = {}
    for name, environment in (("one_thread", ONE_THREAD), ("capped", CAPPED)):
        out = tmp_path / name
        options = {
            "--params": model.parent.parent / "params.yaml",
            "--model": model,
            "--ics": ics,
            "--time-scales": 0.25,
            "--output": out / "metrics.json",
            "--trajectory": out / "trajectory.npz",
            "--plots-dir": out / "plots",
        }
        aits(
            "simulate", *(str(part) for pair in options.items() for part in pair), cwd=tmp_path, environment=environment
        )
        outputs[name] = out
    runs = [np.load(outputs[name] / "trajectory.npz") for name in ("one_thread", "capped")]
    assert set(runs[0].files) == set(runs[1].files)
    for key in runs[0].files:
        assert np.array_equal(runs[0][key], runs[1][key], equal_nan=True), key
    metrics = [json.loads((outputs[name] / "metrics.json").read_text()) for name in ("one_thread", "capped")]
    assert differences(metrics[0], metrics[1]) == []  # wall times aside
    assert metrics[0]["summary"]["systems"] == systems
