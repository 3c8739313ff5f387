"""PNG figures (they render offline, unlike DVC's vega HTML)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aitimestepper.atomic import write_atomic  # noqa: E402

_TRAINING_PANELS = (
    ("part1/acceptance_rate", "Part 1 acceptance rate"),
    ("part1/retrain_steps", "Part 1 optimizer steps"),
    ("part2/iterations", "Part 2 iterations"),
    ("part2/pass_rate", "Part 2 last-minibatch pass rate"),
    ("validation/worst_family_pass_rate", "validation: worst family's worst system pass rate"),
    ("validation/steps_per_time_scale", "validation steps per time scale (geometric mean)"),
)


def training_curves(history: list[dict[str, float]], path: Path, kept_epoch: int | None = None) -> None:
    """Six panels of per-epoch training metrics, the kept epoch marked; written atomically."""
    epochs = range(1, len(history) + 1)
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for axis, (key, title) in zip(axes.flat, _TRAINING_PANELS, strict=True):
        points = [(epoch, h[key]) for epoch, h in zip(epochs, history, strict=True) if key in h]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", lw=1)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if kept_epoch is not None:
            axis.axvline(kept_epoch, color="tab:green", ls="--", lw=1, label="kept")
    axes.flat[0].legend(loc="best", fontsize=8)
    figure.suptitle("aitimestepper training")
    write_atomic(Path(path), lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    plt.close(figure)


def orbital_plane(positions, masses) -> np.ndarray:
    """(D, 2) an orthonormal basis of the plane to draw bodies in: x-y in 2-D; in 3-D the plane in
    which their paths about the centre of mass spread most (the two principal axes of the
    mass-weighted positions over the run: a binary's orbital plane, a hierarchical system's outer
    one).

    Args:
        positions: (T, N, D) positions over a run (finite); masses: (N,).
    """
    positions = np.asarray(positions, dtype=np.float64)
    dim = positions.shape[-1]
    if dim == 2:
        return np.eye(2)
    weights = np.asarray(masses, dtype=np.float64) / np.sum(masses)
    centre = np.einsum("n,tnd->td", weights, positions)[:, None]
    relative = (positions - centre) * np.sqrt(weights)[None, :, None]
    spread = np.einsum("tnd,tne->de", relative, relative)
    _, vectors = np.linalg.eigh(spread)  # ascending eigenvalues
    first, second = vectors[:, 2], vectors[:, 1]
    return np.stack([first, second], axis=1)


def body_colours(count: int) -> np.ndarray:
    """(count, 4) one RGBA colour per body (tab10, repeating)."""
    return matplotlib.colormaps["tab10"](np.arange(count) % 10)


def draw_paths(axis, plane, colours, alpha: float = 1.0, dim: int = 2) -> None:
    """Each body's path (``plane``: (T, N, 2) finite projected positions) in its colour, a hollow
    circle where it starts and a cross where it ends; equal axes in length units."""
    for body in range(plane.shape[1]):
        path = plane[:, body]
        axis.plot(path[:, 0], path[:, 1], color=colours[body], lw=0.6, alpha=alpha)
        axis.plot(*path[0], marker="o", color=colours[body], ms=5, mfc="none", ls="")
        axis.plot(*path[-1], marker="x", color=colours[body], ms=6, ls="")
    axis.set_aspect("equal", adjustable="datalim")
    primed = "'" if dim == 3 else ""
    where = " (plane of the orbits)" if dim == 3 else ""
    axis.set_xlabel(f"x{primed} (length units){where}", fontsize=8)
    axis.set_ylabel(f"y{primed} (length units)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)


def simulation_plots(trajectory, masses, labels: list[dict], directory: Path, title: str, max_systems: int = 6) -> None:
    """``orbits.png`` (every body's path in the plane of the orbits, start o and end x),
    ``energy_error.png`` and ``dt.png`` (against time) of the first ``max_systems`` systems.

    Args:
        trajectory: a rollout's :class:`aitimestepper.rollout.Trajectory`.
        masses: (B, N) the systems' masses; labels: B dicts (``family`` names each panel).
        title: what the run is (policy, systems), drawn above every figure.
    """
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
        positions = positions[np.isfinite(positions).all(axis=(1, 2))]
        if positions.shape[0] == 0:
            axis.set_title(f"{system_name(labels[k], k)}: no finite positions", fontsize=9)
            continue
        plane = positions @ orbital_plane(positions, masses[k].numpy())
        draw_paths(axis, plane, body_colours(plane.shape[1]), dim=positions.shape[2])
        axis.set_title(system_name(labels[k], k), fontsize=9)
    figure.suptitle(textwrap.fill(f"orbits: {title}", 40 * columns), fontsize=10)
    _save(figure, directory / "orbits.png")
    for key, label, name in (
        ("energy_error", "|E - E0| / |E0|", "energy_error.png"),
        ("dt", "dt (time units)", "dt.png"),
    ):
        figure, axis = plt.subplots(figsize=(8, 5), constrained_layout=True)
        values = getattr(trajectory, key)
        for k in range(count):
            mask = values[:, k] > 0
            axis.plot(
                trajectory.time[mask, k].numpy(), values[mask, k].numpy(), lw=0.7, label=system_name(labels[k], k)
            )
        axis.set_yscale("log")
        axis.set_xlabel("time (time units)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        # below the axes: inside them a legend hides the curves
        figure.legend(loc="outside lower center", fontsize=7, ncol=3, frameon=False)
        axis.set_title(textwrap.fill(f"{label} against time: {title}", 90), fontsize=10)
        _save(figure, directory / name)


def system_name(label: dict, index: int) -> str:
    """'system k (family)' for a panel or a legend."""
    family = label.get("family")
    return f"system {index} ({family})" if family else f"system {index}"


def _save(figure, path: Path) -> None:
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    plt.close(figure)


_POLICY_COLOURS = {
    "learned": "tab:red",
    "learned_gated": "tab:pink",
    "oracle": "black",
    "energy_feedback": "tab:blue",
    "energy_free_fall": "tab:green",
    "prs23": "tab:purple",
    "free_fall": "tab:orange",
    "fixed": "tab:gray",
}


_POLICY_LABELS = {
    "learned": "learned policy",
    "learned_gated": "learned policy, gated",
    "oracle": "greedy oracle",
    "energy_feedback": "energy-feedback controller (gated)",
    "energy_free_fall": "energy-normalised free-fall",
    "prs23": "PRS23",
    "free_fall": "free-fall",
    "fixed": "fixed dt",
}
#: cost axis of the cost-versus-accuracy panels, in units of the oracle's steps; costlier points
#: are listed in the panel's corner with their value
_COST_RANGE = (0.9, 4.0)


def policy_title(policy: str, gated: bool, energy_threshold: float) -> str:
    """A run's policy in words: 'learned policy, ungated, threshold 0.0002'."""
    name = _POLICY_LABELS.get(policy, policy).removesuffix(" (gated)")
    return f"{name}, {'gated' if gated else 'ungated'}, threshold {energy_threshold:g}"


def cost_vs_accuracy(report: dict, path: Path) -> None:
    """One panel per family: every policy's median cost relative to the oracle along its own paths
    (x, ``median_ratio_to_oracle_same_path``) against its worst single-step error over the
    threshold (y), one marker shape per threshold; the gate (y = 1) dashed. A shared legend names
    the policies."""
    levels = list(report["thresholds"])
    names = list(report["thresholds"][levels[0]]["families"])
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    markers = ("o", "s", "^", "D")
    for axis, name in zip(axes.flat, names, strict=False):
        beyond = []
        for level, marker in zip(levels, markers, strict=False):
            data = report["thresholds"][level]["families"].get(name)
            if data is None:
                continue
            for policy, values in data["summary"].items():
                cost = values["median_ratio_to_oracle_same_path"]
                error = min(max(values["max_step_error_over_threshold"], 0.05), 50.0)
                if cost > _COST_RANGE[1]:  # listed in the panel's corner instead of piled on its edge
                    beyond.append(f"{_POLICY_LABELS.get(policy, policy)} at {level}: {cost:.3g}x")
                    continue
                colour = _POLICY_COLOURS.get(policy)
                # the gated learned policy often lands on the ungated one: a larger ring around it
                hollow = policy == "learned_gated"
                axis.scatter(
                    [cost],
                    [error],
                    s=110 if hollow else 40,
                    marker=marker,
                    facecolors="none" if hollow else colour,
                    edgecolors=colour,
                    linewidths=1.5 if hollow else 0.5,
                    zorder=3,
                )
        if beyond:
            axis.text(
                0.98,
                0.03,
                "beyond 4x:\n" + "\n".join(beyond),
                transform=axis.transAxes,
                ha="right",
                va="bottom",
                fontsize=6.5,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
            )
        axis.axhline(1.0, color="black", lw=0.8, ls="--")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlim(*_COST_RANGE)
        axis.set_ylim(0.04, 60.0)
        axis.set_xticks([1.0, 1.25, 1.5, 2.0, 3.0, 4.0], labels=["1", "1.25", "1.5", "2", "3", "4"], minor=False)
        axis.set_xticks([], minor=True)
        best = report["thresholds"][levels[0]]["families"][name]["best_classical"]
        axis.set_title(f"{name} (best classical: {_POLICY_LABELS.get(best, best)})", fontsize=9)
        axis.set_xlabel("force evaluations / oracle's steps along the same path (median)", fontsize=8)
        axis.set_ylabel("largest single-step error / threshold", fontsize=8)
        axis.grid(alpha=0.3, which="both")
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    handles = [
        plt.Line2D(
            [],
            [],
            color=colour,
            marker="o",
            ls="",
            label=_POLICY_LABELS[policy],
            mfc="none" if policy == "learned_gated" else colour,
            ms=9 if policy == "learned_gated" else 6,
        )
        for policy, colour in _POLICY_COLOURS.items()
    ]
    handles += [
        plt.Line2D([], [], color="gray", marker=marker, ls="", label=f"threshold {level}")
        for level, marker in zip(levels, markers, strict=False)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    figure.suptitle("cost vs accuracy per family: lower left is better; above the dashed line a step failed the gate")
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    _save(figure, Path(path))


def dt_along_runs(curves: dict[str, dict[str, tuple]], path: Path) -> None:
    """One panel per family: dt against time (in time scales) of one system, one line per policy;
    one legend for all panels, below them (a legend inside a panel hides the curves)."""
    names = list(curves)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows + 0.6), squeeze=False)
    shown: dict[str, object] = {}
    for axis, name in zip(axes.flat, names, strict=False):
        for policy, (time, dt) in curves[name].items():
            label = _POLICY_LABELS.get(policy, policy)
            (line,) = axis.plot(time.numpy(), dt.numpy(), lw=0.8, label=label, color=_POLICY_COLOURS.get(policy))
            shown.setdefault(label, line)
        axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("time (time scales)", fontsize=8)
        axis.set_ylabel("dt / time scale", fontsize=8)
        axis.grid(alpha=0.3, which="both")
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    figure.legend(list(shown.values()), list(shown), loc="lower center", ncol=len(shown), fontsize=8, frameon=False)
    figure.suptitle("dt along one held-out run per family (the learned policy, the oracle, the best classical policy)")
    figure.tight_layout(rect=(0, 0.04, 1, 0.97))
    _save(figure, Path(path))


