"""The ``model`` section of ``birdops bench``: the exported model in onnxruntime against PyTorch eager
on the same model, batch and threads (also on CUDA, in the ``cuda`` section)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birdops.bench.common import Section, Table, Unavailable, fmt, ratio
from birdops.bench.inputs import chirps
from birdops.bench.timing import call_latencies, cpu_seconds, interleaved, median, percentile
from birdops.export.parity import compare, logit_scale
from birdops.models.checkpoint import load_classifier
from birdops.providers import CPU_PROVIDER, CUDA_PROVIDER, DeviceUnavailable, choose_providers
from birdops.serve.inference import Classifier
from birdops.windows import even_windows


def providers(device: str) -> list[str]:
    """The shared device rule's providers; CUDA that cannot run here makes the section unavailable."""
    try:
        return choose_providers("cuda" if device == "cuda" else "cpu").providers
    except DeviceUnavailable as err:
        raise Unavailable(str(err)) from err


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_section(
    onnx_path: Path,
    models_dir: Path,
    batch_size: int,
    threads: int,
    device: str,
    repeats: int,
    min_calls: int,
    min_seconds: float,
) -> Section:
    """onnxruntime against PyTorch eager on the same model (the ONNX file's variant, loaded from
    ``models_dir``), the same batch of ``batch_size`` windows and the same threads: clips/s, p50/p99
    batch latency, and the parity of their logits."""
    classifier = Classifier.load(onnx_path, providers=providers(device), intra_op_threads=threads)
    if device == "cuda" and CUDA_PROVIDER not in classifier.providers:
        raise Unavailable(f"onnxruntime runs {onnx_path} on {', '.join(classifier.providers)}, not CUDA")
    module = load_classifier(models_dir / classifier.metadata.variant, device).waveform_classifier()
    window_s, rate_hz = classifier.window_seconds, classifier.sample_rate_hz
    windows, _ = even_windows(chirps(batch_size * window_s, rate_hz, seed=1), rate_hz, window_s, window_s)
    batch = windows[:batch_size]  # (B, S): the first batch_size windows, end to end
    tensor = torch.from_numpy(batch).to(device)

    def torch_logits() -> np.ndarray:
        with torch.inference_mode():
            logits = module(tensor)  # (B, C)
        sync(tensor.device)
        out: np.ndarray = logits.float().cpu().numpy()
        return out

    def ort_logits() -> np.ndarray:
        return classifier.logits(batch)

    reference, candidate = torch_logits(), ort_logits()  # also the warm-up calls
    max_abs, top1 = compare(reference, candidate)
    max_rel = max_abs / logit_scale(reference)
    rounds = interleaved(
        {
            "onnxruntime": functools.partial(call_latencies, ort_logits, min_calls, min_seconds),
            "pytorch": functools.partial(call_latencies, torch_logits, min_calls, min_seconds),
        },
        repeats,
    )
    sides = {side: _latency_summary(latencies, batch_size) for side, latencies in rounds.items()}
    speedup = sides["onnxruntime"]["clips_per_s"] / sides["pytorch"]["clips_per_s"]
    work = {} if device == "cuda" else one_thread_cpu_ms(onnx_path, torch_logits, batch, repeats)
    result: dict[str, Any] = {
        "model": str(onnx_path),
        "variant": classifier.metadata.variant,
        "device": device,
        "providers": classifier.providers,
        "threads": threads,
        "batch_size": batch_size,
        **sides,
        "ort_over_torch": speedup,
        **work,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "parity_digits": -math.log10(max(max_rel, 1e-16)),
        "top1_agreement": top1,
    }
    table = Table(
        f"exported model ({classifier.metadata.variant}) on {device}: batch {batch_size}, {threads} threads; "
        f"parity {result['parity_digits']:.1f} digits (max |diff| / scale {max_rel:.1e}), top-1 {top1:.3f}",
        ("", "onnxruntime", "pytorch eager", "ort / torch"),
    )
    table.rows.append(
        (
            "clips/s",
            fmt(sides["onnxruntime"]["clips_per_s"]),
            fmt(sides["pytorch"]["clips_per_s"]),
            ratio(speedup),
        )
    )
    for key, label in (("p50_ms", "p50 batch ms"), ("p99_ms", "p99 batch ms")):
        ort_ms, torch_ms = sides["onnxruntime"][key], sides["pytorch"][key]
        table.rows.append((label, fmt(ort_ms, 2), fmt(torch_ms, 2), ratio(ort_ms / torch_ms)))
    if work:
        ort_ms, torch_ms = work["cpu_ms_1_thread"]["onnxruntime"], work["cpu_ms_1_thread"]["pytorch"]
        table.rows.append(
            ("CPU ms a batch, 1 thread", fmt(ort_ms, 1), fmt(torch_ms, 1), ratio(torch_ms / ort_ms))
        )
    return Section(result, (table,))


