"""Animations of simulated systems: the bodies with their trails in the plane of the orbit, and
the energy error and the step against time, rendered offline to an animated GIF.

Frames are uniform in time (not in steps: an adaptive step crowds its steps into close encounters),
at most ``frames`` of them; frame k shows the last recorded state at or before t_k = t_end k /
(frames - 1). In 3-D the bodies are drawn in the plane their paths about the centre of mass
spread in most (:func:`aitimestepper.plots.orbital_plane`: a binary's orbital plane, a
hierarchical system's outer one); in 2-D in the x-y plane itself. Each frame is drawn with
matplotlib's Agg canvas and the GIF is written with Pillow, atomically.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from PIL import Image

from aitimestepper.atomic import write_atomic
from aitimestepper.config import MAX_MOVIE_FRAMES
from aitimestepper.plots import body_colours, draw_paths, orbital_plane

#: the share of the run's time a body's trail covers
TRAIL_FRACTION = 0.15


@dataclass(frozen=True)
class MovieData:
    """One system's recorded run, as plain arrays.

    Attributes:
        time: (T,) float64 time after each recorded step (time units), non-decreasing.
        dt: (T,) float64 the step that led there (0 at the start and after the end).
        energy_error: (T,) float64 |E - E0| / |E0| there.
        positions: (T, N, D) float64 positions (length units).
        masses: (N,) float64 masses (they set the projection's centre and the markers' sizes).
    """

    time: np.ndarray
    dt: np.ndarray
    energy_error: np.ndarray
    positions: np.ndarray
    masses: np.ndarray

    @classmethod
    def of(cls, trajectory, masses, system: int) -> MovieData:
        """System ``system`` of a rollout's :class:`aitimestepper.rollout.Trajectory` ((T, B) and
        (T, B, N, D) tensors) with its (B, N) ``masses``."""
        return cls(
            trajectory.time[:, system].numpy(),
            trajectory.dt[:, system].numpy(),
            trajectory.energy_error[:, system].numpy(),
            trajectory.positions[:, system].numpy(),
            masses[system].numpy(),
        )


def frame_indices(time: np.ndarray, frames: int) -> np.ndarray:
    """(frames,) int64 the rows shown by ``frames`` frames uniform in time, each the last row at or
    before its frame's time (a row shows in several frames where the steps are longer than the
    frames' spacing)."""
    if frames < 1 or time.shape[0] < 1:
        raise ValueError(f"a movie needs at least one frame and one recorded row, got frames = {frames}")
    targets = np.linspace(time[0], time[-1], int(frames))
    return np.clip(np.searchsorted(time, targets, side="right") - 1, 0, time.shape[0] - 1)


def write_movie(data: MovieData, path: Path, title: str, frames: int = 120, fps: int = 15) -> int:
    """Render ``data`` to an animated GIF at ``path`` (atomically); returns the frames the file
    holds (identical successive frames, where no step was taken between them, are stored once and
    shown for as long as they all would be).

    Args:
        title: what the movie shows (policy, family, system), drawn above it.
        frames: the most frames, 1 to ``MAX_MOVIE_FRAMES``, uniform in time.
        fps: frames per second of playback, 1 to 50.

    Raises:
        ValueError: frames or fps out of range, or a run with non-finite positions throughout.
    """
    if not 1 <= frames <= MAX_MOVIE_FRAMES:
        raise ValueError(f"frames = {frames} is invalid: needs 1 to {MAX_MOVIE_FRAMES}")
    if not 1 <= fps <= 50:
        raise ValueError(f"fps = {fps} is invalid: needs 1 to 50")
    shown = frame_indices(data.time, frames)
    finite = np.isfinite(data.positions).all(axis=(1, 2))
    if not finite.any():
        raise ValueError("the run has no finite positions to draw")
    plane = data.positions @ orbital_plane(data.positions[finite], data.masses)  # (T, N, 2)
    images = _render(data, plane, finite, shown, title)
    duration = int(round(1000 / fps))
    write_atomic(
        Path(path),
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        ),
    )
    # the GIF writer merges identical successive frames into one shown for their summed durations
    return 1 + sum(earlier.tobytes() != later.tobytes() for earlier, later in zip(images[:-1], images[1:], strict=True))


