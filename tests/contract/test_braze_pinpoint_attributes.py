"""Contract: a Pinpoint recommender's attributes in a Braze body, {{ recs.Title[0] }}, through the real service.

The configuration is created through /v1/recommenders as a Pinpoint user would; its role cannot be assumed
here (STS points at a closed port), so the answer comes from the popular items, which is also what shows
that a failing provider still renders an email.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import SAMPLE_CATALOG
from tests.contract.liquid_braze import BrazeEnvironment
from tests.contract.test_braze_liquid import body, last_call, run_service
from tests.e2e.conftest import Gunicorn

ADMIN_KEY = "contract-admin-key-0123456789ab"
CONFIGURATION = {
    "Name": "movies-email", "RecommendationsPerMessage": 3,
    "RecommendationProviderUri": "arn:aws:personalize:us-east-1:123456789012:campaign/movies",
    "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/RecommendationsReader",
    # Attributes come with a transformer (the reference allows them only then); its Lambda cannot be reached
    # here (AWS_ENDPOINT_URL_LAMBDA points at a closed port), so they come from the catalog.
    "RecommendationTransformerUri": "pinpoint-transformer", "Attributes": {"Title": "Title", "Category": "Category"},
}
PINPOINT_STYLE = """\
{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }}&recommender=RECOMMENDER\
&format=attributes :save recs %}
{%- if recs.Title.size == 0 %}{% abort_message('no recommendations') %}{% endif %}
Tonight: {{ recs.Title[0] }} ({{ recs.Category[0] }}), then {{ recs.Title[1] }} and {{ recs.Title[2] }}."""


def popular_rows(count: int) -> list[dict[str, str]]:
    """The catalog's most popular rows (lowest POPULARITY_RANK first), read with csv."""
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8-sig") as fh:
        return sorted(csv.DictReader(fh), key=lambda row: int(row["POPULARITY_RANK"]))[:count]


@pytest.fixture(scope="module")
def pinpoint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    db = tmp_path_factory.mktemp("recommenders") / "recs.sqlite3"
    yield from run_service(tmp_path_factory, "pinpoint", ADMIN_API_KEYS=ADMIN_KEY, RECOMMENDER_DB_PATH=str(db),
                           CATALOG_EXTRA_FIELDS="category", AWS_ENDPOINT_URL_STS="http://127.0.0.1:9",
                           AWS_ENDPOINT_URL_LAMBDA="http://127.0.0.1:9",
                           AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")


def test_pinpoint_style_attributes_render_in_braze(pinpoint_server: Gunicorn) -> None:
    created = requests.post(pinpoint_server.url + "/v1/recommenders", json=CONFIGURATION,
                            headers={"X-API-Key": ADMIN_KEY}, timeout=10)
    assert created.status_code == 201, created.text
    braze = BrazeEnvironment()

    rendered = braze.render_message(body(PINPOINT_STYLE, pinpoint_server, RECOMMENDER=created.json()["Id"]),
                                    user_id="user123")

    first, second, third = popular_rows(3)
    assert rendered == (f"\nTonight: {first['NAME']} ({first['CATEGORY']}), then {second['NAME']} "
                        f"and {third['NAME']}.")
    call = last_call(braze)
    assert call.status == 200
    # An object, so Braze adds its status: a template can guard on recs.__http_status_code__ too.
    assert call.value == {"Title": [r["NAME"] for r in (first, second, third)],
                          "Category": [r["CATEGORY"] for r in (first, second, third)], "__http_status_code__": 200}
