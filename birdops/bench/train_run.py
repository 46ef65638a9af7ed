"""The time-boxed training run of ``birdops bench --sections growth``, a process of its own so that
its peak memory is its own (:mod:`birdops.bench.growth` runs it).

    python -m birdops.bench.train_run --variant full --prepared P --lms L --steps 24

It does what the training stage does before and during an epoch -- reads the cached train and
validation splits, fingerprints every clip, builds the variant's model (random weights: cost does not
depend on what they learnt), loader and optimizer -- then runs ``--steps`` optimizer steps of the
trainer's own ``train_epoch`` on the first batches of the epoch's order and one validation pass over
the whole validation split, and prints one JSON line of CPU seconds (every thread's) and counts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from birdops.config import VARIANTS, load_params
from birdops.train.data import load_train_data
from birdops.train.distributed import DistContext
from birdops.train.trainer import (
    Batch,
    deterministic_mode,
    evaluate,
    make_recipe,
    run_fingerprint,
    start_run,
    train_epoch,
    training_net,
)


def train_run(variant: str, prepared: Path, lms: Path, steps: int) -> dict[str, Any]:
    """Load, fingerprint, ``steps`` training steps and one validation pass of ``variant`` (its
    ``params.yaml`` section, from random weights); seconds of each part."""
    params = load_params("params.yaml").variant(variant)
    params = params.model_copy(update={"model": params.model.model_copy(update={"pretrained": None})})
    ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    marks = [time.process_time()]  # CPU seconds of the process (every thread), after each part
    data = load_train_data(prepared, lms, params.model.features, params)
    run_fingerprint(params, data, variant, 1)  # reads every clip, as a training run's start does
    marks.append(time.process_time())
    run = start_run(params, data, ctx)  # the trainer's own model, optimizer and loaders
    first = list(itertools.islice(iter(run.train_sampler), steps * params.batch_size))  # the epoch's first
    dataset = run.train_loader.dataset
    loader: DataLoader[Batch] = DataLoader(dataset, batch_size=params.batch_size, sampler=first)
    recipe = make_recipe(params, run.optimizer, len(data.labels), len(loader), ctx)  # over those steps
    net = training_net(run.model, params, ctx)
    with deterministic_mode(params.deterministic, ctx.device):
        marks.append(time.process_time())
        generator = torch.Generator().manual_seed(params.seed)
        train_epoch(net, loader, recipe, generator, ctx, 0, f"{variant} steps")
        marks.append(time.process_time())
        evaluate(run.model, run.val_loader, recipe.loss_fn, ctx, recipe.dtype)
        marks.append(time.process_time())
    load_s, build_s, train_s, val_s = (after - before for before, after in itertools.pairwise(marks))
    return {
        "variant": variant,
        "train_clips": len(data.train.labels),
        "val_clips": len(data.val.labels),
        "steps": len(loader),
        "samples": len(first),
        "load_cpu_s": load_s,  # reading and fingerprinting every clip of both splits
        "build_cpu_s": build_s,
        "train_cpu_s": train_s,
        "val_cpu_s": val_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birdops.bench.train_run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--lms", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(train_run(args.variant, args.prepared, args.lms, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
