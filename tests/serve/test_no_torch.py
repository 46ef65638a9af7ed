"""The serving path never imports torch: a fresh interpreter imports the serving modules, classifies a
file, runs ``birdops predict`` and ``birdops segments`` and builds the HTTP app, and still has no torch
(nor transformers) in ``sys.modules``. This is what lets the ``serve`` Docker image install only
``.[serve]``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import soundfile as sf
from tones import TONES_HZ, tone_model, tones

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import birdops.serve.app as app
    import birdops.serve.inference as inference
    import birdops.serve.predict as predict
    from birdops import cli
    from birdops.serve.settings import ServeSettings

    model, audio, table = (Path(arg) for arg in sys.argv[1:4])
    classifier = inference.Classifier.load(model, providers=["CPUExecutionProvider"])
    result = classifier.predict_file(audio)
    code = cli.main(["predict", str(audio), "--model", str(model), "--output", str(table)])
    clips = table.parent / "clips"
    segments_code = cli.main(["segments", str(table), "--out", str(clips)])
    api = app.create_app(classifier, ServeSettings(model_path=model))
    heavy = sorted(name for name in ("torch", "torchaudio", "transformers") if name in sys.modules)
    print(json.dumps({
        "top": [s.species for s in result.file_top(1)], "predict_exit": code,
        "segments_exit": segments_code, "clips": sorted(p.name for p in clips.rglob("*.wav")),
        "routes": sorted(route.path for route in api.routes), "heavy_modules": heavy,
    }))
    """
)


def test_serving_runs_without_importing_torch(tmp_path: Path) -> None:
    model = tmp_path / "tones.onnx"
    onnx.save(tone_model(), str(model))
    audio = tmp_path / "call.wav"
    sf.write(audio, tones([(TONES_HZ[2], 2.0)]), 8000)
    table = tmp_path / "table.csv"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model), str(audio), str(table)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["top"] == ["High tone"]  # it really classified the file
    assert report["predict_exit"] == 0 and len(table.read_text().splitlines()) == 3  # header + 2 windows
    assert report["segments_exit"] == 0 and len(report["clips"]) == 2  # one clip a window
    assert {"/predict", "/health", "/ready"} <= set(report["routes"])
    assert report["heavy_modules"] == []
