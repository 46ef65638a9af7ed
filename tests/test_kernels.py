"""Every stage runs numpy's and PyTorch's AVX2-level kernels, whatever the processor offers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from birdops.kernels import X86_KERNEL_CAPS, pin_cpu_kernels

ROOT = Path(__file__).resolve().parents[1]


def test_caps_are_added_and_a_users_choice_is_kept() -> None:
    env = {"ATEN_CPU_CAPABILITY": "default"}
    added = pin_cpu_kernels(env, machine="x86_64")
    assert env["ATEN_CPU_CAPABILITY"] == "default" and "ATEN_CPU_CAPABILITY" not in added
    assert {k: env[k] for k in X86_KERNEL_CAPS if k != "ATEN_CPU_CAPABILITY"} == added
    other: dict[str, str] = {}
    assert pin_cpu_kernels(other, machine="aarch64") == {} and other == {}


@pytest.mark.slow
def test_a_stage_process_runs_the_capped_kernels() -> None:
    """A fresh interpreter that imports the stages' package first, as ``python -m pipeline.X`` does."""
    code = (
        "import json, os, pipeline, numpy, torch\n"
        "print(json.dumps({'torch': torch.backends.cpu.get_cpu_capability(),"
        " 'numpy_off': os.environ['NPY_DISABLE_CPU_FEATURES']}))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in X86_KERNEL_CAPS}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "AVX512" not in seen["torch"].upper()
    assert "X86_V4" in seen["numpy_off"]
