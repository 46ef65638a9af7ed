import subprocess
import sys
from pathlib import Path

from birdops.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "birdops"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "predict" in result.stdout


def test_ci_runs_the_readme_commands() -> None:
    """.ci/run must run the README's own set-up and test commands, so green CI means the README works."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = readme.split("```")[1::2]
    commands = [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip()]
    assert commands, "README has no quickstart commands"
    for command in commands:
        assert command in ci, f".ci/run does not run the README command {command!r}"
