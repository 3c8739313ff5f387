"""PNG figures (they render offline, unlike DVC's vega HTML)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aitimestepper.atomic import write_atomic  # noqa: E402

_TRAINING_PANELS = (
    ("part1/acceptance_rate", "Part 1 acceptance rate"),
    ("part1/retrain_steps", "Part 1 optimizer steps"),
    ("part2/iterations", "Part 2 iterations"),
    ("part2/pass_rate", "Part 2 last-minibatch pass rate"),
    ("validation/pass_rate", "validation pass rate"),
    ("validation/steps_per_orbit", "validation steps per orbit"),
)


def training_curves(history: list[dict[str, float]], path: Path, kept_epoch: int | None = None) -> None:
    """Six panels of per-epoch training metrics, the kept epoch marked; written atomically."""
    epochs = range(1, len(history) + 1)
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for axis, (key, title) in zip(axes.flat, _TRAINING_PANELS, strict=True):
        axis.plot(epochs, [h.get(key, float("nan")) for h in history], marker=".", lw=1)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if kept_epoch is not None:
            axis.axvline(kept_epoch, color="tab:green", ls="--", lw=1, label="kept")
    axes.flat[0].legend(loc="best", fontsize=8)
    figure.suptitle("aitimestepper training")
    write_atomic(Path(path), lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    plt.close(figure)


def simulation_plots(trajectory, directory: Path, title: str, max_systems: int = 6) -> None:
    """``orbits.png`` (x-y paths of every body), ``energy_error.png`` and ``dt.png`` (vs time)."""
    directory = Path(directory)
    count = min(trajectory.time.shape[1], max_systems)
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False, constrained_layout=True)
    for k, axis in enumerate(axes.flat):
        if k >= count:
            axis.set_visible(False)
            continue
        positions = trajectory.positions[:, k].numpy()
        for body in range(positions.shape[1]):
            axis.plot(positions[:, body, 0], positions[:, body, 1], lw=0.6)
        axis.set_aspect("equal", adjustable="datalim")
        axis.set_title(f"system {k}", fontsize=9)
    figure.suptitle(f"orbits: {title}")
    _save(figure, directory / "orbits.png")
    for key, label, name in (
        ("energy_error", "|E - E0| / |E0|", "energy_error.png"),
        ("dt", "dt (time units)", "dt.png"),
    ):
        figure, axis = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
        values = getattr(trajectory, key)
        for k in range(count):
            mask = values[:, k] > 0
            axis.plot(trajectory.time[mask, k].numpy(), values[mask, k].numpy(), lw=0.7, label=f"system {k}")
        axis.set_yscale("log")
        axis.set_xlabel("time")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=3)
        axis.set_title(f"{label}: {title}", fontsize=10)
        _save(figure, directory / name)


def _save(figure, path: Path) -> None:
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    plt.close(figure)


def cost_vs_error(summary: dict, path: Path, energy_threshold: float) -> None:
    """One point per policy: mean force evaluations per orbit vs max |E - E0| / |E0|."""
    figure, axis = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for name, values in summary.items():
        x, y = values["mean_force_evaluations_per_orbit"], values["max_energy_error"]
        axis.scatter([x], [y], s=50)
        axis.annotate(
            f"{name} (pass {values['gate_pass_rate']:.4f})",
            (x, y),
            fontsize=8,
            xytext=(5, 5),
            textcoords="offset points",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("force evaluations per orbit (mean over the suite)")
    axis.set_ylabel("max |E - E0| / |E0| over the run")
    axis.set_title(f"cost vs accuracy, held-out binaries, threshold {energy_threshold:g}")
    axis.grid(alpha=0.3, which="both")
    _save(figure, Path(path))


def dt_vs_phase(curves: dict, path: Path) -> None:
    """dt against mean anomaly over one orbit, one line per policy."""
    figure, axis = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for name, (phase, dt) in curves.items():
        order = phase.argsort()
        axis.plot(phase[order].numpy(), dt[order].numpy(), marker=".", ms=2, lw=0.8, label=name)
    axis.set_yscale("log")
    axis.set_xlabel("mean anomaly at the start of the step (rad; 0 = pericenter)")
    axis.set_ylabel("dt (time units)")
    axis.set_title("dt vs orbital phase, e = 0.9 binary, a = 1, M = 1")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    _save(figure, Path(path))
