"""A fixed-length window of the past, per system: the rows of the last H states.

A learned policy looks at each state once: what its look keeps of the current state
(:func:`aitimestepper.features.look`), with the outcome of the step taken from it
(:func:`aitimestepper.features.history_row`), is what the window keeps, so a step costs one
pairwise pass however long the window is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.physics.state import DTYPE


@dataclass(frozen=True)
class History:
    """The rows of the last ``length`` states of B systems, most recent first.

    Attributes:
        rows: (B, H, Q) float64 per-state quantities; index 0 is the state one step ago;
            zero where not yet filled.
        filled: (B,) int64, how many of the H slots hold a real past state (0..H).
    """

    rows: Tensor
    filled: Tensor

    @classmethod
    def empty(cls, batch_size: int, length: int, width: int) -> History:
        """A window of ``length`` zero slots of ``width`` quantities for ``batch_size`` systems."""
        return cls(
            rows=torch.zeros((batch_size, length, width), dtype=DTYPE),
            filled=torch.zeros(batch_size, dtype=torch.int64),
        )

    @property
    def length(self) -> int:
        """Number of slots H."""
        return self.rows.shape[1]

    def push(self, rows: Tensor) -> History:
        """The window after the state with ``rows`` (B, Q) becomes the most recent
        past state (the oldest is dropped)."""
        if self.length == 0:
            return self
        shifted = torch.cat([rows.detach().unsqueeze(1), self.rows[:, :-1]], dim=1)
        return History(shifted, (self.filled + 1).clamp_max(self.length))

    def push_where(self, accepted: Tensor, rows: Tensor) -> History:
        """:meth:`push` only for the systems where ``accepted`` (B,) is True."""
        if self.length == 0:
            return self
        pushed = self.push(rows)
        return History(
            rows=torch.where(accepted.view(-1, 1, 1), pushed.rows, self.rows),
            filled=torch.where(accepted, pushed.filled, self.filled),
        )

    def reset_where(self, mask: Tensor) -> History:
        """Empty the windows of the systems where ``mask`` (B,) is True (e.g. re-drawn systems)."""
        return History(
            rows=self.rows.masked_fill(mask.view(-1, 1, 1), 0.0),
            filled=torch.where(mask, torch.zeros_like(self.filled), self.filled),
        )

    def replace_rows(self, index: Tensor, other: History) -> History:
        """This window with the systems at ``index`` (1-D) replaced by those of ``other``."""
        return History(self.rows.index_copy(0, index, other.rows), self.filled.index_copy(0, index, other.filled))

    def warming_up(self) -> Tensor:
        """(B,) bool: True while a system's window is not yet full (its features are padded)."""
        return self.filled < self.length

    def select(self, index: Tensor) -> History:
        """The windows of the systems picked by ``index`` (bool mask or 1-D indices)."""
        return History(self.rows[index], self.filled[index])
