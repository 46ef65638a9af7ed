"""onnxruntime's execution providers: their names, and which to request for a device. Shared by
serving (:mod:`birdops.serve`) and the export's parity gates (:mod:`birdops.export`), neither of
which imports the other."""

from __future__ import annotations

from typing import Literal

import onnxruntime as ort

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]


def providers_for(device: Device) -> list[str]:
    """Execution providers to request: ``auto`` is CUDA first with a CPU fallback (when this
    onnxruntime build has CUDA at all), ``cpu`` and ``cuda`` only that one."""
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda":
        return [CUDA_PROVIDER, CPU_PROVIDER]
    available = ort.get_available_providers()
    return [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available]
