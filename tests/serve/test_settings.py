"""``birdops serve``'s settings written once: every field has its description, and README.md's table
of settings is exactly the one generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from birdops.serve import settings
from birdops.serve.settings import TABLE_END, TABLE_START, ServeSettings, settings_table, with_table

README = Path(__file__).resolve().parents[2] / "README.md"
REGENERATE = "python -m birdops.serve.settings --update README.md"


def test_every_setting_has_a_description_and_a_row() -> None:
    rows = settings_table().splitlines()
    assert rows[0] == "| environment variable | default | meaning |"
    assert len(rows) == 2 + len(ServeSettings.model_fields)
    for name, field in ServeSettings.model_fields.items():
        assert field.description, f"ServeSettings.{name} has no description"
        assert "|" not in field.description, f"ServeSettings.{name}'s description breaks the table"
    assert "| `BIRDOPS_SERVE_MAX_UPLOAD_BYTES` | `52428800` (50 MiB) | 413 for a larger upload" in rows[7]
    assert any(row.startswith("| `BIRDOPS_SERVE_MAX_CONNECTIONS` | unset |") for row in rows)


def test_the_readme_holds_the_generated_table() -> None:
    text = README.read_text()
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, (
        f"README.md needs one {TABLE_START} line"
    )
    assert with_table(text) == text, f"README.md's serve settings table is stale: run `{REGENERATE}`"


def test_the_table_is_printed_and_rewritten_between_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert settings.main(["--markdown"]) == 0
    assert capsys.readouterr().out == settings_table() + "\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{TABLE_START}\n| old |\n{TABLE_END}\nafter\n")
    assert settings.main(["--update", str(readme)]) == 0
    assert readme.read_text() == f"before\n{TABLE_START}\n{settings_table()}\n{TABLE_END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- serve-settings:start -->"):
        settings.main(["--update", str(readme)])
