"""No response carries a file path or URI from the settings: callers get a sentence, the log gets the detail."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import FakeRecommender


def assert_no_path(body: str, *paths: Path) -> None:
    for path in paths:
        assert str(path) not in body and path.name not in body, body


def test_a_catalog_that_never_loaded(make_app: Callable[..., Flask], tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    catalog = tmp_path / "secret-folder" / "catalog.csv"
    client = make_app({"recommender": FakeRecommender()}, catalog_uri=str(catalog)).test_client()
    for url in ("/recommendations?user_id=u1", "/readyz"):
        response = client.get(url)
        assert response.status_code == 503
        assert_no_path(response.get_data(as_text=True), catalog, catalog.parent)
    assert "catalog_unavailable" in client.get("/recommendations?user_id=u1").get_data(as_text=True)
    assert str(catalog) in caplog.text
    logged = [r for r in caplog.records if r.name == "app.errors" and str(catalog) in r.getMessage()]
    assert len(logged) == 1  # the detail once, not once per request


def test_a_batch_output_that_never_loaded(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    batch = tmp_path / "secret-folder" / "batch.json.out"
    client = make_app(recommendations_uri=str(batch)).test_client()  # the batch file is the source
    for url in ("/recommendations?user_id=user123", "/readyz"):
        response = client.get(url)
        assert_no_path(response.get_data(as_text=True), batch, batch.parent)
    assert client.get("/readyz").status_code == 503
