"""The one device rule (``birdops.providers.choose_providers``): the rule itself with the CUDA probe
stubbed, the probe's own answers, and ``birdops predict`` on this machine printing none of
onnxruntime's library errors."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdops import providers
from birdops.providers import CPU_PROVIDER, CUDA_PROVIDER, DeviceUnavailable, choose_providers


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """The probe's cache emptied before and after, so a stubbed answer never outlives its test."""
    providers.cuda_usable.cache_clear()
    yield
    providers.cuda_usable.cache_clear()


def probe_says(monkeypatch: pytest.MonkeyPatch, usable: bool, why: str = "") -> None:
    monkeypatch.setattr(providers, "cuda_usable", lambda: (usable, why))


def test_cpu_is_the_cpu_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe() -> tuple[bool, str]:
        raise AssertionError("device cpu must not probe CUDA")

    monkeypatch.setattr(providers, "cuda_usable", no_probe)
    choice = choose_providers("cpu")
    assert choice.providers == [CPU_PROVIDER] and choice.reason == "device cpu"


def test_auto_is_cuda_only_when_the_probe_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    probe_says(monkeypatch, True)
    choice = choose_providers("auto")
    assert choice.providers == [CUDA_PROVIDER, CPU_PROVIDER]
    assert choice.reason == "device auto: CUDA is available"
    probe_says(monkeypatch, False, "no NVIDIA driver (libcuda.so.1)")
    choice = choose_providers("auto")
    assert choice.providers == [CPU_PROVIDER]
    assert choice.reason == "device auto: CPU (no NVIDIA driver (libcuda.so.1))"


def test_cuda_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    probe_says(monkeypatch, True)
    assert choose_providers("cuda").providers == [CUDA_PROVIDER, CPU_PROVIDER]
    probe_says(monkeypatch, False, "no usable CUDA device")
    with pytest.raises(DeviceUnavailable, match="device cuda: CUDA cannot run here: no usable CUDA device"):
        choose_providers("cuda")


def test_the_probe_without_a_cuda_build_or_a_driver(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CPU_PROVIDER])
    assert providers.cuda_usable() == (False, "this onnxruntime build has no CUDA provider")
    providers.cuda_usable.cache_clear()

    def no_library(name: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    monkeypatch.setattr(providers.ctypes, "CDLL", no_library)
    assert providers.cuda_usable() == (False, "no NVIDIA driver (libcuda.so.1)")


def test_the_real_probe_is_quiet_and_agrees_with_auto(capfd: pytest.CaptureFixture[str]) -> None:
    usable, why = providers.cuda_usable()
    choice = choose_providers("auto")
    if usable:
        assert choice.providers[0] == CUDA_PROVIDER and choice.reason == "device auto: CUDA is available"
    else:
        assert choice.providers == [CPU_PROVIDER] and choice.reason == f"device auto: CPU ({why})"
    assert capfd.readouterr().err == ""  # nothing printed while probing


def test_predict_prints_no_onnxruntime_library_error(model_path: Path, tmp_path: Path) -> None:
    """``birdops predict`` with the default ``--device auto``, in a real process: on a machine where
    CUDA cannot run (this one, with or without onnxruntime-gpu) onnxruntime is never asked for it,
    so its red "Failed to load library" error never appears; the log says which device and why."""
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.1 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 8000), 8000)
    command = [sys.executable, "-m", "birdops.cli", "predict", str(wav), "--model", str(model_path)]
    result = subprocess.run(
        [*command, "--output", str(tmp_path / "out.csv")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Failed to load library" not in result.stderr
    assert "device auto: " in result.stderr
    if not providers.cuda_usable()[0]:
        assert "[E:onnxruntime" not in result.stderr and "CUDAExecutionProvider" not in result.stderr
