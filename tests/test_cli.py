"""The ``aits`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from invalid_systems import KINDS

REPO = Path(__file__).resolve().parents[1]


def aits(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aitimestepper", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def small_params(tmp_path: Path, **simulation) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    systems = {"family": "binary", "dims": [2], "eccentricity": [0.5, 0.9], "systems": 3, "duration": 1.0}
    data["simulation"].update({"systems": systems, "movie": {"systems": 0, "frames": 30, "fps": 10}, **simulation})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_params_command_prints_the_contract(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path)
    done = aits("params", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["energy_threshold"] == 2e-4


def test_simulate_writes_metrics(tmp_path):
    small_params(tmp_path)
    done = aits(
        "simulate",
        "--model",
        "free_fall",
        "--output",
        "out/sim.json",
        "--trajectory",
        "out/t.npz",
        "--plots-dir",
        "out/plots",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out/sim.json").read_text())
    assert metrics["policy"] == "free_fall"
    assert metrics["summary"]["all_reached_end"]
    assert all(0.5 <= s["e"] <= 0.9 and s["family"] == "binary" for s in metrics["systems"])
    assert [s["time_scales_simulated"] for s in metrics["systems"]] == [1.0, 1.0, 1.0]
    with np.load(tmp_path / "out/t.npz") as trajectory:
        assert trajectory["positions"].shape[1:] == (3, 2, 2)
        assert (np.diff(trajectory["time"], axis=0) >= 0).all()
    assert {p.name for p in (tmp_path / "out/plots").iterdir()} == {"orbits.png", "energy_error.png", "dt.png"}


def test_simulate_puts_the_drawn_systems_in_the_field_of_physics_external(tmp_path):
    """``physics.external`` in params.yaml: every simulated system feels the host (the gated
    quantity is then the Jacobi integral); the metrics say which field."""
    path = small_params(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["physics"] = {"external": {"host_mass": 50.0, "host_position": [6.0, 0.0], "orbit": "circular"}}
    path.write_text(yaml.safe_dump(data))
    done = aits("simulate", "--model", "energy_feedback", "--gated", "--output", "out/sim.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out/sim.json").read_text())
    assert metrics["tidal_field"] == "circular" and metrics["summary"]["all_reached_end"]
    assert metrics["summary"]["max_step_energy_error"] <= 2e-4 * (1 + 1e-9)
    assert metrics["summary"]["max_momentum_drift"] > 1e-4  # the host pulls on the binaries
    data["physics"] = {"external": None}
    path.write_text(yaml.safe_dump(data))
    done = aits("simulate", "--model", "energy_feedback", "--gated", "--output", "bare/sim.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "bare/sim.json").read_text())["summary"]["max_momentum_drift"] < 1e-12


def test_simulate_writes_movies_titled_by_what_they_show(tmp_path):
    """``--movie 2``: a GIF of each of the first two systems (simulation.movie's frames), none of
    the third; ``--movie 0`` none; the plots' titles name the policy and the systems, not the
    policy's source."""
    from PIL import Image

    small_params(tmp_path)
    done = aits("simulate", "--model", "free_fall", "--output", "out/sim.json", "--movie", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    movies = sorted((tmp_path / "plots/simulate/movies").iterdir())
    assert [path.name for path in movies] == ["system0.gif", "system1.gif"]
    for path in movies:
        with Image.open(path) as movie:
            assert movie.n_frames == 30 and movie.size == (800, 400)
    done = aits("simulate", "--model", "free_fall", "--output", "none/sim.json", "--plots-dir", "none", cwd=tmp_path)
    assert done.returncode == 0 and not (tmp_path / "none/movies").exists()  # the params' 0
    refused = aits("simulate", "--model", "free_fall", "--movie", "99", cwd=tmp_path)
    assert refused.returncode == 2 and "--movie" in refused.stderr


def test_bad_params_exit_2_name_the_key_and_write_nothing(tmp_path):
    path = small_params(tmp_path)
    path.write_text(path.read_text().replace("energy_threshold: 0.0002", "energy_threshold: -1"))
    done = aits("simulate", "--output", "out/sim.json", cwd=tmp_path)
    assert done.returncode == 2
    assert "energy_threshold = -1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_learned_policy_without_a_checkpoint_exits_2(tmp_path):
    small_params(tmp_path)
    done = aits("simulate", "--model", "models/none.pt", "--output", "out/sim.json", cwd=tmp_path)
    assert done.returncode == 2
    assert "models/none.pt does not exist" in done.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_the_commands(tmp_path):
    done = aits("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert all(command in done.stdout for command in ("simulate", "params", "train"))


def test_simulate_reads_an_initial_conditions_file_with_any_classical_policy(tmp_path):
    small_params(tmp_path)
    ics = {
        "masses": [1.0, 1.0, 1.0],
        "positions": [[0.97000436, -0.24308753], [-0.97000436, 0.24308753], [0.0, 0.0]],
        "velocities": [[0.466203685, 0.43236573], [0.466203685, 0.43236573], [-0.93240737, -0.86473146]],
    }
    (tmp_path / "eight.json").write_text(json.dumps(ics))
    for policy in ("energy_free_fall", "prs23", "energy_feedback"):
        done = aits(
            "simulate", "--model", policy, "--eta", "0.05", "--ics", "eight.json", "--duration", "6.3259",
            "--gated", "--output", f"out/{policy}.json", "--trajectory", f"out/{policy}.npz",
            "--plots-dir", f"out/{policy}", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        metrics = json.loads((tmp_path / f"out/{policy}.json").read_text())
        assert metrics["summary"]["gate_pass_rate"] == 1.0 and metrics["summary"]["all_reached_end"]
        assert metrics["systems"][0]["num_bodies"] == 3


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kind_of_invalid_system_exits_2_names_it_and_writes_nothing(tmp_path, kind):
    small_params(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps(kind.system))
    done = aits(
        "simulate", "--model", "free_fall", "--ics", "bad.json", "--output", "out/sim.json",
        "--trajectory", "out/trajectory.npz", "--plots-dir", "out/plots", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert kind.loader in done.stderr and "bad.json" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_energy_threshold_outside_zero_one_exits_2_and_writes_nothing(tmp_path):
    small_params(tmp_path)
    done = aits(
        "simulate", "--model", "free_fall", "--energy-threshold", "1.5", "--output", "out/sim.json", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "--energy-threshold must be in (0, 1), got 1.5" in done.stderr
    assert not (tmp_path / "out").exists()


def test_torch_threads_that_would_change_the_bits_are_refused(tmp_path):
    """With portable numerics torch runs on one thread (oneMKL's vendor-neutral path is
    reproducible at a fixed thread count only): other counts are refused, naming both settings."""
    shutil.copy(REPO / "params.yaml", tmp_path)
    environment = {**os.environ, "AITS_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "aitimestepper", "params"], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "AITS_NUM_THREADS=2 needs AITS_PORTABLE_NUMERICS=false" in done.stderr
    environment["AITS_PORTABLE_NUMERICS"] = "false"
    done = subprocess.run(
        [sys.executable, "-m", "aitimestepper", "params"], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
