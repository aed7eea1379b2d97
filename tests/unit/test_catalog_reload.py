"""A catalog reload that looks broken is refused and the last good catalog stays served (issue 12, item 3).

Through the app as it runs: the catalog file is rewritten as the issue's attack did, the reload is run
the way the background thread runs it, and the answers, the ERROR line and /metrics are checked.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from app import warm_up
from app.catalog.files import Reloadable
from app.components import components
from app.settings import ConfigError, Settings
from tests.conftest import SAMPLE_CATALOG, FakeRecommender
from tests.unit.test_metrics import scrape, value

LATE_ITEMS = ["1000", "1037", "1740"]  # 1740 sits after line 21, where the issue's cut fell


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.csv"
    shutil.copy(SAMPLE_CATALOG, path)
    return path


@pytest.fixture
def served(make_app: Callable[..., Flask], catalog_file: Path) -> Flask:
    app = make_app({"recommender": FakeRecommender({"u1": LATE_ITEMS})}, catalog_uri=str(catalog_file))
    warm_up(app)
    return app


def holder(app: Flask) -> Reloadable:
    return components(app).service.catalog


def rewrite(path: Path, data: bytes) -> None:
    """Replace the file and move its mtime on, so the reload sees a new version whatever the clock's resolution."""
    path.write_bytes(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def ids(app: Flask) -> list[str]:
    response = app.test_client().get("/recommendations?user_id=u1&num_results=3")
    assert response.status_code == 200
    return [item["id"] for item in response.get_json()]


def refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "reload refused" in r.getMessage()]


def unclosed_quote() -> bytes:
    lines = SAMPLE_CATALOG.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b",", b',"', 1)  # line 3's name opens a quote that never closes
    return b"\n".join(lines)


@pytest.mark.parametrize(("attack", "reason", "says"), [
    (lambda: SAMPLE_CATALOG.read_bytes()[:2500], "cut_off", "its last line, 21, is a row cut short"),
    (unclosed_quote, "cut_off", "a quote opened on line 3 is never closed"),
])
def test_the_issues_broken_files_never_replace_the_good_catalog(
    served: Flask, catalog_file: Path, caplog: pytest.LogCaptureFixture, attack: Callable[[], bytes], reason: str,
    says: str,
) -> None:
    good = holder(served)._value
    assert len(good) == 40 and ids(served) == LATE_ITEMS

    rewrite(catalog_file, attack())
    assert holder(served).refresh() is False

    assert holder(served)._value is good
    assert ids(served) == LATE_ITEMS
    [line] = refused_lines(caplog)
    assert says in line and str(catalog_file) in line and "usable items against 40 served" in line
    assert holder(served).last_error is not None and says in holder(served).last_error
    assert value(scrape(served.test_client()), "recs_source_reload_refused_total", source="catalog",
                 reason=reason) == 1


def test_a_refused_version_is_not_read_again_until_it_changes(
    served: Flask, catalog_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rewrite(catalog_file, SAMPLE_CATALOG.read_bytes()[:2500])
    assert holder(served).refresh() is False
    assert holder(served).refresh() is False  # the same broken file: one ERROR line, one count, no re-parse
    assert len(refused_lines(caplog)) == 1
    assert holder(served).last_error is not None  # still refused: readiness and logs keep saying so

    rewrite(catalog_file, SAMPLE_CATALOG.read_bytes().replace(b"Trail Running Shoes", b"Trail Shoes"))
    assert holder(served).refresh() is True
    assert holder(served)._value.items["1000"]["name"] == "Trail Shoes"
    assert holder(served).last_error is None


def test_a_reload_that_loses_more_than_the_setting_allows_is_refused(
    make_app: Callable[..., Flask], catalog_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app({"recommender": FakeRecommender({"u1": LATE_ITEMS})}, catalog_uri=str(catalog_file),
                   catalog_max_shrink="25%")
    warm_up(app)
    lines = SAMPLE_CATALOG.read_bytes().splitlines(keepends=True)
    rewrite(catalog_file, b"".join(lines[:30]))  # whole rows, 29 of 40 items: 27.5% fewer
    assert holder(app).refresh() is False
    assert len(holder(app)._value) == 40 and ids(app) == LATE_ITEMS
    [line] = refused_lines(caplog)
    assert "29 usable items against 40" in line and "CATALOG_MAX_SHRINK (25%)" in line
    assert value(scrape(app.test_client()), "recs_source_reload_refused_total", source="catalog",
                 reason="shrink") == 1

    rewrite(catalog_file, b"".join(lines[:31]))  # 30 of 40: 25% fewer, within the setting
    assert holder(app).refresh() is True
    assert len(holder(app)._value) == 30


def test_the_first_load_serves_a_file_with_skipped_rows_and_warns(
    make_app: Callable[..., Flask], catalog_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rewrite(catalog_file, SAMPLE_CATALOG.read_bytes()[:2500])
    app = make_app({"recommender": FakeRecommender({"u1": LATE_ITEMS})}, catalog_uri=str(catalog_file))
    warm_up(app)
    assert len(holder(app)._value) == 19  # nothing to compare with: the usable rows are served
    assert any(r.levelno == logging.WARNING and "skipped line 21" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("raw", "fraction"), [("50%", 0.5), ("0.25", 0.25), ("0", 0.0), ("100%", 1.0),
                                                ("1", 1.0), ("12.5%", 0.125)])
def test_catalog_max_shrink_takes_a_fraction_or_a_percentage(raw: str, fraction: float) -> None:
    settings = Settings.from_env({"CATALOG_URI": "c.csv", "RECOMMENDATIONS_URI": "b.json.out",
                                  "CATALOG_MAX_SHRINK": raw})
    assert settings.catalog_max_shrink == fraction


def test_catalog_max_shrink_defaults_to_half() -> None:
    assert Settings.from_env({"CATALOG_URI": "c.csv", "RECOMMENDATIONS_URI": "b.json.out"}).catalog_max_shrink == 0.5


@pytest.mark.parametrize("raw", ["150%", "2", "-0.1", "half", "50 %%"])
def test_catalog_max_shrink_out_of_range_is_refused_with_its_name(raw: str) -> None:
    with pytest.raises(ConfigError, match="CATALOG_MAX_SHRINK must be a fraction from 0 to 1"):
        Settings.from_env({"CATALOG_URI": "c.csv", "RECOMMENDATIONS_URI": "b.json.out", "CATALOG_MAX_SHRINK": raw})
