"""Infrastructure settings from the environment (never science: those live in params.yaml)."""

from __future__ import annotations

import os

import torch
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: What pins the arithmetic of torch's and oneMKL's CPU kernels, so that the same inputs give
#: the same bits on every x86-64 CPU with AVX2 and FMA, Intel or AMD. Left to themselves both
#: choose kernels by CPU (measured on this machine kind: a float32 layer's forward and backward
#: gave other bits with torch's kernels at the AVX-512, AVX2 and default levels and with each of
#: oneMKL's code paths). oneMKL's only path that is the same on Intel and AMD processors is
#: COMPATIBLE: its AVX2 path is Intel-only and falls back, silently, to the CPU's own choice
#: elsewhere (oneMKL's documentation; measured: with ``MKL_CBWR=AVX2`` a training on an Intel
#: Xeon kept epoch 35 where the same training on an AMD EPYC kept epoch 50). Both variables are
#: read by torch and oneMKL at their first use, not at import.
PORTABLE_NUMERICS = {
    # oneMKL's conditional numerical reproducibility, on its COMPATIBLE path (SSE2 without the
    # approximate rcpps/rsqrtps): the same bits whatever the CPU's vendor or the data's alignment,
    # at a fixed thread count (STRICT, thread-count-proof, covers the Intel-only paths alone: hence
    # torch on one thread, see Runtime); training costs about 2% more than with the AVX2 path here
    "MKL_CBWR": "COMPATIBLE,STRICT",
    # torch's own vectorised kernels (tanh, exp, reductions): the AVX2 versions
    "ATEN_CPU_CAPABILITY": "avx2",
}


class Runtime(BaseSettings):
    """Machine-specific settings, read from ``AITS_*`` environment variables.

    Example: ``AITS_PORTABLE_NUMERICS=false AITS_NUM_THREADS=2 aits simulate``.
    """

    model_config = SettingsConfigDict(env_prefix="AITS_", extra="ignore")

    num_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads; 0 keeps torch's default; other than 1 only with portable_numerics "
        "false (oneMKL's vendor-neutral path gives the same bits at a fixed thread count only; measured: a "
        "90-system torch-path simulation gave other bits at 2 threads than at 1). The default 1: the project's "
        "tensors are small, and on a busy 2-core machine 2 threads made float32 layers 400x slower (measured). "
        "Compiled rollouts run in parallel over systems on numba's threads (NUMBA_NUM_THREADS), which change no "
        "bit.",
    )
    portable_numerics: bool = Field(
        True,
        description="pin torch's CPU kernels to their AVX2 versions and oneMKL's to its vendor-neutral path "
        "(PORTABLE_NUMERICS), so that training and simulation give the same bits on every x86-64 CPU with AVX2 "
        "and FMA; false leaves the kernels to each library's choice (faster, other bits on other CPUs).",
    )

    @model_validator(mode="after")
    def _threads_keep_the_bits(self) -> Runtime:
        if self.portable_numerics and self.num_threads != 1:
            raise ValueError(
                f"AITS_NUM_THREADS={self.num_threads} needs AITS_PORTABLE_NUMERICS=false: with portable numerics "
                "torch runs on one thread (oneMKL's vendor-neutral path gives the same bits at one fixed thread "
                "count only); parallel rollouts use NUMBA_NUM_THREADS"
            )
        return self

    def apply(self) -> None:
        """Configure torch for this process. Call it before the first torch operation: the
        kernels' instruction set is chosen once, at their first use."""
        if self.portable_numerics:
            os.environ.update(PORTABLE_NUMERICS)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
