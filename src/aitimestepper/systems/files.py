"""Systems read from and written to JSON or NPZ files.

File format (JSON object or NPZ archive), keys:
    ``masses``: (B, N) or (N,) positive masses;
    ``positions``, ``velocities``: (B, N, D) or (N, D), D in {2, 3};
    ``softening`` (optional): the Plummer softening length, one number for every system or a
    list of B numbers (one per system); default 0;
    ``external`` (optional): the tidal field of a point-mass host (:mod:`aitimestepper.physics.external`),
    an object with ``host_mass`` (one number, or B), ``host_position`` ((D,) or (B, D), at time 0,
    relative to the origin of the systems' coordinates), ``orbit`` (``static``, the default, or
    ``circular``) and ``softening`` (the host's, default 0); in NPZ archives the keys
    ``external.host_mass``, ``external.host_position``, ``external.orbit``, ``external.softening``.
A single system may omit the batch axis. No other keys are allowed (a misspelt ``softening``
would otherwise be silently ignored). Loaded systems are used as given: they are not moved to
the centre-of-mass frame. Example JSON:
``{"masses": [1.0, 1.0], "positions": [[-0.5, 0], [0.5, 0]], "velocities": [[0, -0.5], [0, 0.5]]}``
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aitimestepper.physics.external import TidalField
from aitimestepper.physics.state import DTYPE, State

REQUIRED_KEYS = ("masses", "positions", "velocities")
OPTIONAL_KEYS = ("softening", "external")
FIELD_KEYS = ("host_mass", "host_position", "orbit", "softening")
SUFFIXES = (".json", ".npz")


def load_systems(path: str | Path, softening: float | Sequence[float] | Tensor | None = None) -> State:
    """Load systems from a JSON or NPZ file (format in the module docstring).

    Args:
        path: the file, ending in ``.json`` or ``.npz``.
        softening: overrides the file's softening when given: one length >= 0 or B of them.

    Returns:
        A validated float64 state (B, N, D) at time 0, accelerations computed.

    Raises:
        ValueError: naming the file and the rule: the file is missing, has another suffix, is
            not valid JSON or NPZ, lacks a key or has an unknown one, holds ragged or
            non-numeric arrays, non-finite numbers, non-positive masses, a bad softening, or two
            bodies at the same place without softening.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"initial-conditions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"initial-conditions file {path} must end in .json or .npz, not {path.suffix!r}")
    content = _read_npz(path) if suffix == ".npz" else _read_json(path)
    content = _nested_field(content)
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise ValueError(f"initial-conditions file {path} lacks {missing}")
    unknown = sorted(set(content) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(
            f"initial-conditions file {path} has unknown keys {unknown}; allowed: {[*REQUIRED_KEYS, *OPTIONAL_KEYS]}"
        )
    positions, velocities, masses = (_numbers(path, key, content[key]) for key in ("positions", "velocities", "masses"))
    if softening is None:
        file_softening = _numbers(path, "softening", content.get("softening", 0.0))
        if file_softening.ndim > 1:
            raise ValueError(
                f"initial-conditions file {path}: softening must be one number or a list of one per system, "
                f"got shape {tuple(file_softening.shape)}"
            )
        chosen: float | Tensor = float(file_softening) if file_softening.ndim == 0 else file_softening
    else:
        chosen = torch.as_tensor(softening, dtype=DTYPE)
    try:
        external = _field(path, content["external"]) if "external" in content else None
        return State.from_arrays(positions, velocities, masses, chosen, external=external)
    except ValueError as error:
        raise ValueError(f"initial-conditions file {path}: {error}") from error


def save_systems(path: str | Path, state: State) -> Path:
    """Write the positions, velocities, masses and softening of ``state`` to JSON or NPZ.

    :func:`load_systems` reads the file back to the same float64 values, bit for bit (JSON
    floats are written with Python's round-trip ``repr``). The softening is written as one
    number when all systems share it, else as a list of B numbers.

    Args:
        path: the file to write, ending in ``.json`` or ``.npz`` (its folder must exist).
        state: B systems.

    Returns:
        The path written.

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"initial-conditions file {path} must end in .json or .npz, not {path.suffix!r}")
    softening = state.softening.detach().cpu()
    shared = bool((softening == softening[0]).all())
    arrays: dict[str, Any] = {
        "masses": state.masses.detach().cpu().numpy(),
        "positions": state.positions.detach().cpu().numpy(),
        "velocities": state.velocities.detach().cpu().numpy(),
        "softening": np.float64(softening[0]) if shared else softening.numpy(),
    }
    field = state.external
    described = (
        {}
        if field is None
        else {
            "host_mass": field.host_mass.detach().cpu().numpy(),
            "host_position": field.host_position.detach().cpu().numpy(),
            "orbit": np.str_("circular" if bool((field.rotation > 0).any()) else "static"),
            "softening": field.softening.detach().cpu().numpy(),
        }
    )
    if suffix == ".npz":
        np.savez(path, **arrays, **{f"external.{key}": value for key, value in described.items()})
    else:
        content = {key: np.asarray(value).tolist() for key, value in arrays.items()}
        if described:
            content["external"] = {key: np.asarray(value).tolist() for key, value in described.items()}
        path.write_text(json.dumps(content) + "\n")
    return path


def _nested_field(content: dict[str, Any]) -> dict[str, Any]:
    """NPZ archives' ``external.<key>`` entries gathered into one ``external`` object."""
    flat = {key: value for key, value in content.items() if key.startswith("external.")}
    if not flat:
        return content
    rest = {key: value for key, value in content.items() if key not in flat}
    return {**rest, "external": {key.removeprefix("external."): value for key, value in flat.items()}}


def _field(path: Path, spec: Any) -> TidalField:
    """The tidal field an ``external`` object describes, its keys and values checked."""
    if not isinstance(spec, dict):
        raise ValueError(f"external must be an object with keys {list(FIELD_KEYS)}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(FIELD_KEYS))
    missing = [key for key in ("host_mass", "host_position") if key not in spec]
    if unknown or missing:
        raise ValueError(f"external: unknown keys {unknown}, missing keys {missing}; allowed: {list(FIELD_KEYS)}")
    orbit = spec.get("orbit", "static")
    orbit = orbit.item() if isinstance(orbit, np.ndarray) else orbit
    if not isinstance(orbit, str):
        raise ValueError(f"external.orbit must be 'static' or 'circular', got {orbit!r}")
    softening = _numbers(path, "external.softening", spec.get("softening", 0.0))
    return TidalField.build(
        _numbers(path, "external.host_mass", spec["host_mass"]),
        _numbers(path, "external.host_position", spec["host_position"]),
        orbit=orbit,
        softening=softening if softening.ndim else float(softening),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"initial-conditions file {path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"initial-conditions file {path} must hold a JSON object, got {type(content).__name__}")
    return content


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"initial-conditions file {path} is not a readable NPZ archive: {error}") from error


def _numbers(path: Path, key: str, value: Any) -> Tensor:
    """``value`` as a float64 tensor, refusing ragged and non-numeric arrays (naming the file)."""
    if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
        raise ValueError(f"initial-conditions file {path}: {key} must hold numbers, got dtype {value.dtype}")
    try:
        if _has_non_numbers(value):
            raise TypeError("found a value that is not a number")
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"initial-conditions file {path}: {key} must be a rectangular array of numbers ({error})"
        ) from error
    return torch.as_tensor(array)


def _has_non_numbers(value: Any) -> bool:
    """True if a nested JSON list holds anything but ints and floats (strings, booleans, null)."""
    if isinstance(value, list):
        return any(_has_non_numbers(item) for item in value)
    return not isinstance(value, int | float | np.ndarray | np.number) or isinstance(value, bool)
