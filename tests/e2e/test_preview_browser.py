"""/preview rendered by headless Chromium against `gunicorn wsgi:app` started as `make run` starts it (the sample
catalog and batch output), with API_KEYS set: Basic auth lets the browser in, the cards and the Liquid are on the
page, and a screenshot is taken."""
from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import requests

from tests.e2e.conftest import Gunicorn, read_catalog
from tests.e2e.test_docs_browser import run_chromium
from tests.preview_page import PreviewPage
from tests.unit.test_views import sample_batch

KEY = "e2e-preview-key-0c7e5b3a1d9f6842"
USERS = ("user123", "Ana María")
NUM_RESULTS = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def start_sample_service(gunicorn_factory: Callable[..., Gunicorn]) -> Gunicorn:
    """The service as `make run` starts it, on the sample files, with an API key."""
    return gunicorn_factory(PERSONALIZE_CAMPAIGN_ARN=None, CATALOG_URI="sample/catalog.csv",
                            RECOMMENDATIONS_URI="sample/batch-output.json.out", API_KEYS=KEY, WEB_CONCURRENCY="1")


def preview_url(server: Gunicorn, with_key: bool = True) -> str:
    query = urlencode([*(("user_id", user) for user in USERS), ("num_results", NUM_RESULTS)])
    base = server.url.replace("http://", f"http://qa:{KEY}@") if with_key else server.url
    return f"{base}/preview?{query}"


def test_the_page_needs_the_key(gunicorn_factory: Callable[..., Gunicorn]) -> None:
    server = start_sample_service(gunicorn_factory)

    resp = requests.get(preview_url(server, with_key=False), timeout=10)

    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")  # so a browser asks for the key
    assert requests.get(preview_url(server, with_key=False), auth=("qa", KEY), timeout=10).status_code == 200


def test_chromium_shows_each_users_cards_and_the_liquid(gunicorn_factory: Callable[..., Gunicorn],
                                                       tmp_path: Path) -> None:
    server = start_sample_service(gunicorn_factory)
    catalog, batch = read_catalog(), sample_batch()

    page = PreviewPage(run_chromium(preview_url(server), tmp_path / "profile", "--dump-dom"))

    assert [user.user_id for user in page.users] == list(USERS)
    for user in page.users:
        rows = [catalog[item_id] for item_id in batch[user.user_id][:NUM_RESULTS]]
        assert [card.name for card in user.cards] == [row["NAME"] for row in rows]
        assert [card.image for card in user.cards] == [row["IMAGE_URL"] for row in rows]
        assert [float(card.price) for card in user.cards] == [float(row["PRICE"]) for row in rows]
        assert user.headers["X-Recommendations-Source"] == "batch"
    assert page.liquid == (f"{{% connected_content {server.url}/recommendations?user_id={{{{${{user_id}} | "
                           f"url_param_escape}}}}&num_results={NUM_RESULTS} :basic_auth recs :save recs %}}")
    assert page.scripts == 0

    screenshot = tmp_path / "preview.png"
    run_chromium(preview_url(server), tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,1600")
    png = screenshot.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    assert struct.unpack(">II", png[16:24]) == (1280, 1600)  # the IHDR chunk's width and height
