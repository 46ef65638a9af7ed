"""How often the exported model names a species in audio that holds none: prints a table.

    python benchmarks/non_target_audio.py --model models/export/model.onnx DIR [DIR ...]

Every audio file under each ``DIR`` (recursively) is decoded at the model's rate and classified with
``birdops predict``'s defaults (the model's calibrated scores and per-species thresholds, windows of
its length without overlap: :func:`birdops.serve.field_check.detections`); the table gives, per
folder, the windows and the share of them with a species row. Three generated minutes are added --
white, pink and brown noise, 60 s each -- so a run without folders still measures something.

Real audio nobody here made, from Debian packages (``apt-get install alsa-utils
sound-theme-freedesktop sound-icons flite``): ``/usr/share/sounds/alsa`` (recorded speech),
``/usr/share/sounds/freedesktop`` (bells, phones, alarms, a camera shutter), ``/usr/share/sounds/
sound-icons`` (instrument and household samples; leave out its ``canary-long.wav``, a bird), and
speech from ``flite -t "..." -o speech.wav``. Short files are classified as they are: a file shorter
than a window is one zero-padded window, as ``birdops predict`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from birdops.audio import AudioError, audio_files, load_audio
from birdops.data.noise import colored_noise
from birdops.providers import CPU_PROVIDER
from birdops.serve.field_check import detections
from birdops.serve.inference import Classifier

NOISE_SECONDS = 60.0


def flagged(classifier: Classifier, waves: list[np.ndarray]) -> tuple[int, int]:
    """(windows, windows with a species row) over ``waves``."""
    counts = [detections(classifier, wave).flagged for wave in waves]
    total = sum(len(c) for c in counts)
    return total, int(sum(c.sum() for c in counts))


def folder_waves(folder: Path, rate_hz: int) -> list[np.ndarray]:
    waves = []
    for path in audio_files(folder):
        try:
            waves.append(load_audio(path, rate_hz))
        except AudioError as err:
            print(f"  skipped {path}: {err.reason}", file=sys.stderr)
    return waves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="*", type=Path, help="folders of audio without any target species")
    parser.add_argument("--model", type=Path, default=Path("models/export/model.onnx"))
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.model, providers=[CPU_PROVIDER])
    rate = classifier.sample_rate_hz
    rng = np.random.default_rng(0)
    sources = {
        f"{name} noise ({NOISE_SECONDS:.0f} s)": [
            0.1 * colored_noise(round(NOISE_SECONDS * rate), exponent, rng)
        ]
        for name, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0))
    }
    sources |= {str(folder): folder_waves(folder, rate) for folder in args.folders}
    print(f"model: {args.model} ({classifier.metadata.variant}, {classifier.metadata.scoring.activation})")
    print(f"{'source':<48} {'files':>6} {'windows':>8} {'flagged':>8} {'share':>7}")
    totals = [0, 0]
    for name, waves in sources.items():
        windows, hits = flagged(classifier, waves) if waves else (0, 0)
        totals = [totals[0] + windows, totals[1] + hits]
        share = f"{100 * hits / windows:.1f}%" if windows else "n/a"
        print(f"{name:<48} {len(waves):>6} {windows:>8} {hits:>8} {share:>7}")
    share = f"{100 * totals[1] / totals[0]:.1f}%" if totals[0] else "n/a"
    print(f"{'all':<48} {'':>6} {totals[0]:>8} {totals[1]:>8} {share:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
