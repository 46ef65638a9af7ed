"""The ``birdops`` command. Each subcommand lives in its own module and is imported only when used,
so ``birdops predict``, ``birdops serve`` and ``birdops segments`` never import torch."""

from __future__ import annotations

import importlib
import logging
import sys

# subcommand -> (module with a `main(argv: list[str]) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("birdops.data.fetch", "download recordings and metadata from the xeno-canto API v3"),
    "predict": ("birdops.serve.predict", "classify audio files with an exported ONNX model"),
    "serve": ("birdops.serve.app", "serve an exported ONNX model over HTTP"),
    "segments": ("birdops.serve.segments", "cut the audio of detections into short clips to review"),
    "report": ("birdops.evaluate.report", "compare model variants side by side"),
    "experiments": ("birdops.evaluate.experiments", "run a plan of DVC experiments, write their tables"),
    "bench": ("birdops.bench.main", "measure cache, model, predict and training throughput on this machine"),
    "convert-checkpoint": (
        "birdops.models.convert",
        "write model.safetensors from a checkpoint's pytorch_model.bin, refusing pickled code",
    ),
    "pull": ("birdops.remote", "dvc pull, naming the outputs whose data the DVC remote lacks"),
}


def usage() -> str:
    lines = ["usage: birdops COMMAND [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n'birdops COMMAND --help' describes a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"birdops: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
