"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from tones import DETECTOR, tone_model
from xenocanto import FakeXenoCanto, serve_xeno_canto


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tone-detector ONNX model of ``tones.py``, saved to disk."""
    path = tmp_path_factory.mktemp("model") / "tones.onnx"
    onnx.save(tone_model(), str(path))
    return path


@pytest.fixture(scope="module")
def detector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tone model as an export after calibration (``tones.DETECTOR``: sigmoid scores, thresholds
    0.5), saved to disk."""
    path = tmp_path_factory.mktemp("detector") / "detector.onnx"
    onnx.save(tone_model(scoring=DETECTOR), str(path))
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two spinning threads on a busy 2-core machine are far
    slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def server() -> Iterator[FakeXenoCanto]:
    """A fake xeno-canto API v3 on 127.0.0.1 (``xenocanto.py``)."""
    yield from serve_xeno_canto()
