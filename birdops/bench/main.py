"""``birdops bench``: measure the feature cache, the exported model, ``birdops predict`` and training
on this machine, each comparison side by side in one run; print the tables and write them as JSON.

    birdops bench [--quick] [--sections cache,model,predict,train,cuda] [--out runs/bench.json]
        [--raw DIR --prepared DIR] [--model model.onnx --models DIR] [--repeats 3] [--threads N]
    birdops bench --sections growth [--scales 1,4,16] [--growth-steps 24]
    birdops bench --sections cuda [--cuda-batches 32,64,128] [--frames 398,1024] [--no-gpu-profile]

Inputs are built from ``params.yaml`` in a temporary work folder (``birdops.bench.inputs``) unless
given: ``--raw``/``--prepared`` name an existing corpus for the cache, ``--model``/``--models`` an
exported model and the folder of the variant it names. ``--quick`` is a CI-sized run (a 16-recording
corpus, a 30 s recording, two training steps). The ``cuda`` section runs only where torch sees a GPU
(it is skipped, saying so, elsewhere): the base AST's training steps (eager, SDPA, SDPA compiled at
each of ``--cuda-batches``, the largest batch that fits), onnxruntime's CUDA provider against
PyTorch, ``birdops predict`` on the GPU, and one epoch of the GPU profile (:mod:`birdops.bench.gpu`).
``growth`` (:mod:`birdops.bench.growth`, not in the default set: about an hour at 1x, 4x and 16x on 2
cores) runs every stage on generated corpora of ``--scales`` times the default.
The JSON is a timing record of this machine: not a DVC output, not under ``metrics/``. A section that
fails (a command exits with an error) is recorded with its reason and the others still run; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
import yaml

from birdops.bench import cache, cuda, gpu, growth, inputs, model, predict, train
from birdops.bench.common import BenchError, Section, Unavailable, failed, run_section
from birdops.config import VARIANTS, Params, load_params
from birdops.contracts import BEST_METRICS, MODEL_FILE
from birdops.files import write_json_atomic
from birdops.serve.predict import BATCH_SIZE as PREDICT_BATCH_SIZE

log = logging.getLogger(__name__)

SECTIONS = ("cache", "model", "predict", "train", "cuda")  # the default set
MODEL_BATCH_SIZE = 16  # windows a call in the model and cuda sections (predict: its own default)
OPT_IN = ("growth",)  # run only when named
# libraries whose INFO lines describe their own internals (the ONNX exporter's passes)
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; ``--quick`` swaps in the CI-sized set."""

    recordings: int  # of the generated corpus subset
    species: int
    recording_seconds: float  # of the long recording birdops predict classifies
    train_steps: int  # per round, after one untimed pass of as many
    min_calls: int  # model calls per round
    min_seconds: float  # seconds of model calls per round
    cuda_max_batch: int  # the search for the largest batch stops here


