from pathlib import Path
from typing import Any

import pytest
import yaml
from params_yaml import committed, write_params
from pydantic import BaseModel

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


def unset_keys(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    """The dotted paths of ``model``'s fields (nested sections walked) that ``data`` does not set."""
    if not isinstance(data, dict):
        return [prefix.rstrip(".") or "<root>"]
    missing = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if name not in data:
            missing.append(f"{prefix}{name}")
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += unset_keys(annotation, data[name], f"{prefix}{name}.")
    return missing


def fields_with_defaults(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        if not field.is_required():
            found.append(f"{prefix}{name}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += fields_with_defaults(annotation, f"{prefix}{name}.")
    return found


def test_params_yaml_sets_every_field_and_no_field_has_a_default() -> None:
    assert unset_keys(Params, committed()) == []
    assert fields_with_defaults(Params) == []


def test_a_missing_key_fails_with_its_dotted_path(tmp_path: Path) -> None:
    data = committed()
    del data["train_full"]["epochs"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid parameters:")
    assert message.splitlines()[1:] == [
        "  train_full.epochs: Field required (set it in params.yaml: no parameter has a default)"
    ]


def test_a_missing_section_fails_with_its_name(tmp_path: Path) -> None:
    data = committed()
    del data["evaluate"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ParamsError, match=r"\n  evaluate: Field required"):
        load_params(path)


def test_params_are_frozen() -> None:
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ValueError, match="frozen"):
        params.train_full.batch_size = 3  # type: ignore[misc]


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    path = write_params(tmp_path / "params.yaml", train_full={"batch_sise": 8})
    with pytest.raises(ParamsError, match=r"train_full\.batch_sise"):
        load_params(path)


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    path = write_params(tmp_path / "params.yaml", prepare={"split": {"val_fraction": 0.9}})
    with pytest.raises(ParamsError, match=r"prepare\.split\.val_fraction = 0\.9"):
        load_params(path)


def test_cross_field_validation(tmp_path: Path) -> None:
    path = write_params(tmp_path / "params.yaml", train_full={"batch_size": 8, "effective_batch_size": 12})
    with pytest.raises(ParamsError, match="multiple of batch_size"):
        load_params(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"splits": ["val", "test", "val"]}, "count must hold one entry for each"),
        ({"count": {"val": 8, "test": 12, "train": 2}}, "count must hold one entry for each"),
        ({"event_seconds": [8.0, 2.0]}, "event_seconds must be"),
        ({"background_only_share": 0.98}, "leave room for one event"),
        ({"crossfade_seconds": 3.0}, "twice crossfade_seconds"),
    ],
)
def test_soundscapes_cross_field_validation(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        load_params(write_params(tmp_path / "params.yaml", soundscapes=changes))


def test_environment_overrides_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_params(tmp_path / "params.yaml", train_full={"batch_size": 16, "epochs": 3})
    monkeypatch.setenv("BIRDOPS_SERVE_PORT", "8000")  # a serving setting: not a parameter, allowed
    assert load_params(path).train_full.batch_size == 16
    monkeypatch.setenv("BIRDOPS_TRAIN_FULL__BATCH_SIZE", "8")
    with pytest.raises(ParamsError, match=r"BIRDOPS_TRAIN_FULL__BATCH_SIZE.*-S train_full\.batch_size=8"):
        load_params(path)


def test_unknown_variant() -> None:
    with pytest.raises(KeyError, match="unknown variant"):
        load_params(ROOT / "params.yaml").variant("nope")
