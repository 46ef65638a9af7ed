"""The model factory, safetensors checkpoints and the waveform classifier, on tiny models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig
from worlds import model_params, spec_of_shape

from birdops.config import ModelParams
from birdops.contracts import ClassifierInfo
from birdops.features.frontend import build_frontend, spec_for
from birdops.models.checkpoint import load_classifier, save_classifier
from birdops.models.classifier import WaveformClassifier, WaveformEmbedder
from birdops.models.factory import ASTClassifier, ViTClassifier, ast_config, build_model, is_head

AST = model_params()
VIT = model_params("vit", "mfcc")


def info_for(cfg: ModelParams, n_bins: int, n_frames: int, labels: tuple[str, ...]) -> ClassifierInfo:
    info = ClassifierInfo(
        variant="test",
        model=cfg.model_dump(),
        labels=labels,
        feature_preset=cfg.features,
        feature_spec=spec_of_shape(cfg.features, n_bins, n_frames),
        clip_seconds=4.0,
        best_epoch=2,
        best_metric="val_accuracy",
        best_value=0.5,
        epochs_run=3,
    )
    assert info.shape.features == (n_bins, n_frames)
    return info


@pytest.mark.parametrize(("cfg", "n_bins", "n_frames"), [(AST, 128, 173), (VIT, 40, 173), (AST, 64, 40)])
def test_forward_maps_features_to_logits(cfg: ModelParams, n_bins: int, n_frames: int) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=7, n_bins=n_bins, n_frames=n_frames)
    logits = model(torch.randn(3, n_bins, n_frames))
    assert logits.shape == (3, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("cfg", "n_bins", "n_frames"), [(AST, 128, 173), (VIT, 40, 173)])
def test_the_embedding_is_what_the_final_linear_layer_reads_and_the_logits_stay_bit_identical(
    cfg: ModelParams, n_bins: int, n_frames: int
) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=7, n_bins=n_bins, n_frames=n_frames).eval()
    features = torch.randn(3, n_bins, n_frames)
    with torch.no_grad():
        logits, embedding = model.forward_with_embedding(features)
        # the computation from before the embedding was exposed: the whole head on the pooled vector
        if isinstance(model, ASTClassifier):
            pooled = model.backbone(input_values=features.transpose(1, 2)).pooler_output  # cls/dist mean
            before = model.classifier(pooled)
            expected_embedding = model.classifier.layernorm(pooled)  # what classifier.dense reads
            final = model.classifier.dense
        else:
            assert isinstance(model, ViTClassifier)
            image = F.pad(features, model.pad).unsqueeze(1)
            cls = model.backbone(pixel_values=image).last_hidden_state[:, 0]  # after the final LayerNorm
            before, expected_embedding, final = model.classifier(cls), cls, model.classifier
        assert torch.equal(model(features), before) and torch.equal(logits, before)
        assert torch.equal(embedding, expected_embedding)
        assert torch.equal(final(embedding), logits)  # logits = embedding @ W.T + b
    assert embedding.shape == (3, 64)  # the tiny size's hidden size


@pytest.mark.parametrize(("cfg", "n_bins"), [(AST, 128), (VIT, 40)])
def test_the_noise_floor_takes_each_bins_quantile_over_the_frames_away(cfg: ModelParams, n_bins: int) -> None:
    """With ``noise_floor_quantile`` the model reads each bin less its quantile over the clip's frames: a
    steady sound added to a bin (a constant over the frames) leaves the logits as they were; the median
    of 173 frames is the 87th smallest. Without it, the same sound changes the logits."""
    torch.manual_seed(0)
    floored = build_model(cfg.model_copy(update={"noise_floor_quantile": 0.5}), 7, n_bins, 173).eval()
    plain = build_model(cfg, 7, n_bins, 173).eval()
    plain.load_state_dict(floored.state_dict())  # the floor has no weights: the same model otherwise
    features = torch.randn(3, n_bins, 173)
    steady = 3.0 * torch.rand(1, n_bins, 1)  # a hum in every bin, its own level each
    median = features.median(dim=-1, keepdim=True).values
    assert torch.equal(floored.above_floor(features), features - median)
    assert torch.equal(plain.above_floor(features), features)
    with torch.no_grad():
        torch.testing.assert_close(floored(features + steady), floored(features), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(floored(features), plain(features - median), rtol=1e-5, atol=1e-5)
        assert (plain(features + steady) - plain(features)).abs().max() > 1e-2
    low = build_model(cfg.model_copy(update={"noise_floor_quantile": 0.1}), 7, n_bins, 173)
    tenth = features.sort(dim=-1).values[..., 17:18]  # round(0.1 * 172) = 17: the 18th smallest
    assert torch.equal(low.above_floor(features), features - tenth)


def test_ast_uses_the_real_frame_count_and_the_stride() -> None:
    model = build_model(AST, num_classes=5, n_bins=128, n_frames=173)
    assert isinstance(model, ASTClassifier)
    assert model.config.max_length == 173  # never padded to AudioSet's 1024
    assert model.config.frequency_stride == model.config.time_stride == 10
    assert model.config._attn_implementation == "eager"
    # cls + dist + a 12 x 16 grid of 16x16 patches every 10 bins/frames
    f_dim, t_dim = (128 - 16) // 10 + 1, (173 - 16) // 10 + 1
    assert model.backbone.embeddings.position_embeddings.shape == (1, 2 + f_dim * t_dim, 64)


def test_ast_patches_run_along_frequency_then_time() -> None:
    # 64 bins x 40 frames and 40 x 64 both give 15 patches: only the conv's output grid tells them apart
    model = build_model(AST, num_classes=2, n_bins=64, n_frames=40)
    assert isinstance(model, ASTClassifier)
    shapes = []
    projection = model.backbone.embeddings.patch_embeddings.projection
    projection.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    model(torch.randn(1, 64, 40))
    assert shapes == [(1, 64, (64 - 16) // 10 + 1, (40 - 16) // 10 + 1)]  # (B, H, f_dim, t_dim)


def test_vit_pads_to_whole_patches_instead_of_dropping_coefficients() -> None:
    model = build_model(VIT, num_classes=4, n_bins=40, n_frames=173)
    assert isinstance(model, ViTClassifier)
    assert tuple(model.config.image_size) == (40, 176)  # patch 8: 173 frames -> 22 patches
    assert model.config.num_channels == 1
    assert model.backbone.embeddings.position_embeddings.shape == (1, 1 + 5 * 22, 64)
    # the last frame matters: it is inside a patch, not cropped
    x = torch.randn(1, 40, 173)
    y = x.clone()
    y[..., -1] += 5.0
    model.eval()
    assert not torch.allclose(model(x), model(y))


@pytest.mark.parametrize("cfg", [AST, VIT])
def test_head_is_named_classifier_and_everything_else_is_backbone(cfg: ModelParams) -> None:
    model = build_model(cfg, num_classes=6, n_bins=40, n_frames=64)
    names = [name for name, _ in model.named_parameters()]
    head = [n for n in names if is_head(n)]
    assert head and all(n.startswith("classifier.") for n in head)
    assert all(n.startswith("backbone.") for n in names if not is_head(n))
    # the head's last linear layer outputs one logit per class
    assert [p.shape[0] for n, p in model.named_parameters() if is_head(n) and n.endswith("bias")][-1] == 6


def test_sizes_scale_up_to_the_audioset_architecture() -> None:
    base = model_params(size="base")
    config = ast_config(base, num_classes=527, n_bins=128, n_frames=1024)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.intermediate_size == 3072


def test_build_model_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(AST, num_classes=1, n_bins=128, n_frames=173)
    with pytest.raises(ValueError, match="at least 16 bins"):
        build_model(AST, num_classes=3, n_bins=8, n_frames=173)


@pytest.mark.parametrize(
    ("cfg", "n_bins"), [(AST, 64), (VIT, 40), (AST.model_copy(update={"noise_floor_quantile": 0.25}), 64)]
)
def test_checkpoint_round_trip_gives_the_same_logits(tmp_path: Path, cfg: ModelParams, n_bins: int) -> None:
    torch.manual_seed(1)
    model = build_model(cfg, num_classes=3, n_bins=n_bins, n_frames=50).eval()
    info = info_for(cfg, n_bins, 50, ("a b", "c d", "e f"))
    save_classifier(tmp_path, model, info)

    saved = load_classifier(tmp_path, with_frontend=False)
    loaded, loaded_info = saved.model, saved.info
    assert loaded_info == info and saved.frontend is None
    assert not loaded.training
    assert loaded.noise_floor_quantile == cfg.noise_floor_quantile
    x = torch.randn(2, n_bins, 50)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["labels"] == ["a b", "c d", "e f"]
    hf = PretrainedConfig.from_json_file(str(tmp_path / "config.json"))  # as Hugging Face tools read it
    assert hf.id2label == {0: "a b", 1: "c d", 2: "e f"} and hf.label2id == {"a b": 0, "c d": 1, "e f": 2}
    assert config["model"]["arch"] == cfg.arch
    assert (config["n_bins"], config["n_frames"], config["clip_seconds"]) == (n_bins, 50, 4.0)


def test_loading_never_fetches_the_pretrained_source(tmp_path: Path) -> None:
    cfg = AST.model_copy(update={"pretrained": str(tmp_path / "nowhere")})
    model = build_model(cfg, num_classes=2, n_bins=32, n_frames=32)
    save_classifier(tmp_path / "m", model, info_for(cfg, 32, 32, ("x", "y")))
    saved = load_classifier(tmp_path / "m", with_frontend=False)
    loaded, info = saved.model, saved.info
    assert info.model_params.pretrained == str(tmp_path / "nowhere")
    assert isinstance(loaded, ASTClassifier)


def read_info_of(config: dict[str, object], directory: Path) -> ClassifierInfo:
    (directory / "config.json").write_text(json.dumps(config))
    return load_classifier(directory, with_frontend=False).info


def test_loading_is_strict_and_configs_are_checked(tmp_path: Path) -> None:
    model = build_model(AST, num_classes=2, n_bins=32, n_frames=32)
    save_classifier(tmp_path, model, info_for(AST, 32, 32, ("x", "y")))
    config = json.loads((tmp_path / "config.json").read_text())
    older = {k: v for k, v in config.items() if k not in ("id2label", "label2id")}  # as saved before them
    assert load_classifier(tmp_path, with_frontend=False).info == read_info_of(older, tmp_path)
    # saved before the noise floor existed: its model reads the features as they are
    model_before = {k: v for k, v in config["model"].items() if k != "noise_floor_quantile"}
    assert read_info_of({**config, "model": model_before}, tmp_path).model_params == AST
    assert load_classifier(tmp_path, with_frontend=False).model.noise_floor_quantile is None
    (tmp_path / "config.json").write_text(json.dumps({**older, "labels": ["x", "y", "z"]}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_classifier(tmp_path, with_frontend=False)
    (tmp_path / "config.json").write_text(json.dumps({**config, "surprise": 1}))
    with pytest.raises(ValueError, match="surprise"):
        load_classifier(tmp_path, with_frontend=False)


class FramingFrontEnd(nn.Module):
    """A stand-in front end: (B, S) -> (B, F, T) by cutting the waveform into F rows."""

    def __init__(self, n_bins: int) -> None:
        super().__init__()
        self.n_bins = n_bins

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform.reshape(waveform.shape[0], self.n_bins, -1)


def test_waveform_classifier_is_front_end_then_model() -> None:
    model = build_model(AST, num_classes=4, n_bins=32, n_frames=40).eval()
    frontend = FramingFrontEnd(32)
    classifier = WaveformClassifier(frontend, model).eval()
    waveform = torch.randn(2, 32 * 40)
    logits = classifier(waveform)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits, model(frontend(waveform)), rtol=0, atol=0)
    with torch.no_grad():
        pair = classifier.forward_with_embedding(waveform)
        traced = WaveformEmbedder(classifier)(waveform)  # what the ONNX export traces
        expected = model.forward_with_embedding(frontend(waveform))
    for got in (pair, traced):
        assert torch.equal(got[0], logits.detach()) and torch.equal(got[1], expected[1])
    assert dict(WaveformEmbedder(classifier).named_children()) == dict(classifier.named_children())


def test_a_saved_model_runs_behind_its_own_front_end(tmp_path: Path) -> None:
    spec = spec_for("mfcc")
    model = build_model(VIT, num_classes=3, n_bins=40, n_frames=44).eval()  # a 1 s clip
    info = dataclasses.replace(info_for(VIT, 40, 173, ("a", "b", "c")), feature_spec=spec, clip_seconds=1.0)
    assert info.shape.features == (40, 44)
    save_classifier(tmp_path, model, info)
    saved = load_classifier(tmp_path)
    classifier, loaded = saved.waveform_classifier(), saved.info
    assert loaded == info and not classifier.training
    waveform = torch.randn(2, 22050) * 0.1
    with torch.no_grad():
        expected = model(build_frontend("mfcc")(waveform))
        torch.testing.assert_close(classifier(waveform), expected, rtol=0, atol=0)


def test_a_changed_front_end_is_refused(tmp_path: Path) -> None:
    spec = spec_for("mfcc")
    model = build_model(VIT, num_classes=2, n_bins=40, n_frames=44)  # a 1 s clip
    stale = dataclasses.replace(spec, f_min_hz=300.0)
    info = dataclasses.replace(info_for(VIT, 40, 173, ("a", "b")), feature_spec=stale, clip_seconds=1.0)
    save_classifier(tmp_path, model, info)
    with pytest.raises(ValueError, match="retrain"):
        load_classifier(tmp_path)
    save_classifier(tmp_path, model, dataclasses.replace(info, feature_spec=spec))
    with pytest.raises(ValueError, match="without its front end"):
        load_classifier(tmp_path, with_frontend=False).waveform_classifier()
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_frames": 45}))  # not a 1 s clip's
    with pytest.raises(ValueError, match=r"input shape \(40, 45\) is not its feature spec's"):
        load_classifier(tmp_path)


def test_labels_other_than_the_models_are_refused(tmp_path: Path) -> None:
    model = build_model(AST, num_classes=2, n_bins=32, n_frames=32)
    save_classifier(tmp_path, model, info_for(AST, 32, 32, ("x", "y")))
    with pytest.raises(ValueError, match="labels that differ"):
        load_classifier(tmp_path, with_frontend=False, labels=("x", "y", "z"))
    assert load_classifier(tmp_path, with_frontend=False, labels=["x", "y"]).info.labels == ("x", "y")


@pytest.mark.slow
def test_a_saved_model_is_the_same_bytes_from_any_process(tmp_path: Path) -> None:
    """DVC hashes the model folder: saving the same weights in two processes must give one file
    (safetensors writes its metadata map in each process's hash order)."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from birdops.config import ModelParams\n"
        "import dataclasses\n"
        "from birdops.contracts import ClassifierInfo\n"
        "from birdops.features.frontend import spec_for\n"
        "from birdops.models.checkpoint import save_classifier\n"
        "from birdops.models.factory import build_model\n"
        "cfg = ModelParams(arch='vit', size='tiny', features='mfcc', pretrained=None, dropout=0.0,"
        " patch_stride=10, noise_floor_quantile=None)\n"
        "torch.manual_seed(0)\n"
        "model = build_model(cfg, 3, 40, 50)\n"
        "info = ClassifierInfo(variant='v', model=cfg.model_dump(), labels=('a', 'b', 'c'),"
        " feature_preset='mfcc', clip_seconds=4.0, feature_spec=dataclasses.replace("
        "spec_for('mfcc'), sample_rate_hz=4900, hop_length_samples=400))\n"
        "save_classifier(sys.argv[1], model, info)\n"
    )
    for name in ("one", "two"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, capture_output=True)
    first, second = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("one", "two"))
    assert first == second


