"""The README documents what the code reads: every setting, and every parameter of GET /recommendations."""
from __future__ import annotations

from dataclasses import fields

from app.recommendations.query import RecommendationQuery
from app.settings import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme() -> None:
    assert [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in README] == []


def test_every_query_parameter_is_in_the_readme() -> None:
    names = [f.data_key or name for name, f in RecommendationQuery().fields.items()]
    assert [name for name in names if f"| `{name}` |" not in README] == []