def one_thread_cpu_ms(
    onnx_path: Path, torch_logits: Callable[[], np.ndarray], batch: np.ndarray, repeats: int
) -> dict[str, Any]:
    """CPU milliseconds of one batch on one thread (median of ``repeats`` interleaved calls), each
    side: the work a call costs, which a machine shared with other jobs does not inflate as it does
    the wall time of two threads waiting for each other. ``ort_over_torch_1_thread`` is torch's CPU
    time over onnxruntime's."""
    classifier = Classifier.load(onnx_path, providers=[CPU_PROVIDER], intra_op_threads=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        classifier.logits(batch), torch_logits()  # the first one-thread calls
        rounds = interleaved(
            {
                "onnxruntime": lambda: cpu_seconds(lambda: classifier.logits(batch)),
                "pytorch": lambda: cpu_seconds(torch_logits),
            },
            repeats,
        )
    finally:
        torch.set_num_threads(threads)
    cpu_ms = {side: 1000 * median(seconds) for side, seconds in rounds.items()}
    return {"cpu_ms_1_thread": cpu_ms, "ort_over_torch_1_thread": cpu_ms["pytorch"] / cpu_ms["onnxruntime"]}


def models_section(
    models: dict[str, tuple[Path, Path]],
    batch_size: int,
    threads: int,
    repeats: int,
    min_calls: int,
    min_seconds: float,
) -> Section:
    """:func:`model_section` on the CPU for each variant's ``(model.onnx, models folder)``, and a
    summary table of the ratios."""
    done = {
        name: model_section(onnx, folder, batch_size, threads, "cpu", repeats, min_calls, min_seconds)
        for name, (onnx, folder) in models.items()
    }
    summary = Table(
        f"onnxruntime / PyTorch eager per variant: batch {batch_size}; clips/s on {threads} threads, "
        "and CPU time a batch on 1 thread",
        (
            "variant",
            "ort clips/s",
            "torch clips/s",
            f"ort / torch ({threads} threads)",
            "ort / torch (1 thread CPU)",
        ),
    )
    for name, section in done.items():
        r = section.result
        summary.rows.append(
            (
                name,
                fmt(r["onnxruntime"]["clips_per_s"]),
                fmt(r["pytorch"]["clips_per_s"]),
                ratio(r["ort_over_torch"]),
                ratio(r["ort_over_torch_1_thread"]),
            )
        )
    tables = tuple(t for section in done.values() for t in section.tables)
    return Section({"variants": {name: s.result for name, s in done.items()}}, (*tables, summary))


def _latency_summary(rounds: list[list[float]], batch_size: int) -> dict[str, Any]:
    """Median over rounds of clips/s, and p50/p99 of every call's latency pooled over the rounds."""
    pooled = [s for latencies in rounds for s in latencies]
    return {
        "calls": [len(latencies) for latencies in rounds],
        "clips_per_s": median([batch_size * len(latencies) / sum(latencies) for latencies in rounds]),
        "p50_ms": 1000 * percentile(pooled, 0.5),
        "p99_ms": 1000 * percentile(pooled, 0.99),
    }