@pytest.mark.parametrize(("cfg", "n_bins"), [(AST, 64), (VIT, 40)])
def test_sdpa_trained_weights_load_into_the_eager_model(
    tmp_path: Path, cfg: ModelParams, n_bins: int
) -> None:
    """Training may run PyTorch's SDPA kernels; the saved model rebuilds with eager attention (what
    evaluation and the ONNX export trace) and gives the same logits."""
    torch.manual_seed(2)
    sdpa = build_model(cfg, num_classes=3, n_bins=n_bins, n_frames=50, attention="sdpa")
    assert sdpa.backbone.config._attn_implementation == "sdpa"
    optimizer = torch.optim.AdamW(sdpa.parameters(), lr=1e-2)
    x, y = torch.randn(6, n_bins, 50), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):  # move the weights away from their initialisation
        optimizer.zero_grad()
        nn.functional.cross_entropy(sdpa(x), y).backward()
        optimizer.step()
    sdpa.eval()
    save_classifier(tmp_path, sdpa, info_for(cfg, n_bins, 50, ("a b", "c d", "e f")))

    saved = load_classifier(tmp_path, with_frontend=False)
    eager, info = saved.model, saved.info
    assert eager.backbone.config._attn_implementation == "eager"
    assert "attention" not in info.model  # the kernel is a training setting, not the architecture
    with torch.no_grad():
        torch.testing.assert_close(eager(x), sdpa(x), rtol=1e-5, atol=1e-5)
