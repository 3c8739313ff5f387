"""Infrastructure settings from the environment (never science: those live in params.yaml)."""

from __future__ import annotations

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Runtime(BaseSettings):
    """Machine-specific settings, read from ``AITS_*`` environment variables.

    Example: ``AITS_NUM_THREADS=2 aits simulate``.
    """

    model_config = SettingsConfigDict(env_prefix="AITS_", extra="ignore")

    num_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads; 0 keeps torch's default. The default 1: the project's tensors are "
        "small, and on a busy 2-core machine 2 threads made float32 layers 400x slower (measured). Compiled "
        "rollouts run in parallel over systems on numba's threads (NUMBA_NUM_THREADS).",
    )

    def apply(self) -> None:
        """Configure torch for this process."""
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
