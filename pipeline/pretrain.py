"""DVC stage ``pretrain``: the embedded stand-in for the AudioSet checkpoint (``birdops.train.pretrain``).

``python -m pipeline.pretrain --out models/pretrain --summary metrics/pretrain.json``. Writes an AST
pretrained on generated multi-label sound scenes in the Hugging Face layout (``config.json`` +
``model.safetensors``); ``train_baseline`` and ``train_full`` fine-tune it through
``model.pretrained``, the setting that points at ``MIT/ast-finetuned-audioset-10-10-0.4593`` on a GPU
runner. An interrupted run resumes from ``<out>/state/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from birdops.data.sounds import SOUND_CLASSES
from birdops.files import write_json_atomic
from birdops.train.pretrain import pretrain
from pipeline._common import setup, write_run_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary for metrics/")
    args = parser.parse_args(argv)
    params = setup().pretrain
    started = time.monotonic()
    result = pretrain(params, args.out)
    corpus = params.corpus
    stems = len(SOUND_CLASSES) * (corpus.stems_per_class + corpus.val_stems_per_class)
    write_json_atomic(
        args.summary,
        {
            "classes": len(SOUND_CLASSES),
            "clip_seconds": corpus.clip_seconds,
            "recordings": stems,  # single-class stems the scenes are mixed from (train + validation)
            "recordings_hours": round(stems * corpus.clip_seconds / 3600, 3),
            "scenes_seen": result.steps * params.batch_size,
            "steps": result.steps,
            "val_map": round(result.val_map, 4),
            "val_loss": round(result.val_loss, 4),
        },
    )
    write_run_record(
        "pretrain",
        {"wall_seconds": round(time.monotonic() - started, 3), "resumed_steps": result.resumed_steps},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
