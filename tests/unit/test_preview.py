"""GET /preview through the Flask test client: the cards, headers, Liquid and JSON of GET /recommendations for
each user id, the limit on ids, escaping of catalog data, the page's security headers and its keys.

The sample-path tests use make_app() with no services: the real batch recommender on the sample files, whose
answers and catalog rows are read here independently (tests/unit/test_views.py's readers).
"""
from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import FakeRecommender
from tests.preview_page import PreviewPage, UserSection
from tests.unit.test_views import sample_batch, sample_catalog

KEY = "preview-test-key-4d81a0f6c93e27b5"
FILTER_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/by-category"
LIQUID_USER_ID = "{{${user_id} | url_param_escape}}"


def page(client: FlaskClient, query: str | list[tuple[str, str]], status: int = 200, **kwargs: object) -> PreviewPage:
    resp = client.get("/preview", query_string=query if isinstance(query, str) else urlencode(query), **kwargs)
    assert resp.status_code == status, resp.get_data(as_text=True)[:2000]
    assert resp.mimetype == "text/html"
    return PreviewPage(resp.get_data(as_text=True))


def assert_cards_of(user: UserSection, ids: list[str]) -> None:
    """The section's cards are the sample catalog's items with these ids, in this order."""
    catalog = sample_catalog()
    assert [card.name for card in user.cards] == [catalog[i]["name"] for i in ids]
    assert [card.image for card in user.cards] == [catalog[i]["image"] for i in ids]
    assert [float(card.price) for card in user.cards] == [catalog[i]["price"] for i in ids]
    assert [card.url for card in user.cards] == [catalog[i]["url"] for i in ids]


@pytest.fixture
def sample_client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


def test_cards_headers_liquid_and_json_of_a_sample_user(sample_client: FlaskClient) -> None:
    expected = sample_batch()["user123"][:5]

    preview = page(sample_client, "user_id=user123&num_results=5")

    [user] = preview.users
    assert user.user_id == "user123" and user.error == ""
    assert_cards_of(user, expected)
    assert user.headers["X-Recommendations-Source"] == "batch"
    assert user.headers["X-Cache"] == "MISS"
    assert user.headers["Cache-Control"].startswith("private, max-age=")
    assert re.fullmatch(r"[0-9.]+ ms", user.headers["time taken"])
    assert [item["id"] for item in json.loads(user.json)] == expected
    assert preview.liquid == ("{% connected_content http://localhost/recommendations?user_id=" + LIQUID_USER_ID
                              + "&num_results=5 :save recs %}")
    assert ":basic_auth" not in preview.liquid  # API_KEYS is empty: the page and the service are open
    # The same code as the route, the same body (a batch answer is read from the batch store each time, never
    # copied into the answer cache: X-Cache stays MISS).
    resp = sample_client.get("/recommendations?user_id=user123&num_results=5")
    assert resp.headers["X-Cache"] == "MISS"
    assert resp.get_json() == json.loads(user.json)


def test_several_user_ids_from_the_url_or_the_text_area(sample_client: FlaskClient) -> None:
    batch = sample_batch()
    for query in ([("user_id", "user123"), ("user_id", "Ana María"), ("num_results", "3")],
                  [("user_id", "user123\r\nAna María\r\n\r\n"), ("num_results", "3")]):
        preview = page(sample_client, query)
        assert [user.user_id for user in preview.users] == ["user123", "Ana María"]
        for user in preview.users:
            assert_cards_of(user, batch[user.user_id][:3])


def test_more_than_20_user_ids_are_refused_without_asking(make_app: Callable[..., Flask],
                                                         fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}).test_client()

    preview = page(client, [("user_id", f"u{n}") for n in range(21)], status=400)

    assert preview.problem == "At most 20 user ids at a time; 21 were given."
    assert preview.users == [] and fake_recommender.calls == []
    assert len(page(client, [("user_id", f"u{n}") for n in range(20)]).users) == 20


def test_invalid_options_give_each_user_the_json_errors_message(sample_client: FlaskClient) -> None:
    query = "user_id=user123&num_results=500&filter=nope"
    message = sample_client.get(f"/recommendations?{query}").get_json()["error"]["message"]

    preview = page(sample_client, f"{query}&user_id=user456")

    assert [user.user_id for user in preview.users] == ["user123", "user456"]
    assert "num_results" in message and "Unknown filter 'nope'" in message
    for user in preview.users:
        assert user.cards == []
        assert user.error == f"400: {message}"
        assert json.loads(user.json)["error"]["code"] == "invalid_parameter"


def test_options_reach_the_source_and_the_liquid_calls_the_same(make_app: Callable[..., Flask],
                                                                fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}, filters=f"by-category={FILTER_ARN}",
                      link_query="utm_source=braze&utm_campaign={campaign}").test_client()
    query = [("user_id", "u1"), ("num_results", "2"), ("filter", "by-category"), ("campaign", "spring sale"),
             ("context_lines", "DEVICE=mobile phone\nTIME=morning"), ("filter_lines", "CATEGORY=footwear,apparel"),
             ("item_id", ""), ("format", "")]  # empty form fields are left out

    preview = page(client, query)

    options = fake_recommender.options[-1]
    assert options.filter_arn == FILTER_ARN and options.item_id is None
    assert options.context == (("DEVICE", "mobile phone"), ("TIME", "morning"))
    assert options.filter_values == (("CATEGORY", "footwear,apparel"),)
    [user] = preview.users
    assert [card.url for card in user.cards] == [item["url"] for item in json.loads(user.json)]
    assert all(card.url.endswith("?utm_source=braze&utm_campaign=spring%20sale") for card in user.cards)
    assert preview.liquid == (
        "{% connected_content http://localhost/recommendations?user_id=" + LIQUID_USER_ID
        + "&num_results=2&filter=by-category&campaign=spring%20sale&context.DEVICE=mobile%20phone"
        + "&context.TIME=morning&filter.CATEGORY=footwear%2Capparel :save recs %}")
    # Braze fills the user id: the URL then asks what the page asked, so the page's answer comes from the cache.
    url = preview.liquid.removeprefix("{% connected_content http://localhost").split(" :save ")[0]
    resp = client.get(url.replace(LIQUID_USER_ID, quote("u1", safe="")))
    assert resp.status_code == 200 and resp.get_json() == json.loads(user.json)
    assert resp.headers["X-Cache"] == "HIT" and len(fake_recommender.calls) == 1


