"""Movies of simulated systems (aitimestepper.movies): frames uniform in time, the plane of the
orbits, and a real GIF of a 3-body run whose frames move."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aitimestepper.movies import MovieData, frame_indices, write_movie
from aitimestepper.plots import orbital_plane
from aitimestepper.policies import EnergyFeedback
from aitimestepper.rollout import rollout
from aitimestepper.systems import draw


def test_frames_are_uniform_in_time_not_in_steps():
    """Steps crowd into an encounter (rows 1-8 within 0.01): frames still step evenly in time,
    each showing the last row at or before its time."""
    time = np.array([0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.5, 1.0])
    rows = frame_indices(time, 5)
    assert rows.tolist() == [0, 8, 9, 9, 10]  # t = 0, 0.25, 0.5, 0.75, 1
    many = frame_indices(time, 41)  # every 0.025: rows repeat where a step is longer than that
    assert len(many) == 41 and (np.diff(many) >= 0).all() and many.tolist().count(8) == 19
    with pytest.raises(ValueError, match="at least one frame"):
        frame_indices(time, 0)


def test_a_3d_system_is_drawn_in_the_plane_of_its_orbits():
    """A binary on a circular orbit tilted by 30 degrees: the drawing plane is its orbital plane
    (orthonormal, perpendicular to the orbit's axis); 2-D systems are drawn in x-y."""
    tilt = np.deg2rad(30.0)
    normal = np.array([0.0, -np.sin(tilt), np.cos(tilt)])
    first = np.array([1.0, 0.0, 0.0])
    second = np.cross(normal, first)
    angles = np.linspace(0.0, 2.0 * np.pi, 50)[:, None]
    relative = np.cos(angles) * first + np.sin(angles) * second  # (T, 3)
    positions = np.stack([-0.25 * relative, 0.75 * relative], axis=1)  # masses 3 : 1 about the centre
    basis = orbital_plane(positions + np.array([5.0, -2.0, 1.0]), np.array([3.0, 1.0]))
    assert np.allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    assert np.allclose(basis.T @ normal, 0.0, atol=1e-12)
    assert np.allclose(orbital_plane(positions[:, :, :2], np.ones(2)), np.eye(2))


def test_a_movie_of_a_three_body_run_has_its_frames_size_and_motion(tmp_path):
    (group,) = draw("democratic_triple", 1, torch.Generator().manual_seed(3), dim=3, softening=(0.01, 0.01))
    run = rollout(
        group.state,
        EnergyFeedback(2e-4),
        2 * group.time_scale,
        energy_threshold=2e-4,
        gated=True,
        record=True,
        max_steps=20_000,
    )
    data = MovieData.of(run.trajectory, group.state.masses, 0)
    path = tmp_path / "movies" / "triple.gif"
    assert write_movie(data, path, "controller - democratic triple, system 0", frames=24, fps=10) == 24
    assert [p.name for p in path.parent.iterdir()] == ["triple.gif"]  # no temporary file left
    with Image.open(path) as movie:
        assert movie.format == "GIF" and movie.n_frames == 24 and movie.size == (800, 400)
        assert movie.info["duration"] == 100  # ms per frame at 10 frames per second
        frames = []
        for k in range(movie.n_frames):
            movie.seek(k)
            frames.append(np.asarray(movie.convert("RGB"), dtype=np.int16))
    changed = [
        np.abs(later - earlier).sum(axis=2).astype(bool).mean()
        for earlier, later in zip(frames[:-1], frames[1:], strict=True)
    ]
    assert min(changed) > 1e-3  # every frame moves the bodies, the trails and the time marker


def test_bad_movie_settings_are_refused_and_write_nothing(tmp_path):
    data = MovieData(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros((3, 2, 2)), np.ones(2))
    for frames, fps, message in ((0, 10, "frames = 0"), (10_000, 10, "frames = 10000"), (10, 0, "fps = 0")):
        with pytest.raises(ValueError, match=message):
            write_movie(data, tmp_path / "bad.gif", "bad", frames=frames, fps=fps)
    broken = MovieData(np.zeros(2), np.zeros(2), np.zeros(2), np.full((2, 2, 2), np.nan), np.ones(2))
    with pytest.raises(ValueError, match="no finite positions"):
        write_movie(broken, tmp_path / "bad.gif", "bad")
    assert not list(tmp_path.iterdir())


def test_frames_without_a_step_between_them_are_stored_once_for_their_time(tmp_path):
    """Three recorded rows (a step of 0.1 then one of 0.9) in 11 frames 0.1 apart: the file holds
    3 frames, the middle one shown for the 9 frames' time, 1.1 s in all at 10 frames per second."""
    time = np.array([0.0, 0.1, 1.0])
    positions = np.array([[[-1.0, 0.0], [1.0, 0.0]], [[-0.9, 0.3], [0.9, -0.3]], [[0.0, 1.0], [0.0, -1.0]]])
    data = MovieData(time, np.array([0.0, 0.1, 0.9]), np.array([0.0, 1e-5, 2e-5]), positions, np.ones(2))
    path = tmp_path / "steps.gif"
    assert write_movie(data, path, "two steps", frames=11, fps=10) == 3
    with Image.open(path) as movie:
        durations = []
        for k in range(movie.n_frames):
            movie.seek(k)
            durations.append(movie.info["duration"])
    assert durations == [100, 900, 100]