_RATE_STYLES = (
    ("learned_steps_per_s", "learned", "tab:red", "o"),
    ("controller_steps_per_s", "controller (gated)", "tab:blue", "s"),
    ("free_fall_steps_per_s", "free-fall", "tab:green", "^"),
    ("fixed_steps_per_s", "fixed dt", "tab:gray", "v"),
    ("rebound_leapfrog_steps_per_s", "REBOUND leapfrog (C)", "black", "D"),
    ("rebound_ias15_steps_per_s", "REBOUND IAS15 (C)", "tab:purple", "P"),
)


def benchmark_rates(report: dict, path: Path) -> None:
    """Two panels of ``aits bench``: steps per second of one system against N for every policy
    and REBOUND, and system-steps per second of batches against B (learned and fixed dt)."""
    figure, (single, batched) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    rows = report["single_system"]
    bodies = [row["bodies"] for row in rows]
    for key, label, colour, marker in _RATE_STYLES:
        single.plot(bodies, [row[key] for row in rows], marker=marker, color=colour, label=label)
    single.set(xscale="log", yscale="log", xlabel="bodies N", ylabel="steps per second (one system)")
    single.set_xticks(bodies, [str(n) for n in bodies])
    single.set_xticks([], minor=True)
    single.set_title("one system")
    single.legend(fontsize=8)
    counts = sorted({row["bodies"] for row in report["batch_throughput"]})
    for count, colour in zip(counts, ("tab:blue", "tab:orange", "tab:green", "tab:brown"), strict=False):
        chosen = [row for row in report["batch_throughput"] if row["bodies"] == count]
        sizes = [row["batch"] for row in chosen]
        learned = [row["learned_system_steps_per_s"] for row in chosen]
        fixed = [row["fixed_system_steps_per_s"] for row in chosen]
        batched.plot(sizes, learned, marker="o", color=colour, label=f"learned, N={count}")
        batched.plot(sizes, fixed, marker="v", ls="--", color=colour, label=f"fixed dt, N={count}")
    batched.set(xscale="log", yscale="log", xlabel="systems B", ylabel="system-steps per second")
    batched.set_title("batches")
    batched.legend(fontsize=8, ncols=2)
    _save(figure, path)
