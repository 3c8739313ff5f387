"""A committed copy of the repository with tiny params, for tests that run the real DVC pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from training_params import REPO, SMALL_EVALUATION, tiny_params


def pipeline_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without MLflow and DVC settings, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def run(command: list[str], cwd: Path, env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run ``command``; fail the test with its output if it exits non-zero."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


def commit(directory: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], directory, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], directory, env)


def tiny_pipeline_copy(destination: Path, env: dict) -> tuple[Path, dict]:
    """Copy the repository's git-tracked files to ``destination``, write tiny params (2 epochs, 2
    short simulations, the small evaluation suite) and commit it as a new git repository.

    Returns:
        The copy's root and its params as a dict.
    """
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    params = tiny_params(epochs=2).model_dump(mode="json")
    params["simulation"]["systems"].update(systems=2, duration=0.5)
    params["evaluation"].update(SMALL_EVALUATION, extra_thresholds=[])
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], destination, env)
    commit(destination, env, "copy")
    return destination, params
