"""Throughput of the exported model on this machine: onnxruntime against PyTorch on the same model and
batch, and ``birdops predict`` on a generated long recording. Not a test; prints a table and writes
JSON.

    python benchmarks/bench_onnx.py --model models/export/model.onnx --models models \\
        --out metrics/bench_onnx.json [--batch-size 16] [--threads N] [--long-seconds 600]

The PyTorch side is the variant named in the ONNX file's metadata, loaded from ``--models/<variant>``
(front end + model, float32). Both run on the CPU with the same number of threads (default: every
core) on the same batch of clips; ``--device cuda`` runs both on the GPU instead. The long recording
is a 32 kHz FLAC of bird-like chirps in noise, so ``birdops predict`` pays for decoding and
resampling as it would on field recordings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from birdops.export.onnx_export import load_waveform_classifier
from birdops.export.parity import clips_per_second
from birdops.serve import predict
from birdops.serve.inference import CPU_PROVIDER, CUDA_PROVIDER, Classifier

RECORDING_RATE_HZ = 32000


def chirps(seconds: float, sample_rate_hz: int, seed: int = 0) -> np.ndarray:
    """``seconds`` of rising chirps (2-6 kHz, one every 0.7 s) in faint noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    phase_s = np.mod(t, 0.7)  # time since the last chirp started
    sweep_hz = 2000.0 + 4000.0 * phase_s / 0.2
    call = np.where(phase_s < 0.2, np.sin(2 * np.pi * sweep_hz * phase_s), 0.0)
    return (0.3 * call + 0.02 * rng.normal(size=t.shape)).astype(np.float32)


def model_throughput(
    classifier: Classifier, models_dir: Path, batch_size: int, device: str, min_seconds: float
) -> dict[str, Any]:
    """Clips per second of onnxruntime and of PyTorch on one batch of ``batch_size`` windows."""
    module, _ = load_waveform_classifier(models_dir / classifier.metadata.variant)
    wave = chirps(batch_size * classifier.window_seconds, classifier.sample_rate_hz, seed=1)
    batch = wave[: batch_size * classifier.metadata.window_samples].reshape(batch_size, -1)  # (B, S)
    ort_rate = clips_per_second(lambda: classifier.logits(batch), batch_size, min_seconds)
    module = module.to(device)
    tensor = torch.from_numpy(batch).to(device)

    def torch_run() -> object:
        out = module(tensor)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    with torch.no_grad():
        torch_rate = clips_per_second(torch_run, batch_size, min_seconds)
    return {
        "ort_clips_per_s": ort_rate,
        "torch_clips_per_s": torch_rate,
        "ort_speedup": ort_rate / torch_rate,
    }


def predict_throughput(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Audio seconds per wall-clock second of ``birdops predict`` on one long generated recording."""
    with tempfile.TemporaryDirectory() as folder:
        recording = Path(folder) / "long.flac"
        sf.write(recording, chirps(args.long_seconds, RECORDING_RATE_HZ), RECORDING_RATE_HZ)
        argv = [str(recording), "--model", str(args.model), "--output", str(Path(folder) / "out.csv")]
        argv += ["--batch-size", str(args.batch_size), "--threads", str(threads), "--device", args.device]
        started = time.perf_counter()
        code = predict.main(argv)
        wall_s = time.perf_counter() - started
        rows = sum(1 for _ in (Path(folder) / "out.csv").open()) - 1
    if code != 0:
        raise RuntimeError(f"birdops predict exited with {code}")
    return {
        "predict_audio_seconds": args.long_seconds, "predict_wall_s": wall_s,
        "predict_audio_s_per_s": args.long_seconds / wall_s, "predict_rows": rows,
    }  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/export/model.onnx"))
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of the variants")
    parser.add_argument("--out", type=Path, default=Path("metrics/bench_onnx.json"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for both runtimes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--long-seconds", type=float, default=600.0, help="length of the long recording")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timing per measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if args.device == "cuda" else [CPU_PROVIDER]
    classifier = Classifier.load(args.model, providers=providers, intra_op_threads=args.threads)
    results: dict[str, Any] = {
        "model": str(args.model), "variant": classifier.metadata.variant, "device": args.device,
        "providers": ",".join(classifier.providers), "threads": args.threads, "batch_size": args.batch_size,
        "window_seconds": classifier.window_seconds, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
    }  # fmt: skip
    results |= model_throughput(classifier, args.models, args.batch_size, args.device, args.min_seconds)
    results |= predict_throughput(args, args.threads)
    width = max(len(key) for key in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
