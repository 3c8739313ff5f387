"""The replay buffer of accepted states: tensors in a ring, sampled uniformly."""

from __future__ import annotations

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.physics.state import State


class ReplayBuffer:
    """Up to ``capacity`` (state, history window) pairs, oldest overwritten first.

    Everything is stored as tensors: positions/velocities/accelerations (C, N, D), masses (C, N),
    history snapshot rows (C, H, Q), filled (C,).
    """

    def __init__(self, capacity: int, softening: float) -> None:
        self.capacity = capacity
        self.softening = softening
        self.tensors: dict[str, Tensor] = {}
        self.size = 0
        self.cursor = 0

    def __len__(self) -> int:
        return self.size

    def add(self, state: State, history: History) -> None:
        """Append the systems of ``state`` with their histories (wrapping around at capacity)."""
        rows = {
            "positions": state.positions,
            "velocities": state.velocities,
            "accelerations": state.accelerations,
            "masses": state.masses,
            "past_rows": history.rows,
            "filled": history.filled,
        }
        count = state.batch_size
        if count == 0:
            return
        if not self.tensors:
            self.tensors = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in rows.items()}
        slots = (self.cursor + torch.arange(count)) % self.capacity
        for key, value in rows.items():
            self.tensors[key][slots[-self.capacity :]] = value.detach()[-self.capacity :]
        self.cursor = int((self.cursor + count) % self.capacity)
        self.size = min(self.size + count, self.capacity)

    def sample(self, count: int, generator: torch.Generator) -> tuple[State, History]:
        """``count`` entries drawn uniformly with replacement."""
        index = torch.randint(self.size, (count,), generator=generator)
        return self.gather(index)

    def gather(self, index: Tensor) -> tuple[State, History]:
        """The entries at ``index`` as a state (time 0) and its history."""
        t = {key: value[index] for key, value in self.tensors.items()}
        state = State(
            positions=t["positions"],
            velocities=t["velocities"],
            masses=t["masses"],
            accelerations=t["accelerations"],
            time=torch.zeros(index.numel(), dtype=t["positions"].dtype),
            softening=self.softening,
        )
        return state, History(t["past_rows"], t["filled"])

    def state_dict(self) -> dict:
        """Plain tensors and ints, loadable with ``torch.load(weights_only=True)``."""
        return {"tensors": self.tensors, "size": self.size, "cursor": self.cursor}

    def load_state_dict(self, saved: dict) -> None:
        self.tensors, self.size, self.cursor = saved["tensors"], saved["size"], saved["cursor"]
