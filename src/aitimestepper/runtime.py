"""Infrastructure settings from the environment (never science: those live in params.yaml)."""

from __future__ import annotations

import os

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: What pins the arithmetic of torch's CPU kernels to one instruction set, so that the same
#: inputs give the same bits on every x86-64 CPU with AVX2 and FMA (measured on this machine
#: kind: a float32 layer's forward and backward gave other bits with torch's own kernels at the
#: AVX-512, AVX2 and default levels, and with oneMKL's own choice of kernels against its
#: conditional-numerical-reproducibility modes; a training on an Intel AVX-512 machine kept
#: another epoch than the same training on an AMD one). Both are read by torch and oneMKL at
#: their first use, not at import.
PORTABLE_NUMERICS = {
    # oneMKL's conditional numerical reproducibility: the AVX2 code path, strict (the same bits
    # whatever the CPU, the alignment of the data or the threads); about 1.3x slower float32
    # products than its own choice on this machine, where the compatible (SSE2) path was 2x
    "MKL_CBWR": "AVX2,STRICT",
    # torch's own vectorised kernels (tanh, exp, reductions): the AVX2 versions
    "ATEN_CPU_CAPABILITY": "avx2",
}


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
    portable_numerics: bool = Field(
        True,
        description="pin torch's and oneMKL's CPU kernels to their AVX2 versions (PORTABLE_NUMERICS), so that "
        "training and simulation give the same bits on every x86-64 CPU with AVX2 and FMA; false leaves "
        "the kernels to each library's choice (faster on AVX-512, other bits there).",
    )

    def apply(self) -> None:
        """Configure torch for this process. Call it before the first torch operation: the
        kernels' instruction set is chosen once, at their first use."""
        if self.portable_numerics:
            os.environ.update(PORTABLE_NUMERICS)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
