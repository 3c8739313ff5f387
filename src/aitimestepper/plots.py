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
