"""onnxruntime's execution providers and the one rule for which a device gets. Shared by
``birdops predict`` and ``birdops serve`` (:mod:`birdops.serve`), the export's parity gates
(:mod:`birdops.export`) and ``birdops bench``, none of which imports another for it.

The rule (:func:`choose_providers`): ``cpu`` is the CPU; ``cuda`` is CUDA, required; ``auto`` is
CUDA only when it can really run here (:func:`cuda_usable`), else the CPU. CUDA is asked for only
after that probe passed, because onnxruntime itself, asked for a CUDA provider it cannot load,
prints its library error in red on stderr before it falls back to the CPU."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]


class DeviceUnavailable(RuntimeError):
    """``cuda`` was asked for and CUDA cannot run here; the message says why."""


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to request, preferred first, and a one-line account of the choice for the log.
    A CUDA choice keeps the CPU behind it: onnxruntime places there the nodes CUDA has no kernel for."""

    providers: list[str]
    reason: str


@functools.cache
def cuda_usable() -> tuple[bool, str]:
    """Whether onnxruntime's CUDA provider can really run here, found without asking onnxruntime
    (which prints its library errors): ``(usable, why not)``. Probed once per process: it loads the
    driver and the provider's libraries, which stay loaded."""
    if CUDA_PROVIDER not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver (libcuda.so.1)"
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "no usable CUDA device"
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as err:
        return False, f"CUDA libraries missing ({str(err).split(':')[0]})"
    return True, ""


def choose_providers(device: Device) -> ProviderChoice:
    """The providers for ``device``: ``cpu`` the CPU; ``auto`` CUDA (then the CPU) when
    :func:`cuda_usable`, else the CPU; ``cuda`` CUDA (then the CPU), or :class:`DeviceUnavailable`
    when CUDA cannot run here -- a refusal rather than a quiet CPU run, since whoever asks for
    ``cuda`` by name is measuring or sizing for the GPU."""
    if device == "cpu":
        return ProviderChoice([CPU_PROVIDER], "device cpu")
    usable, why = cuda_usable()
    if device == "cuda":
        if not usable:
            raise DeviceUnavailable(f"device cuda: CUDA cannot run here: {why}")
        return ProviderChoice([CUDA_PROVIDER, CPU_PROVIDER], "device cuda")
    if usable:
        return ProviderChoice([CUDA_PROVIDER, CPU_PROVIDER], "device auto: CUDA is available")
    return ProviderChoice([CPU_PROVIDER], f"device auto: CPU ({why})")
