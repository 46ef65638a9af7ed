"""The committed ``params.yaml`` for tests: its sections with a test's changes merged in, validated.

No parameter has a default in code (``birdops.config``), so a test starts from the repository's
``params.yaml`` and states only what it changes: ``section("lms_cache", clip_seconds=2.0, workers=1)``
is the ``lms_cache`` section with those two keys changed, as an ``LmsCacheParams``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from birdops.config import Params

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def committed() -> dict[str, Any]:
    """The committed ``params.yaml`` as plain data, a fresh copy on every call."""
    data: dict[str, Any] = yaml.safe_load(PARAMS_YAML.read_text())
    return data


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``: a mapping merged into a mapping key by key, any other value replaced."""
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        is_mappings = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = merged(old, value) if is_mappings else value  # type: ignore[arg-type]
    return out


def tree(**changes: Mapping[str, Any]) -> dict[str, Any]:
    """The committed ``params.yaml`` as data with ``changes`` (section name -> its changed keys)."""
    return merged(committed(), changes)


def write_params(path: Path, **changes: Mapping[str, Any]) -> Path:
    """Write the committed ``params.yaml`` with ``changes`` (as :func:`tree`) to ``path``."""
    path.write_text(yaml.safe_dump(tree(**changes), sort_keys=False))
    return path


def section(path: str, **changes: Any) -> Any:
    """The section at the dotted ``path`` (``"lms_cache"``, ``"train_full.model"``) of the committed
    ``params.yaml`` with ``changes`` merged in, validated as that section's model (``LmsCacheParams``,
    ``ModelParams``); typed ``Any`` because the model depends on ``path``."""
    model: type[BaseModel] = Params
    data: Any = committed()
    for name in path.split("."):
        field = model.model_fields.get(name)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise KeyError(f"{PARAMS_YAML}: no section {path!r}")
        model, data = annotation, data[name]
    return model.model_validate(merged(data, changes))