def _render(data: MovieData, plane: np.ndarray, finite: np.ndarray, shown: np.ndarray, title: str) -> list:
    """One Pillow image per shown row: the orbit panel (left), error and dt against time (right).

    What every frame shares is drawn once; each frame restores that picture and draws only what
    moves over it (the trails, the bodies, the time markers and the clock), 4x faster than
    drawing the whole figure per frame (measured)."""
    figure = Figure(figsize=(10, 5), dpi=80)
    canvas = FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 2, width_ratios=(1.1, 1.0))
    orbit = figure.add_subplot(grid[:, 0])
    error_axis = figure.add_subplot(grid[0, 1])
    dt_axis = figure.add_subplot(grid[1, 1], sharex=error_axis)
    colours = body_colours(plane.shape[1])
    sizes = 20 + 60 * (data.masses / data.masses.max()) ** (1 / 3)
    _static_panels(data, plane, finite, orbit, error_axis, dt_axis, colours)
    figure.suptitle(textwrap.fill(title, 110), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    for axis in (orbit, error_axis, dt_axis):
        axis.set_autoscale_on(False)  # what moves must not move the axes the background was drawn with
    trails = [orbit.plot([], [], color=colours[body], lw=1.2, animated=True)[0] for body in range(plane.shape[1])]
    bodies = orbit.scatter(plane[0, :, 0], plane[0, :, 1], s=sizes, c=colours, zorder=4, animated=True)
    markers = [axis.axvline(data.time[0], color="black", lw=0.8, animated=True) for axis in (error_axis, dt_axis)]
    clock = orbit.text(0.5, 1.01, "", transform=orbit.transAxes, ha="center", va="bottom", fontsize=9, animated=True)
    canvas.draw()
    background = canvas.copy_from_bbox(figure.bbox)
    span = TRAIL_FRACTION * (data.time[-1] - data.time[0])
    images = []
    for row in shown:
        canvas.restore_region(background)
        start = min(int(np.searchsorted(data.time, data.time[row] - span)), row)
        for body, trail in enumerate(trails):
            trail.set_data(plane[start : row + 1, body, 0], plane[start : row + 1, body, 1])
            orbit.draw_artist(trail)
        bodies.set_offsets(plane[row])
        orbit.draw_artist(bodies)
        moment = data.time[row]
        for marker in markers:
            marker.set_xdata([moment, moment])
            marker.axes.draw_artist(marker)
        clock.set_text(f"t = {moment:.4g} time units")
        orbit.draw_artist(clock)
        pixels = np.asarray(canvas.buffer_rgba())[..., :3]
        images.append(Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=128))
    return images


def _static_panels(data, plane, finite, orbit, error_axis, dt_axis, colours) -> None:
    """What every frame shares: the whole paths faintly, start (o) and end (x) markers, the axes'
    limits and labels, the error and dt curves."""
    draw_paths(orbit, plane[finite], colours, alpha=0.25, dim=data.positions.shape[2])
    moving = data.dt > 0
    error_axis.plot(data.time[moving], np.maximum(data.energy_error[moving], 1e-18), lw=0.8, color="tab:red")
    error_axis.set_yscale("log")
    error_axis.set_ylabel("|E - E0| / |E0|", fontsize=8)
    error_axis.grid(alpha=0.3)
    dt_axis.plot(data.time[moving], data.dt[moving], lw=0.8, color="tab:blue")
    dt_axis.set_yscale("log")
    dt_axis.yaxis.set_minor_formatter(NullFormatter())  # a narrow range would label every minor tick
    dt_axis.set_ylabel("dt (time units)", fontsize=8)
    dt_axis.set_xlabel("time (time units)", fontsize=8)
    dt_axis.grid(alpha=0.3)
