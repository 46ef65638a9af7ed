from pathlib import Path

import pytest

from birdops.config import VARIANTS, Params, ParamsError, TrainParams, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_real_params_yaml_loads_every_section() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.data.raw == "data/synthetic"
    for name in VARIANTS:
        assert isinstance(params.variant(name), TrainParams)
    assert params.train_phase2b.model.arch == "vit"
    assert params.train_full.augment.mixup.enabled
    assert not params.train_baseline.augment.mixup.enabled


def test_params_are_frozen() -> None:
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ValueError, match="frozen"):
        params.train_full.batch_size = 3  # type: ignore[misc]


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train_full:\n  batch_sise: 8\n")
    with pytest.raises(ParamsError, match=r"train_full\.batch_sise"):
        load_params(path)


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  split:\n    val_fraction: 0.9\n")
    with pytest.raises(ParamsError, match=r"prepare\.split\.val_fraction = 0\.9"):
        load_params(path)


def test_cross_field_validation(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train_full:\n  batch_size: 8\n  effective_batch_size: 12\n")
    with pytest.raises(ParamsError, match="multiple of batch_size"):
        load_params(path)


def test_environment_overrides_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train_full:\n  batch_size: 16\n  epochs: 3\n")
    monkeypatch.setenv("BIRDOPS_SERVE_PORT", "8000")  # a serving setting: not a parameter, allowed
    assert load_params(path).train_full.batch_size == 16
    monkeypatch.setenv("BIRDOPS_TRAIN_FULL__BATCH_SIZE", "8")
    with pytest.raises(ParamsError, match=r"BIRDOPS_TRAIN_FULL__BATCH_SIZE.*-S train_full\.batch_size=8"):
        load_params(path)


def test_unknown_variant() -> None:
    with pytest.raises(KeyError, match="unknown variant"):
        Params().variant("nope")
