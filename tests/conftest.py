"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from tones import tone_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tone-detector ONNX model of ``tones.py``, saved to disk."""
    path = tmp_path_factory.mktemp("model") / "tones.onnx"
    onnx.save(tone_model(), str(path))
    return path
