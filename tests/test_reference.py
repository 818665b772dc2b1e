"""docs/reference.md is generated from the parameter models and must be current."""

from __future__ import annotations

from pathlib import Path

from thresher.commands.reference import render
from thresher.scorers.registry import SCORERS
from thresher.selectors.registry import SELECTORS

ROOT = Path(__file__).resolve().parents[1]


def test_reference_page_is_current() -> None:
    page = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert page == render(), "docs/reference.md is stale: run `python -m thresher.commands.reference > docs/reference.md`"


def test_reference_lists_every_scorer_selector_and_key() -> None:
    page = render()
    for t in SCORERS:
        assert f"### scorer `{t}`" in page
    for t in SELECTORS:
        assert f"### selector `{t}`" in page
    assert "| `budget` |" in page and "| `shard_rows` |" in page and "| `master` |" in page
