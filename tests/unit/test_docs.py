"""The README's settings table is the Settings class, field for field."""

from __future__ import annotations

from pathlib import Path

from gradserve.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_lists_every_setting_with_its_default_and_meaning() -> None:
    for name, field in Settings.model_fields.items():
        row = f"| `--{name.replace('_', '-')}` | `GRADSERVE_{name.upper()}` | `{field.default!r}` | {field.description} |"
        assert row in README, f"README settings table is out of date for {name}"


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