def test_catalog_data_is_escaped_and_no_script_runs(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "ITEM_ID,NAME,PRICE,URL,IMAGE_URL\n"
        '1,<script>alert(1)</script>,9.50,javascript:alert(2),"x"" onerror=""alert(3)"\n'
        '2,"Boots ""</textarea><script>alert(4)</script>",20,https://shop.example.com/p/2?a=1&b=2,'
        "https://cdn.example.com/2.jpg\n", encoding="utf-8")
    fake = FakeRecommender({"<b>u</b>": ["1", "2"]})
    client = make_app({"recommender": fake}, catalog_uri=str(catalog)).test_client()

    resp = client.get("/preview", query_string=urlencode({"user_id": "<b>u</b>", "num_results": 2}))

    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "<script" not in html and "<b>u</b>" not in html and "</textarea><script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    preview = PreviewPage(html)
    assert preview.scripts == 0
    [user] = preview.users
    assert user.user_id == "<b>u</b>"
    names = ["<script>alert(1)</script>", 'Boots "</textarea><script>alert(4)</script>']
    assert [card.name for card in user.cards] == names
    # Neither a javascript: link nor an image that is not http(s) is made from catalog data.
    assert user.cards[0].url is None and user.cards[0].image is None
    assert user.cards[1].url == "https://shop.example.com/p/2?a=1&b=2"
    assert "alert(4)" in user.json and json.loads(user.json)[0]["name"] == "<script>alert(1)</script>"


def test_security_headers_allow_only_the_pages_own_style(sample_client: FlaskClient) -> None:
    resp = sample_client.get("/preview?user_id=user123")

    policy = dict(part.strip().split(" ", 1) for part in resp.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and "script-src" not in policy  # so no script at all
    assert {"https:", "http:"} <= set(policy["img-src"].split())  # the catalog's CDN
    assert policy["form-action"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"
    [nonce] = re.findall(r"<style nonce=\"([^\"]+)\">", resp.get_data(as_text=True))
    assert policy["style-src"] == f"'nonce-{nonce}'" and len(nonce) >= 16
    assert nonce not in sample_client.get("/preview").headers["Content-Security-Policy"]  # new for every page
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"  # the page's URL holds user ids
    assert resp.headers["Cache-Control"] == "no-store"


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"qa:{password}".encode()).decode("ascii")}


def test_a_key_is_needed_when_api_keys_is_set(make_app: Callable[..., Flask],
                                              fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}, api_keys=KEY).test_client()

    for headers in ({}, basic("wrong-key"), {"X-API-Key": "wrong-key"}):
        resp: TestResponse = client.get("/preview?user_id=u1", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")  # a browser asks for the key
        assert resp.get_json()["error"]["code"] == "unauthorized"
    assert fake_recommender.calls == []

    preview = page(client, "user_id=u1", headers=basic(KEY))
    assert [card.name for card in preview.users[0].cards][:3] == [
        sample_catalog()[i]["name"] for i in ("1000", "1037", "1074")]
    assert ":basic_auth recs :save recs %}" in preview.liquid
    assert page(client, "user_id=u1", headers={"X-API-Key": KEY}).users[0].cards


def test_item_id_alone_previews_related_items(make_app: Callable[..., Flask],
                                              fake_recommender: FakeRecommender) -> None:
    fake_recommender.answers["item:1000"] = ["1111", "1148"]
    client = make_app({"recommender": fake_recommender}).test_client()

    preview = page(client, "item_id=1000&num_results=2")

    [user] = preview.users
    assert [card.name for card in user.cards] == [sample_catalog()[i]["name"] for i in ("1111", "1148")]
    assert preview.liquid == ("{% connected_content http://localhost/recommendations?item_id=1000&num_results=2"
                              " :save recs %}")


def test_the_empty_form(sample_client: FlaskClient) -> None:
    preview = page(sample_client, "")
    assert preview.users == [] and LIQUID_USER_ID in preview.liquid


def test_the_openapi_document_describes_the_page(make_app: Callable[..., Flask]) -> None:
    spec = make_app(api_keys=KEY).test_client().get("/openapi.json").get_json()

    operation = spec["paths"]["/preview"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/html"}
    assert operation["security"] and "401" in operation["responses"]
    assert "at most 20" in operation["description"]


def test_allowed_cidrs_apply_to_the_page_too(make_app: Callable[..., Flask],
                                             fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}, allowed_cidrs="10.0.0.0/8").test_client()

    assert client.get("/preview?user_id=u1").status_code == 403  # the test client calls from 127.0.0.1
    assert client.get("/preview?user_id=u1", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert fake_recommender.calls == [("u1", 10)]
