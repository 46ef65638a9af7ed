"""One set of CPU kernels for every stage, whatever the processor, so results do not depend on it.

numpy, PyTorch, oneDNN, MKL and OpenBLAS each pick SIMD kernels for the processor at import time,
and their AVX-512 kernels round differently from their AVX2 ones (transcendental functions,
reductions, matrix products): last-bit differences that an MP3 or Vorbis encoder, or sixteen epochs
of training, turn into different files. The same code and parameters then give another ``dvc.lock``
on another processor. :func:`pin_cpu_kernels` caps every library at the x86-64 AVX2 level
(``x86-64-v3``), which the processors of today's CPU runners all have; it must run before numpy or
torch is imported, and does so for every stage through ``pipeline/__init__.py``. A value already in
the environment is kept (that run then reproduces only on processors like its own).

Nothing here imports numpy or torch.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

# every variable that selects the kernels of one library, and the AVX2-level value it gets
X86_KERNEL_CAPS: dict[str, str] = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy: dispatch up to X86_V3
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (PyTorch's convolutions and matmuls)
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS (numpy's and scipy's BLAS)
}


def pin_cpu_kernels(
    environ: MutableMapping[str, str] | None = None, machine: str | None = None
) -> dict[str, str]:
    """Set the kernel caps that ``environ`` (``os.environ``) does not set yet; returns what it set.

    Only on x86-64: other processors have no AVX-512 to cap (and are another machine kind)."""
    environ = os.environ if environ is None else environ
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64"):
        return {}
    added = {name: value for name, value in X86_KERNEL_CAPS.items() if name not in environ}
    environ.update(added)
    return added
