"""Atomic writes: a reader never sees a half-written output, a crash never leaves one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place.

    The rename is atomic on POSIX file systems, so ``path`` holds either its old content or the
    complete new one. The temporary file is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented, strict JSON (no NaN or Infinity tokens), atomically.

    A non-finite number becomes ``null``, and a dict payload then lists where under the key
    ``non_finite`` (JSON paths such as ``systems[3].dt_min``), so no value is lost silently.
    """
    found: list[str] = []
    clean = strict_json(payload, found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n"))


def strict_json(value: Any, found: list[str] | None = None, where: str = "") -> Any:
    """``value`` with every non-finite float replaced by None (their paths appended to ``found``)."""
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found.append(where or "(root)")
        return None
    if isinstance(value, dict):
        return {key: strict_json(item, found, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item, found, f"{where}[{k}]") for k, item in enumerate(value)]
    return value