FULL = Sizes(
    recordings=120,
    species=20,
    recording_seconds=3600.0,
    train_steps=8,
    min_calls=10,
    min_seconds=2.0,
    cuda_max_batch=4096,
)
QUICK = Sizes(
    recordings=16,
    species=4,
    recording_seconds=30.0,
    train_steps=2,
    min_calls=3,
    min_seconds=0.2,
    cuda_max_batch=256,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="birdops bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (seconds, not minutes)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {','.join(SECTIONS + OPT_IN)} (default: all but {','.join(OPT_IN)})",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench.json"), help="JSON file to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--raw", type=Path, help="an existing raw corpus for the cache (with --prepared)")
    parser.add_argument("--prepared", type=Path, help="its prepared folder (manifest.csv, labels.json)")
    parser.add_argument("--model", type=Path, help="an exported model.onnx (with --models)")
    parser.add_argument("--models", type=Path, help="the folder holding the ONNX file's variant")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        help="model to build (default: every variant for model, metrics/best.json's for the others)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for both runtimes")
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"windows per model call (default: {MODEL_BATCH_SIZE} for model and cuda, birdops predict's "
        f"own, {PREDICT_BATCH_SIZE}, for predict)",
    )
    parser.add_argument("--recording-seconds", type=float, help="length of predict's recording")
    parser.add_argument(
        "--frames", default="", help="cuda: more clip lengths for the eager AST, e.g. 398,1024"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="cuda: leave out the compiled configurations"
    )
    parser.add_argument(
        "--cuda-batches", default="32,64,128", help="cuda: batches of the SDPA + compiled base AST"
    )
    parser.add_argument(
        "--no-gpu-profile",
        action="store_true",
        help="cuda: leave out the GPU profile's epoch (MIT-shaped checkpoint, ast preset)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep the built inputs here (default: a temporary folder)"
    )
    parser.add_argument("--scales", default="1,4,16", help="growth: corpus sizes, times the default")
    parser.add_argument("--growth-steps", type=int, default=24, help="growth: training steps a scale")
    args = parser.parse_args(argv)
    chosen = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(chosen) - set(SECTIONS + OPT_IN))
    if unknown or not chosen:
        parser.error(f"--sections: unknown {unknown or 'empty'}; choose from {','.join(SECTIONS + OPT_IN)}")
    try:
        args.scales = [int(factor) for factor in args.scales.split(",") if factor]
        args.cuda_batches = [int(batch) for batch in args.cuda_batches.split(",") if batch]
    except ValueError:
        parser.error(f"--scales, --cuda-batches: whole numbers, comma-separated, not {args.scales!r}")
    if not args.cuda_batches or min(args.cuda_batches) < 1:
        parser.error("--cuda-batches must be whole numbers >= 1")
    if not args.scales or min(args.scales) < 1 or args.growth_steps < 1:
        parser.error("--scales must be whole numbers >= 1, --growth-steps at least 1")
    if (args.raw is None) != (args.prepared is None) or (args.model is None) != (args.models is None):
        parser.error("give --raw with --prepared, and --model with --models")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.sections = chosen
    return args


