"""A fixed-length window of past states per system, kept as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.physics.state import State


@dataclass(frozen=True)
class History:
    """The last ``length`` states of B systems, most recent first, zero where not yet filled.

    Attributes:
        positions: (B, H, N, D) past positions; index 0 is the state one step ago.
        velocities: (B, H, N, D) past velocities.
        filled: (B,) int64, how many of the H slots hold a real past state (0..H).
    """

    positions: Tensor
    velocities: Tensor
    filled: Tensor

    @classmethod
    def empty(cls, state: State, length: int) -> History:
        """A history of ``length`` zero slots for the systems of ``state``."""
        shape = (state.batch_size, length, state.num_bodies, state.dim)
        zeros = torch.zeros(shape, dtype=state.positions.dtype, device=state.positions.device)
        filled = torch.zeros(state.batch_size, dtype=torch.int64, device=state.positions.device)
        return cls(positions=zeros, velocities=zeros.clone(), filled=filled)

    @property
    def length(self) -> int:
        """Number of slots H."""
        return self.positions.shape[1]

    def push(self, state: State) -> History:
        """The history after ``state`` becomes the most recent past state (oldest dropped)."""
        if self.length == 0:
            return self
        positions = torch.cat([state.positions.detach().unsqueeze(1), self.positions[:, :-1]], dim=1)
        velocities = torch.cat([state.velocities.detach().unsqueeze(1), self.velocities[:, :-1]], dim=1)
        return History(positions, velocities, (self.filled + 1).clamp_max(self.length))

    def push_where(self, accepted: Tensor, state: State) -> History:
        """Push ``state`` only for systems where ``accepted`` (B,) is True."""
        pushed = self.push(state)
        mask = accepted.view(-1, 1, 1, 1)
        return History(
            positions=torch.where(mask, pushed.positions, self.positions),
            velocities=torch.where(mask, pushed.velocities, self.velocities),
            filled=torch.where(accepted, pushed.filled, self.filled),
        )

    def reset_where(self, mask: Tensor) -> History:
        """Empty the history of the systems where ``mask`` (B,) is True (e.g. re-drawn systems)."""
        clear = mask.view(-1, 1, 1, 1)
        return History(
            positions=self.positions.masked_fill(clear, 0.0),
            velocities=self.velocities.masked_fill(clear, 0.0),
            filled=torch.where(mask, torch.zeros_like(self.filled), self.filled),
        )

    def warming_up(self) -> Tensor:
        """(B,) bool: True while a system's window is not yet full (its features are padded)."""
        return self.filled < self.length

    def select(self, index: Tensor) -> History:
        """The histories of the systems picked by ``index`` (bool mask or 1-D indices)."""
        return History(self.positions[index], self.velocities[index], self.filled[index])
