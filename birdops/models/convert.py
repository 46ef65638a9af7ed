"""``birdops convert-checkpoint DIR``: give a pickled Hugging Face checkpoint a ``model.safetensors``.

Many hub checkpoints (BirdSet's among them) ship their weights only as ``pytorch_model.bin``, a
pickle. :func:`birdops.models.pretrained.load_pretrained` reads safetensors only, because unpickling
runs whatever code the file names. This command reads the pickle once with
``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler, which builds tensors and plain
containers and refuses any other global (``os.system``, a class's ``__reduce__``) before calling it,
and writes the same tensors as ``model.safetensors`` beside it; ``config.json`` is left as it is, so the
folder then loads like any safetensors checkpoint::

    hf download OWNER/NAME --local-dir pretrained/NAME
    birdops convert-checkpoint pretrained/NAME
    dvc exp run -S train_full.model.pretrained=pretrained/NAME ...
"""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from birdops.contracts import WEIGHTS_FILE
from birdops.files import atomic_path

log = logging.getLogger(__name__)

PICKLED_WEIGHTS = "pytorch_model.bin"  # the hub's legacy weights file (torch.save of a state dict)


class ConvertError(RuntimeError):
    """The folder cannot be converted; the message says why."""


def convert_checkpoint(directory: str | Path) -> Path:
    """Write ``directory/model.safetensors`` from ``directory/pytorch_model.bin``; returns its path.

    Refuses (:class:`ConvertError`) a pickle that names anything but tensors and plain containers, a
    file that is not a state dict, and a folder that already has ``model.safetensors``.
    """
    directory = Path(directory)
    source, target = directory / PICKLED_WEIGHTS, directory / WEIGHTS_FILE
    if not source.is_file():
        raise ConvertError(f"{directory}: no {PICKLED_WEIGHTS} to convert")
    if target.exists():
        raise ConvertError(f"{target} already exists; remove it to convert {PICKLED_WEIGHTS} again")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConvertError(
            f"{source}: refused: it is not a plain state dict of tensors, and nothing it names was run "
            f"(the restricted unpickler stopped at: {_refusal(err)})"
        ) from err
    except (RuntimeError, OSError, EOFError) as err:
        raise ConvertError(f"{source}: not a PyTorch checkpoint: {err}") from err
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ConvertError(f"{source}: not a state dict (a mapping of names to tensors)")
    # each tensor its own contiguous copy: safetensors refuses tensors that share storage (tied weights)
    tensors = {str(name): tensor.detach().clone().contiguous() for name, tensor in state.items()}
    with atomic_path(target) as temp:
        save_file(tensors, str(temp), metadata={"format": "pt"})
    log.info("%s: %d tensors written from %s", target, len(tensors), PICKLED_WEIGHTS)
    return target


def _refusal(err: pickle.UnpicklingError) -> str:
    """What PyTorch's restricted unpickler refused (``unsupported GLOBAL posix.system``, ...), without
    the advice around it (to load with ``weights_only=False``, which is what must not be done)."""
    paragraphs = [part.strip() for part in str(err).split("\n\n") if part.strip()]
    details = [part for part in paragraphs[1:] if not part.startswith("Check the documentation")]
    return " ".join(details) or paragraphs[0]


def main(argv: list[str]) -> int:
    """``birdops convert-checkpoint DIR...``: 0 when every folder was converted."""
    parser = argparse.ArgumentParser(
        prog="birdops convert-checkpoint",
        description=f"Write model.safetensors from a Hugging Face checkpoint's {PICKLED_WEIGHTS}, "
        "reading it with torch.load(weights_only=True), which refuses pickled code.",
    )
    parser.add_argument("directories", nargs="+", type=Path, help="checkpoint folders (config.json + .bin)")
    args = parser.parse_args(argv)
    failed = 0
    for directory in args.directories:
        try:
            convert_checkpoint(directory)
        except ConvertError as err:
            log.error("%s", err)
            failed += 1
    return 1 if failed else 0
