"""`birdops convert-checkpoint`: a hub checkpoint with only pytorch_model.bin, made loadable safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import ASTConfig, ASTForAudioClassification
from worlds import model_params

from birdops.cli import main as birdops
from birdops.models.convert import ConvertError, convert_checkpoint
from birdops.models.factory import build_model
from birdops.models.pretrained import PretrainedError, load_pretrained

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
AST = model_params()


def pickled_checkpoint(directory: Path) -> ASTForAudioClassification:
    """A tiny AST saved in the hub's legacy layout: ``config.json`` and ``pytorch_model.bin`` (the
    ``torch.save`` of its state dict), with no safetensors, as many hub checkpoints are."""
    torch.manual_seed(0)
    hf = ASTForAudioClassification(
        ASTConfig(**TINY, num_mel_bins=128, max_length=100, num_labels=5, attn_implementation="eager")
    ).eval()
    directory.mkdir(parents=True, exist_ok=True)
    hf.config.save_pretrained(directory)
    torch.save(hf.state_dict(), directory / "pytorch_model.bin")
    return hf


def test_a_pickled_checkpoint_converts_and_loads_with_the_same_outputs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ast-pickled"
    hf = pickled_checkpoint(checkpoint)
    model = build_model(AST, num_classes=3, n_bins=128, n_frames=100).eval()
    with pytest.raises(PretrainedError, match=f"birdops convert-checkpoint {checkpoint}"):
        load_pretrained(model, str(checkpoint))

    assert birdops(["convert-checkpoint", str(checkpoint)]) == 0
    converted = load_file(str(checkpoint / "model.safetensors"))
    assert converted.keys() == hf.state_dict().keys()
    load_pretrained(model, str(checkpoint))
    features = torch.randn(2, 128, 100)  # (B, F, T), the checkpoint's own length: no adaptation
    with torch.no_grad():
        ours = model.backbone(input_values=features.transpose(1, 2)).pooler_output
        theirs = hf.audio_spectrogram_transformer(input_values=features.transpose(1, 2)).pooler_output
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        # and transformers reads the converted folder, safetensors only, to the same logits
        reread = ASTForAudioClassification.from_pretrained(checkpoint, use_safetensors=True).eval()
        torch.testing.assert_close(
            reread(features.transpose(1, 2)).logits, hf(features.transpose(1, 2)).logits
        )
    with pytest.raises(ConvertError, match="already exists"):
        convert_checkpoint(checkpoint)


class RunsCode:
    """What a hostile checkpoint pickles: unpickling it calls ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    checkpoint = tmp_path / "hostile"
    checkpoint.mkdir()
    marker = tmp_path / "the-pickle-ran"
    weights = checkpoint / "pytorch_model.bin"
    torch.save({"layer.weight": torch.zeros(2), "layer.extra": RunsCode(marker)}, weights)
    with pytest.raises(
        ConvertError, match=r"refused: .*nothing it names was run .*GLOBAL posix\.mkdir"
    ) as err:
        convert_checkpoint(checkpoint)
    assert "weights_only=False" not in str(err.value)
    assert birdops(["convert-checkpoint", str(checkpoint)]) == 1
    assert not marker.exists() and not (checkpoint / "model.safetensors").exists()
    # the payload is real: an unrestricted load runs it
    torch.load(weights, weights_only=False)
    assert marker.is_dir()


def test_what_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"no pytorch_model\.bin"):
        convert_checkpoint(tmp_path)
    torch.save({"step": 3, "weights": [torch.zeros(1)]}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConvertError, match="not a state dict"):
        convert_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(ConvertError, match="refused: it is not a plain state dict"):
        convert_checkpoint(tmp_path)