@contextmanager
def work_folder(path: Path | None) -> Iterator[Path]:
    """``path`` (kept), or a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="birdops-bench-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Bench:
    """One run: the inputs it builds on demand (each at most once) and the sections it measured."""

    def __init__(self, args: argparse.Namespace, params: Params, sizes: Sizes, work: Path) -> None:
        self.args, self.params, self.sizes, self.work = args, params, sizes, work
        self.variant = args.variant or inputs.best_variant(Path(BEST_METRICS), "full")
        self.built: dict[str, Any] = {}

    def corpus(self) -> inputs.Corpus:
        if "corpus" not in self.built:
            if self.args.raw is not None:
                self.built["corpus"] = inputs.Corpus(self.args.raw, self.args.prepared)
            else:
                log.info(
                    "bench: generating %d recordings of %d species", self.sizes.recordings, self.sizes.species
                )
                self.built["corpus"] = inputs.corpus_subset(
                    self.params, self.sizes.recordings, self.sizes.species, self.work / "corpus"
                )
        corpus: inputs.Corpus = self.built["corpus"]
        return corpus

    def model(self, variant: str | None = None) -> tuple[Path, Path]:
        """``(model.onnx, models folder)``: given, or a seeded model of ``variant`` (default: the
        exported one, ``metrics/best.json``'s), exported as the stage does."""
        if self.args.model is not None:
            return self.args.model, self.args.models
        variant = variant or self.variant
        if variant not in self.built:
            labels = self.corpus().labels() if self.args.raw or "corpus" in self.built else self.species()
            models = self.work / "models"
            log.info("bench: building and exporting a %s model", variant)
            model_dir = inputs.saved_model(self.params, variant, labels, models)
            onnx_path = inputs.exported_model(
                model_dir, variant, self.params.export_onnx.opset, self.work / "export" / variant / MODEL_FILE
            )
            self.built[variant] = (onnx_path, models)
        built: tuple[Path, Path] = self.built[variant]
        return built

    def model_variants(self) -> list[str]:
        """The variants the ``model`` section compares: the given model's, ``--variant``'s, the
        exported one with ``--quick``, else every variant."""
        if self.args.model is not None or self.args.variant is not None or self.args.quick:
            return [self.variant]
        return list(VARIANTS)

    def species(self) -> tuple[str, ...]:
        return tuple(f"Species {i:02d}" for i in range(self.sizes.species))

    def measures(self) -> dict[str, Callable[[], Section]]:
        a, s, p = self.args, self.sizes, self.params
        has_gpu = torch.cuda.is_available()
        device = torch.device("cuda" if has_gpu else "cpu")
        classes = len(self.species()) if a.quick else p.data.synthetic.species
        variants = {name: p.variant(name) for name in VARIANTS}
        frames = [int(f) for f in a.frames.split(",") if f]
        model_batch = a.batch_size or MODEL_BATCH_SIZE

        def predict_on(device: str) -> Section:
            """``birdops predict`` on the long recording with ``device``'s provider."""
            recording_seconds = a.recording_seconds or s.recording_seconds
            batch_size = a.batch_size or PREDICT_BATCH_SIZE
            return predict.predict_section(
                self.model()[0], self.work, recording_seconds, batch_size, a.threads, device, a.repeats
            )

        def cuda_section() -> Section:
            if not has_gpu:
                raise Unavailable("no CUDA device")
            gpu_train = cuda.cuda_train_section(
                p.train_full,
                p.lms_cache.clip_seconds,
                classes,
                s.train_steps,
                a.repeats,
                frames,
                a.cuda_batches,
                s.cuda_max_batch,
                not a.no_compile,
            )
            ort_cuda = run_section(
                lambda: model.model_section(
                    *self.model(),
                    model_batch,
                    a.threads,
                    "cuda",
                    a.repeats,
                    s.min_calls,
                    s.min_seconds,
                )
            )
            predict_cuda = run_section(lambda: predict_on("cuda"))
            parts = {"train": gpu_train, "onnx": ort_cuda, "predict": predict_cuda}
            if not a.no_gpu_profile:
                parts["gpu_profile"] = run_section(
                    lambda: gpu.gpu_profile_section(
                        self.corpus(), p.lms_cache, p.train_full, self.work / "gpu"
                    )
                )
            return Section(
                {name: part.result for name, part in parts.items()},
                tuple(table for part in parts.values() for table in part.tables),
            )

        return {
            "cache": lambda: cache.cache_section(self.corpus(), p.lms_cache, self.work, a.repeats),
            "model": lambda: model.models_section(
                {name: self.model(name) for name in self.model_variants()},
                model_batch,
                a.threads,
                a.repeats,
                s.min_calls,
                s.min_seconds,
            ),
            "predict": lambda: predict_on("cpu"),
            "train": lambda: train.train_section(
                variants, p.lms_cache.clip_seconds, classes, s.train_steps, a.repeats, device
            ),
            "cuda": cuda_section,
            "growth": lambda: growth.growth_section(a.params, a.scales, self.work / "growth", a.growth_steps),
        }


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.perf_counter()
    params = load_params(args.params)
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "sizes": asdict(sizes),
        "repeats": args.repeats,
        "machine": machine(),
    }
    with work_folder(args.work_dir) as work:
        tree = yaml.safe_load(args.params.read_text())  # the cache stage reads it from its folder,
        tree["lms_cache"]["background_mix"]["copies"] = 0  # with no background recordings to mix in
        (work / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        bench = Bench(args, params, sizes, work)
        measures = bench.measures()
        results: dict[str, Any] = {}
        for name in args.sections:
            try:
                section = run_section(measures[name])
            except BenchError as err:  # recorded, and the other sections still run
                section = failed(str(err))
            results[name] = section.result
            for table in section.tables:
                print(f"\n{table.render()}", flush=True)
        report["variant"] = bench.variant
    report["sections"] = results
    report["wall_s"] = time.perf_counter() - started
    write_json_atomic(args.out, report)
    failures = [name for name, result in results.items() if "failed" in result]
    print(f"\nbirdops bench: {report['wall_s']:.1f} s; figures in {args.out}")
    if failures:
        print(f"birdops bench: failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0
