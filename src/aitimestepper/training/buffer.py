"""The replay buffer of accepted states: one ring of tensors per body count, sampled uniformly."""

from __future__ import annotations

import torch
from torch import Tensor

from aitimestepper.history import History
from aitimestepper.physics.external import TidalField
from aitimestepper.physics.state import State

_KEYS = ("positions", "velocities", "accelerations", "masses", "softening", "time", "past_rows", "filled")


class _Ring:
    """Up to ``capacity`` (state, history window) pairs of one body count, oldest overwritten
    first: positions/velocities/accelerations (C, N, D), masses (C, N), softening and time (C,),
    history rows (C, H, Q), filled (C,), and each state's tidal field (host mass 0: none;
    :meth:`aitimestepper.physics.external.TidalField.as_dict`)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tensors: dict[str, Tensor] = {}
        self.size = 0
        self.cursor = 0

    def add(self, state: State, history: History) -> None:
        values = dict(
            zip(
                _KEYS,
                (
                    state.positions,
                    state.velocities,
                    state.accelerations,
                    state.masses,
                    state.softening,
                    state.time,
                    history.rows,
                    history.filled,
                ),
                strict=True,
            )
        )
        values.update(state.field.as_dict())
        count = state.batch_size
        if not self.tensors:
            self.tensors = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in values.items()}
        slots = (self.cursor + torch.arange(count)) % self.capacity
        for key, value in values.items():
            self.tensors[key][slots[-self.capacity :]] = value.detach()[-self.capacity :]
        self.cursor = int((self.cursor + count) % self.capacity)
        self.size = min(self.size + count, self.capacity)

    def gather(self, index: Tensor) -> tuple[State, History]:
        t = {key: value[index] for key, value in self.tensors.items()}
        state = State(
            positions=t["positions"],
            velocities=t["velocities"],
            masses=t["masses"],
            accelerations=t["accelerations"],
            time=t["time"],
            softening=t["softening"],
            external=TidalField.from_dict(t),
        )
        return state, History(t["past_rows"], t["filled"])


class ReplayBuffer:
    """Accepted (state, history window) pairs, up to ``capacity`` of each body count N.

    Args:
        capacity: ring size per body count (the oldest entries are overwritten first).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rings: dict[int, _Ring] = {}

    def __len__(self) -> int:
        return sum(ring.size for ring in self.rings.values())

    def add(self, state: State, history: History) -> None:
        """Append the systems of ``state`` (one body count) with their histories."""
        if state.batch_size == 0:
            return
        self.rings.setdefault(state.num_bodies, _Ring(self.capacity)).add(state, history)

    def sample(self, count: int, generator: torch.Generator) -> list[tuple[State, History]]:
        """``count`` entries drawn uniformly with replacement over all of them, one
        (state, history) batch per body count that was drawn, in increasing N."""
        sizes = torch.tensor([self.rings[n].size for n in sorted(self.rings)])
        index = torch.randint(int(sizes.sum()), (count,), generator=generator)
        offsets = torch.cumsum(sizes, 0) - sizes
        batches = []
        for k, bodies in enumerate(sorted(self.rings)):
            chosen = index[(index >= offsets[k]) & (index < offsets[k] + sizes[k])] - offsets[k]
            if chosen.numel():
                batches.append(self.rings[bodies].gather(chosen))
        return batches

    def gather(self, bodies: int, index: Tensor) -> tuple[State, History]:
        """The entries at ``index`` of the ring of ``bodies`` bodies, as states and histories."""
        return self.rings[bodies].gather(index)

    def state_dict(self) -> dict:
        """Plain tensors and ints, loadable with ``torch.load(weights_only=True)``."""
        return {
            str(n): {"tensors": ring.tensors, "size": ring.size, "cursor": ring.cursor}
            for n, ring in self.rings.items()
        }

    def load_state_dict(self, saved: dict) -> None:
        self.rings = {}
        for key, value in saved.items():
            ring = _Ring(self.capacity)
            ring.tensors, ring.size, ring.cursor = value["tensors"], value["size"], value["cursor"]
            self.rings[int(key)] = ring
