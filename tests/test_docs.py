"""The README documents every option the CLI has."""

from __future__ import annotations

from pathlib import Path

from imagebuilder.config.tree import OPTIONS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lists_every_option() -> None:
    text = README.read_text()
    missing = [o.name for o in OPTIONS if f"`--{o.name}`" not in text]
    assert not missing, f"README lacks: {missing}"


def test_readme_quick_start_is_two_make_commands() -> None:
    text = README.read_text()
    assert "make image" in text and "make test" in text
