"""Training and inference throughput of the AST at the real clip length against the report's padding.

The report fed 4 s clips (173 frames of ``seed`` log-mel) to an AST built for AudioSet's 1024 frames,
zero-padding each clip, so most of every batch was padding. birdops builds the AST at the real frame
count. This measures both on the same machine in one run: samples/s of a full training step (forward
under autocast, focal loss, backward, gradient clipping, AdamW with discriminative learning rates) and
of inference, for each ``--frames`` length, on zero-padded real-length inputs. Not a test; prints a
table and writes JSON.

    python benchmarks/bench_train.py --device cuda --size base --batch-size 32 --precision bf16 \\
        --frames 173,1024 --out metrics/bench_train_gpu.json

On the CPU, ``--size small --batch-size 8 --steps 3`` runs in seconds (a smoke run, not a figure).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from birdops.config import LossParams, ModelParams
from birdops.models.factory import build_model, is_head
from birdops.train.losses import make_loss
from birdops.train.trainer import autocast, autocast_dtype


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--patch-stride", type=int, default=10, help="10: the AudioSet checkpoint's")
    parser.add_argument("--bins", type=int, default=128)
    parser.add_argument("--real-frames", type=int, default=173, help="frames of a real 4 s clip")
    parser.add_argument("--frames", default="173,1024", help="model lengths to compare, comma-separated")
    parser.add_argument("--classes", type=int, default=89)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    return parser.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Any, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def measure(args: argparse.Namespace, frames: int, device: torch.device) -> dict[str, Any]:
    """Train-step and inference throughput of an AST built for ``frames`` frames."""
    torch.manual_seed(0)
    cfg = ModelParams(arch="ast", size=args.size, features="seed", patch_stride=args.patch_stride)
    model = build_model(cfg, args.classes, args.bins, frames).to(device)
    groups = [
        {"params": [p for n, p in model.named_parameters() if not is_head(n)], "lr": 5e-5},
        {"params": [p for n, p in model.named_parameters() if is_head(n)], "lr": 1e-3},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2, fused=device.type == "cuda")
    loss_fn = make_loss(LossParams(kind="focal", gamma=2.0))
    dtype = autocast_dtype(args.precision, device)

    real = min(args.real_frames, frames)
    features = torch.zeros(args.batch_size, args.bins, frames, device=device)
    features[:, :, :real] = torch.randn(args.batch_size, args.bins, real, device=device)
    targets = torch.randint(0, args.classes, (args.batch_size,), device=device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = loss_fn(model(features), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            model(features)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_s = timed(train_step, device, args.warmup, args.steps)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.eval()
    infer_s = timed(infer_step, device, args.warmup, args.steps)
    patches = model.backbone.embeddings.get_shape(model.config)
    return {
        "model_frames": frames,
        "real_frames": real,
        "tokens_per_clip": patches[0] * patches[1] + 2,
        "train_samples_per_s": round(args.batch_size / train_s, 1),
        "train_step_ms": round(train_s * 1000, 2),
        "infer_samples_per_s": round(args.batch_size / infer_s, 1),
        "train_peak_gib": None if peak_gib is None else round(peak_gib, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [measure(args, int(frames), device) for frames in args.frames.split(",")]
    base = rows[0]
    for row in rows:
        row["train_speedup_of_first"] = round(base["train_samples_per_s"] / row["train_samples_per_s"], 2)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "size": args.size,
        "patch_stride": args.patch_stride,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "classes": args.classes,
        "rows": rows,
    }
    header = (
        f"{'frames':>6} {'tokens':>6} {'train/s':>9} {'step ms':>8} {'infer/s':>9} "
        f"{'peak GiB':>8} {'x':>5}"
    )
    print(f"AST {args.size}, batch {args.batch_size}, {args.precision}, on {result['device']}")
    print(header)
    for r in rows:
        print(
            f"{r['model_frames']:>6} {r['tokens_per_clip']:>6} {r['train_samples_per_s']:>9} "
            f"{r['train_step_ms']:>8} {r['infer_samples_per_s']:>9} {r['train_peak_gib']!s:>8} "
            f"{r['train_speedup_of_first']:>5}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
