"""The HTTP contract of GET /recommendations, /healthz and /readyz, through the Flask test client.

Most tests run on the `app` fixture (FakeRecommender, sample catalog, a file cache of its own). The
sample catalog has a POPULARITY_RANK column, so short answers are backfilled with popular items and a
failing source falls back to them; `plain_client` uses the same catalog without that column, where the
body is exactly the recommender's ids joined to the catalog and a failure with no fallback is an error.
The sample-path tests build make_app() with no services: the real batch recommender on the sample files.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.caching.answers import AnswerCache, CachedAnswer, encode_answer
from app.components import components
from app.errors import InvalidParameterError, UpstreamError
from app.extensions import cache as cache_extension
from app.sources.recommender import NO_OPTIONS, Options, Recommendation
from tests.conftest import SAMPLE_BATCH, SAMPLE_CATALOG, FakeRecommender

ITEM_KEYS = {"id", "name", "url", "price", "image"}


# --------------------------------------------------------------------------------------------------
# helpers


def sample_catalog() -> dict[str, dict[str, Any]]:
    """The sample catalog as the service should serve it, read independently of app/catalog/items.py."""
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8") as fh:
        return {
            row["ITEM_ID"]: {
                "id": row["ITEM_ID"],
                "name": row["NAME"],
                "url": row["URL"],
                "price": float(row["PRICE"]) if row["PRICE"] else None,
                "image": row["IMAGE_URL"] or None,
            }
            for row in csv.DictReader(fh)
        }


def sample_popular() -> list[str]:
    """Sample catalog ids by POPULARITY_RANK, most popular first (the backfill and fallback order)."""
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [row["ITEM_ID"] for row in sorted(rows, key=lambda row: float(row["POPULARITY_RANK"]))]


def expected_ids(answer: list[str], num_results: int) -> list[str]:
    """The recommender's ids the catalog knows, in order, then the most popular others up to num_results."""
    catalog = sample_catalog()
    known = [i for i in answer[:num_results] if i in catalog]
    return known + [i for i in sample_popular() if i not in known][: max(0, num_results - len(known))]


def write_plain_catalog(path: Path) -> Path:
    """Copy the sample catalog without its popularity column: no backfill, no popular fallback."""
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["ITEM_ID", "NAME", "CATEGORY", "PRICE", "URL", "IMAGE_URL"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def sample_batch() -> dict[str, list[str]]:
    answers = {}
    for line in SAMPLE_BATCH.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            answers[record["input"]["userId"]] = record["output"]["recommendedItems"]
    return answers


def get(client: FlaskClient, **params: Any) -> TestResponse:
    return client.get("/recommendations", query_string=urlencode(params))


def assert_item_shape(item: Any) -> None:
    assert isinstance(item, dict)
    assert set(item) == ITEM_KEYS
    assert isinstance(item["id"], str) and item["id"]
    assert isinstance(item["name"], str)
    assert isinstance(item["url"], str)
    assert item["price"] is None or (isinstance(item["price"], (int, float)) and not isinstance(item["price"], bool))
    assert item["image"] is None or isinstance(item["image"], str)


def assert_error(resp: TestResponse, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """Assert the one JSON error shape; with param, that the error names exactly that parameter."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert set(error) == {"code", "status", "message", "errors"}
        assert set(error["errors"]) == {param}
        problems = error["errors"][param]
        assert isinstance(problems, list) and problems and all(isinstance(p, str) for p in problems)
        assert param in error["message"]
    return error


def max_age(resp: TestResponse) -> int:
    value = resp.headers["Cache-Control"]
    prefix = "private, max-age="
    assert value.startswith(prefix), value
    return int(value[len(prefix):])


def age_cached_answer(app: Flask, fake: FakeRecommender, user_id: str, num_results: int, seconds: float) -> None:
    """Make the stored answer `seconds` older, instead of sleeping."""
    answers = components(app).service.cache
    key = AnswerCache.key(fake.key, user_id, {"num_results": num_results})
    stored = answers.get(key)
    assert stored is not None
    answers.backend.set(key, encode_answer(CachedAnswer(stored.recommendation, stored.stored_at - seconds)),
                        timeout=answers.keep_seconds)


class PlainIdRecommender(FakeRecommender):
    """A FakeRecommender whose recommendation id does not echo the user id (Personalize's never does).

    FakeRecommender answers recommendation_id=f"rid-{user_id}", which the view copies into the
    X-Recommendation-Id header; a user id holding CR/LF would then fail in werkzeug's header check,
    an artefact of the fake, not of the service.
    """

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        answer = super().recommend(user_id, num_results, options)
        return Recommendation(answer.item_ids, recommendation_id="rid-fixed")


@pytest.fixture
def plain_catalog(tmp_path: Path) -> Path:
    return write_plain_catalog(tmp_path / "plain-catalog.csv")


@pytest.fixture
def plain_client(make_app: Callable[..., Flask], fake_recommender: FakeRecommender, plain_catalog: Path) -> FlaskClient:
    """The fake on the sample catalog minus POPULARITY_RANK: the answer is exactly the join, never padded."""
    return make_app({"recommender": fake_recommender}, catalog_uri=str(plain_catalog)).test_client()


@pytest.fixture
def sample_client(make_app: Callable[..., Flask]) -> FlaskClient:
    """The real batch recommender on sample/batch-output.json.out, no services replaced."""
    return make_app().test_client()


# --------------------------------------------------------------------------------------------------
# 200: the array of catalog items


def test_items_in_recommender_order_joined_to_catalog(
    plain_client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    resp = get(plain_client, user_id="u1")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body, list)
    catalog = sample_catalog()
    assert body == [catalog[i] for i in ["1000", "1037", "1074"]]
    for item in body:
        assert_item_shape(item)
    assert "X-Backfilled" not in resp.headers
    assert fake_recommender.calls == [("u1", 10)]


def test_sample_catalog_short_list_is_backfilled_with_popular_items(
    client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    """On sample/catalog.csv (which has POPULARITY_RANK) a short answer is padded to num_results."""
    resp = get(client, user_id="u1")

    assert resp.status_code == 200
    body = resp.get_json()
    catalog = sample_catalog()
    assert body[:3] == [catalog[i] for i in ["1000", "1037", "1074"]]  # the recommender's, first and in order
    assert [item["id"] for item in body] == expected_ids(["1000", "1037", "1074"], 10)
    assert len({item["id"] for item in body}) == len(body) == 10
    for item in body:
        assert_item_shape(item)
        assert item == catalog[item["id"]]
    assert resp.headers["X-Backfilled"] == "7"
    assert resp.headers["X-Recommendations-Source"] == "fake"


def test_order_is_the_recommenders_not_the_catalogs(
    plain_client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    fake_recommender.answers["rev"] = ["2443", "1518", "1000", "1740"]

    body = get(plain_client, user_id="rev").get_json()

    assert [item["id"] for item in body] == ["2443", "1518", "1000", "1740"]


def test_ids_unknown_to_catalog_are_dropped(plain_client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    fake_recommender.answers["u3"] = ["nope", "1000", "9999", "", "1037", "1000x"]

    resp = get(plain_client, user_id="u3")

    assert resp.status_code == 200
    body = resp.get_json()
    assert None not in body
    assert [item["id"] for item in body] == ["1000", "1037"]
    for item in body:
        assert_item_shape(item)


def test_ids_unknown_to_catalog_are_dropped_before_backfill(
    client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    fake_recommender.answers["u3"] = ["nope", "1000", "9999", "1037"]

    resp = get(client, user_id="u3", num_results=4)

    body = resp.get_json()
    assert None not in body
    assert [item["id"] for item in body] == expected_ids(["nope", "1000", "9999", "1037"], 4)
    assert [item["id"] for item in body][:2] == ["1000", "1037"]
    assert resp.headers["X-Backfilled"] == "2"


def test_user_without_recommendations_gets_empty_array_without_popularity(plain_client: FlaskClient) -> None:
    resp = get(plain_client, user_id="nobody")

    assert resp.status_code == 200
    assert resp.get_json() == []


def test_user_without_recommendations_gets_popular_items(client: FlaskClient) -> None:
    resp = get(client, user_id="nobody", num_results=5)

    assert resp.status_code == 200
    assert [item["id"] for item in resp.get_json()] == sample_popular()[:5]
    assert resp.headers["X-Backfilled"] == "5"


def test_num_results_defaults_to_10(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    fake_recommender.answers["many"] = list(sample_catalog())[:15]

    body = get(client, user_id="many").get_json()

    assert fake_recommender.calls == [("many", 10)]
    assert [item["id"] for item in body] == list(sample_catalog())[:10]


def test_configured_default_num_results_is_used(make_app: Callable[..., Flask]) -> None:
    fake = FakeRecommender({"many": list(sample_catalog())[:15], "u1": ["1000"]})
    client = make_app({"recommender": fake}, default_num_results=3).test_client()

    many = get(client, user_id="many").get_json()
    short = get(client, user_id="u1").get_json()

    assert fake.calls == [("many", 3), ("u1", 3)]
    assert [item["id"] for item in many] == list(sample_catalog())[:3]
    assert len(short) == 3  # backfilled to the configured default, not to 10


@pytest.mark.parametrize("num_results", [1, 2, 99, 100])
def test_num_results_in_range_is_accepted_and_passed_on(
    client: FlaskClient, fake_recommender: FakeRecommender, num_results: int
) -> None:
    fake_recommender.answers["many"] = list(sample_catalog())  # all 40 items

    resp = get(client, user_id="many", num_results=num_results)

    assert resp.status_code == 200
    assert fake_recommender.calls == [("many", num_results)]
    assert [item["id"] for item in resp.get_json()] == list(sample_catalog())[:num_results]


def test_extra_unknown_parameters_are_ignored(plain_client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    resp = plain_client.get(
        "/recommendations", query_string="utm_source=braze&user_id=u2&foo=&foo=bar&%FF=1&campaign[]=x"
    )

    assert resp.status_code == 200
    assert fake_recommender.calls == [("u2", 10)]
    assert [item["id"] for item in resp.get_json()] == ["1111", "1000"]


# --------------------------------------------------------------------------------------------------
# the sample path: the real batch recommender on the sample files


def test_sample_batch_recommendations(sample_client: FlaskClient) -> None:
    catalog, batch = sample_catalog(), sample_batch()
    expected = [catalog[i] for i in batch["user123"][:5] if i in catalog]

    resp = get(sample_client, user_id="user123", num_results=5)

    assert resp.status_code == 200
    assert len(expected) == 5 and resp.get_json() == expected
    assert resp.headers["X-Recommendations-Source"] == "batch"
    assert "X-Recommendation-Id" not in resp.headers  # batch output carries none
    assert resp.headers["X-Cache"] == "MISS"


def test_sample_unknown_user_gets_popular_items(sample_client: FlaskClient) -> None:
    resp = get(sample_client, user_id="not-in-the-batch-file")

    assert resp.status_code == 200
    assert [item["id"] for item in resp.get_json()] == sample_popular()[:10]
    assert resp.headers["X-Backfilled"] == "10"


def test_sample_default_returns_10(sample_client: FlaskClient) -> None:
    batch = sample_batch()

    body = get(sample_client, user_id="user456").get_json()

    assert [item["id"] for item in body] == expected_ids(batch["user456"], 10)


# --------------------------------------------------------------------------------------------------
# 400: bad parameters, named


BAD_PARAMETERS = [
    pytest.param("", "user_id", id="user_id-missing"),
    pytest.param("num_results=5", "user_id", id="user_id-missing-with-num_results"),
    pytest.param("user_id=", "user_id", id="user_id-empty"),
    pytest.param(urlencode({"user_id": "a" * 257}), "user_id", id="user_id-257-chars"),
    pytest.param(urlencode({"user_id": "\U0001F600" * 257}), "user_id", id="user_id-257-emoji"),
    pytest.param("user_id=a&user_id=b", "user_id", id="user_id-repeated"),
    pytest.param("user_id=a&user_id=a", "user_id", id="user_id-repeated-same"),
    pytest.param("user_id=u1&num_results=0", "num_results", id="num_results-0"),
    pytest.param("user_id=u1&num_results=101", "num_results", id="num_results-101"),
    pytest.param("user_id=u1&num_results=-1", "num_results", id="num_results-negative"),
    pytest.param("user_id=u1&num_results=abc", "num_results", id="num_results-abc"),
    pytest.param("user_id=u1&num_results=1.5", "num_results", id="num_results-1.5"),
    pytest.param("user_id=u1&num_results=", "num_results", id="num_results-empty"),
    pytest.param("user_id=u1&num_results=99999999999999999999999", "num_results", id="num_results-huge"),
    pytest.param("user_id=u1&num_results=1e2", "num_results", id="num_results-1e2"),
    pytest.param("user_id=u1&num_results=true", "num_results", id="num_results-true"),
    pytest.param("user_id=u1&num_results=5&num_results=6", "num_results", id="num_results-repeated"),
    # int() takes these; the API takes ASCII digits only (issue 12, item 8).
    pytest.param("user_id=u1&num_results=1_0", "num_results", id="num_results-underscore"),
    pytest.param("user_id=u1&num_results=%D9%A3", "num_results", id="num_results-arabic-indic-3"),
    pytest.param("user_id=u1&num_results=%EF%BC%93", "num_results", id="num_results-fullwidth-3"),
    pytest.param("user_id=u1&num_results=%C2%B2", "num_results", id="num_results-superscript-2"),
    pytest.param("user_id=u1&num_results=%202", "num_results", id="num_results-leading-space"),
    pytest.param("user_id=u1&num_results=2%20", "num_results", id="num_results-trailing-space"),
    pytest.param("user_id=u1&num_results=+2", "num_results", id="num_results-plus-as-space"),
    pytest.param("user_id=u1&num_results=%2B2", "num_results", id="num_results-plus-sign"),
    pytest.param("user_id=u1&num_results=2%0A", "num_results", id="num_results-newline"),
    # Not UTF-8 once percent-decoded: werkzeug keeps the bytes percent-encoded, so %ff would share an answer
    # with a user whose id is the text "%FF".
    pytest.param("user_id=%ff%fe", "user_id", id="user_id-not-utf8"),
    pytest.param("user_id=%fe%ff", "user_id", id="user_id-not-utf8-swapped"),
    pytest.param("user_id=%C3%28", "user_id", id="user_id-broken-sequence"),
    pytest.param("user_id=%ED%A0%80", "user_id", id="user_id-encoded-surrogate"),
    pytest.param("user_id=u1&item_id=a%C3", "item_id", id="item_id-truncated-sequence"),
    pytest.param("user_id=u1&filter.CATEGORY=%FF", "filter.CATEGORY", id="filter-value-not-utf8"),
]


@pytest.mark.parametrize(("query", "param"), BAD_PARAMETERS)
def test_bad_parameter_is_400_naming_it(
    client: FlaskClient, fake_recommender: FakeRecommender, query: str, param: str
) -> None:
    resp = client.get("/recommendations", query_string=query)

    assert_error(resp, 400, "invalid_parameter", param)
    assert fake_recommender.calls == []


def test_every_bad_parameter_is_named(client: FlaskClient) -> None:
    resp = client.get("/recommendations", query_string="user_id=&num_results=0")

    error = assert_error(resp, 400, "invalid_parameter")
    assert set(error["errors"]) == {"user_id", "num_results"}


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("a" * 256, id="256-ascii"),
        pytest.param("\U0001F600" * 256, id="256-emoji"),  # 256 characters, 1024 UTF-8 bytes
        pytest.param("\u00e9" * 256, id="256-accented"),
    ],
)
def test_user_id_of_256_characters_is_accepted(
    client: FlaskClient, fake_recommender: FakeRecommender, user_id: str
) -> None:
    resp = get(client, user_id=user_id)

    assert resp.status_code == 200
    assert fake_recommender.calls == [(user_id, 10)]


def test_num_results_with_leading_zeros_is_still_a_number(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    assert client.get("/recommendations", query_string="user_id=u1&num_results=002").status_code == 200
    assert fake_recommender.calls == [("u1", 2)]


def test_a_user_id_that_is_the_text_of_a_bad_escape_is_a_user(
    client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    """%25FF is the text "%FF", a valid id; %FF (one byte, not UTF-8) was answered as if it were the same id."""
    assert client.get("/recommendations", query_string="user_id=%25FF%25FE").status_code == 200
    assert_error(client.get("/recommendations", query_string="user_id=%FF%FE"), 400, "invalid_parameter", "user_id")
    assert fake_recommender.calls == [("%FF%FE", 10)]


def test_valid_utf8_and_an_escaped_replacement_character_are_accepted(
    client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    assert client.get("/recommendations", query_string="user_id=%C3%A9%EF%BF%BD").status_code == 200
    assert fake_recommender.calls == [("\u00e9\ufffd", 10)]


def test_raw_bytes_that_are_not_utf8_are_a_400_naming_the_parameter(
    client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    """Sent unescaped, such a byte made werkzeug fail to decode the whole query string (a 500)."""
    for query in ("user_id=\xff", "user_id=u1&utm_source=\xff"):
        resp = client.get("/recommendations", environ_overrides={"QUERY_STRING": query})
        assert_error(resp, 400, "invalid_parameter", query.rsplit("&", 1)[-1].split("=")[0])
    assert fake_recommender.calls == []


def test_a_rejected_query_is_not_remembered(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> None:
    """The parsed-query memo keys on the raw query string: a rejected one is rejected every time."""
    client = make_app({"recommender": fake_recommender}, cache_local_items=100).test_client()
    for _ in range(2):
        assert_error(client.get("/recommendations", query_string="user_id=%FF"), 400, "invalid_parameter", "user_id")
    assert fake_recommender.calls == []


NASTY_REQUESTS = [
    ("/recommendations", "user_id=%00"),
    ("/recommendations", "user_id=a%00b&num_results=%00"),
    ("/recommendations", "user_id=%FF"),
    ("/recommendations", "user_id=%C3%28"),
    ("/recommendations", "user_id=%ED%A0%80"),  # an encoded UTF-16 surrogate
    ("/recommendations", "user_id=%FF&num_results=%FF"),
    ("/recommendations", "%FF%FE=%FF&user_id=u1"),
    ("/recommendations", "user_id=%"),
    ("/recommendations", "user_id=100%"),
    ("/recommendations", "user_id=%zz%4"),
    ("/recommendations", "user_id=%0A"),
    ("/recommendations", "user_id=a%0D%0AX-Injected:%201"),
    ("/recommendations", "user_id=" + "a" * 100_000),
    ("/recommendations", "user_id=u1&num_results=" + "9" * 10_000),
    ("/recommendations", "pad=" + "x" * 100_000 + "&user_id=u1"),
    ("/recommendations", "&".join(f"p{i}={i}" for i in range(2000)) + "&user_id=u1"),
    ("/recommendations", "user_id=" + quote("\U0001F44D\U0001F3FD\u200d\u2640\ufe0f \u7528\u6237 \u30e6\u30fc\u30b6\u30fc")),
    ("/recommendations", "user_id=" + quote("\u202e\u200b\ufeff")),
    ("/recommendations", "user_id=\u00e9\u00e8"),  # raw, not percent-encoded
    ("/recommendations", "user_id[]=x"),
    ("/recommendations", "user_id[0]=x&user_id[1]=y"),
    ("/recommendations", "user_id=<script>alert(1)</script>"),
    ("/recommendations", "user_id=" + quote('"><img src=x onerror=alert(1)>')),
    ("/recommendations", "user_id={{7*7}}&num_results={{7*7}}"),
    ("/recommendations", "user_id=' OR 1=1 --"),
    ("/recommendations", "user_id=../../etc/passwd"),
    ("/recommendations", "user_id=u1&num_results=1e400"),
    ("/recommendations", "user_id=u1&num_results=NaN"),
    ("/recommendations", "user_id=u1&num_results=-0"),
    ("/recommendations", "user_id=u1&num_results=0x10"),
    ("/recommendations", "user_id=u1;num_results=5"),
    ("/recommendations", "&&&&=="),
    ("/recommendations", "user_id"),
    ("/recommendations", "user_id&num_results"),
    ("/recommendations/", "user_id=u1"),
    ("/recommendations%00", "user_id=u1"),
    ("/recommendations/../healthz", ""),
    ("/%FF", ""),
    ("/<script>", ""),
]


@pytest.mark.parametrize("which", ["fake", "sample"])
def test_no_input_gives_500(make_app: Callable[..., Flask], which: str) -> None:
    services = {"recommender": PlainIdRecommender({"u1": ["1000"]})} if which == "fake" else {}
    client = make_app(services).test_client()
    failures = []
    for path, query in NASTY_REQUESTS:
        resp = client.get(path, query_string=query)
        if resp.status_code >= 500 or resp.mimetype != "application/json" or resp.get_json(silent=True) is None:
            failures.append((path, query[:60], resp.status_code, resp.get_data(as_text=True)[:200]))
    assert failures == []


@pytest.mark.parametrize(
    "user_id",
    [
        "user 1",
        "a+b",
        "jane+tag@example.com",
        "jane@example.com",
        "\U0001F600 smile",
        "100%",
        "50%25off",
        "a&num_results=1",
        "x=y;z",
        "\u00fc/\u00df?#frag",
        "  padded  ",
    ],
)
def test_url_encoded_user_id_reaches_recommender_unchanged(
    client: FlaskClient, fake_recommender: FakeRecommender, user_id: str
) -> None:
    resp = client.get("/recommendations", query_string=urlencode({"user_id": user_id}))

    assert resp.status_code == 200
    assert fake_recommender.calls == [(user_id, 10)]


def test_raw_plus_in_query_means_space(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    """Braze does not URL-encode {{${user_id}}}: a '+' in an id arrives as a space (use url_param_escape)."""
    client.get("/recommendations", query_string="user_id=jane+tag@example.com")
    client.get("/recommendations", query_string="user_id=a%2Bb")

    assert fake_recommender.calls == [("jane tag@example.com", 10), ("a+b", 10)]


# --------------------------------------------------------------------------------------------------
# other errors, all in the one JSON shape


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/recommendations/extra"), 404, "not_found")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_json_with_allow(
    client: FlaskClient, fake_recommender: FakeRecommender, method: str
) -> None:
    resp = client.open("/recommendations?user_id=u1", method=method, data=b"{}")

    assert_error(resp, 405, "method_not_allowed")
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert "GET" in allowed and method not in allowed
    assert fake_recommender.calls == []


def test_upstream_error_without_popularity_answers_from_the_catalog_order(
    plain_client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    """No stale answer, the user not in the batch file, no popularity: the catalog's order, never a 503."""
    fake_recommender.error = UpstreamError(
        "Personalize is throttling requests.", code="upstream_throttled", status=503, retry_after=1
    )

    resp = get(plain_client, user_id="u1", num_results=3)

    assert resp.status_code == 200
    assert [item["id"] for item in resp.get_json()] == ["1000", "1037", "1074"]  # the catalog's first three
    assert resp.headers["X-Recommendations-Source"] == "fallback"
    assert resp.headers["X-Fallback-Reason"] == "upstream_throttled"
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("status", [502, 504])
def test_any_upstream_status_without_popularity_is_a_fallback(
    plain_client: FlaskClient, fake_recommender: FakeRecommender, status: int
) -> None:
    """The upstream's own status is not passed through: the service answers 200 from its last resort."""
    fake_recommender.error = UpstreamError("Personalize could not be reached.", code="upstream_x", status=status)

    resp = get(plain_client, user_id="u1")

    assert resp.status_code == 200 and len(resp.get_json()) == 10
    assert resp.headers["X-Fallback-Reason"] == "upstream_x"


def test_upstream_error_serves_popular_fallback(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    fake_recommender.error = UpstreamError(
        "Personalize is throttling requests.", code="upstream_throttled", status=503, retry_after=1
    )

    resp = get(client, user_id="u1", num_results=4)

    assert resp.status_code == 200
    assert [item["id"] for item in resp.get_json()] == sample_popular()[:4]
    assert resp.headers["X-Recommendations-Source"] == "fallback"
    assert resp.headers["X-Fallback-Reason"] == "upstream_throttled"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Cache"] == "MISS"
    assert "X-Recommendation-Id" not in resp.headers
    assert "Retry-After" not in resp.headers


def test_upstream_error_serves_batch_fallback_for_batch_users(
    plain_client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    fake_recommender.error = UpstreamError("down", code="upstream_unavailable")
    catalog, batch = sample_catalog(), sample_batch()

    resp = get(plain_client, user_id="user123", num_results=5)

    assert resp.status_code == 200
    assert resp.get_json() == [catalog[i] for i in batch["user123"][:5]]
    assert resp.headers["X-Recommendations-Source"] == "batch"
    assert resp.headers["X-Fallback-Reason"] == "upstream_unavailable"
    assert resp.headers["Cache-Control"] == "no-store"


def test_upstream_error_serves_stale_answer(
    make_app: Callable[..., Flask], fake_recommender: FakeRecommender, plain_catalog: Path
) -> None:
    app = make_app({"recommender": fake_recommender}, catalog_uri=str(plain_catalog), cache_ttl_seconds=60)
    client = app.test_client()
    fresh = get(client, user_id="u1")
    age_cached_answer(app, fake_recommender, "u1", 10, seconds=61)  # past the TTL, within the stale window
    fake_recommender.error = UpstreamError("down", code="upstream_unavailable")

    resp = get(client, user_id="u1")

    assert resp.status_code == 200
    assert resp.get_json() == fresh.get_json()
    assert resp.headers["X-Cache"] == "STALE"
    assert resp.headers["X-Recommendations-Source"] == "stale"
    assert resp.headers["X-Fallback-Reason"] == "upstream_unavailable"
    assert resp.headers["Cache-Control"] == "no-store"
    assert fake_recommender.calls == [("u1", 10), ("u1", 10)]


def test_expired_answer_is_not_a_hit(
    make_app: Callable[..., Flask], fake_recommender: FakeRecommender
) -> None:
    app = make_app({"recommender": fake_recommender}, cache_ttl_seconds=60)
    client = app.test_client()
    get(client, user_id="u1")
    age_cached_answer(app, fake_recommender, "u1", 10, seconds=61)

    resp = get(client, user_id="u1")

    assert resp.headers["X-Cache"] == "MISS"
    assert max_age(resp) == 60
    assert len(fake_recommender.calls) == 2


def test_errors_are_not_cached(plain_client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    fake_recommender.error = UpstreamError("down", code="upstream_unavailable")
    assert get(plain_client, user_id="u1").headers["X-Recommendations-Source"] == "fallback"
    fake_recommender.error = None

    resp = get(plain_client, user_id="u1")

    assert resp.status_code == 200
    assert resp.headers["X-Cache"] == "MISS"
    assert len(fake_recommender.calls) == 2


def test_fallbacks_are_not_cached(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    fake_recommender.error = UpstreamError("down", code="upstream_unavailable")
    assert get(client, user_id="u1").headers["X-Recommendations-Source"] == "fallback"
    fake_recommender.error = None

    resp = get(client, user_id="u1")

    assert resp.headers["X-Cache"] == "MISS"
    assert resp.headers["X-Recommendations-Source"] == "fake"
    assert len(fake_recommender.calls) == 2


def test_rejected_by_source_is_400_not_a_fallback(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    fake_recommender.error = InvalidParameterError("Personalize rejected the request: bad", code="rejected_by_personalize")

    assert_error(get(client, user_id="u1"), 400, "rejected_by_personalize")


SECRET = "db password hunter2 leaked"
LEAKS = ("Traceback", "hunter2", "RuntimeError", 'File "', ".py")


def test_recommender_crash_is_logged_and_served_from_fallback(
    client: FlaskClient, fake_recommender: FakeRecommender, caplog: pytest.LogCaptureFixture
) -> None:
    fake_recommender.error = RuntimeError(SECRET)

    with caplog.at_level(logging.ERROR):
        resp = get(client, user_id="u1")

    assert resp.status_code == 200
    assert resp.headers["X-Recommendations-Source"] == "fallback"
    assert resp.headers["X-Fallback-Reason"] == "internal_error"
    text = resp.get_data(as_text=True)
    assert not any(leak in text for leak in LEAKS)
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


def test_recommender_crash_without_popularity_is_a_fallback_without_traceback(
    plain_client: FlaskClient, fake_recommender: FakeRecommender, caplog: pytest.LogCaptureFixture
) -> None:
    fake_recommender.error = RuntimeError(SECRET)

    with caplog.at_level(logging.ERROR):
        resp = get(plain_client, user_id="u1")

    assert resp.status_code == 200 and resp.headers["X-Fallback-Reason"] == "internal_error"
    text = resp.get_data(as_text=True)
    assert not any(leak in text for leak in LEAKS)
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


def test_crash_in_the_request_path_is_500_json_without_traceback(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(components(app).service, "recommend", crash)

    with caplog.at_level(logging.ERROR):
        resp = get(client, user_id="u1")

    assert_error(resp, 500, "internal_error")
    text = resp.get_data(as_text=True)
    assert not any(leak in text for leak in LEAKS)
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# response headers


def test_cache_headers_miss_then_hit(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}, cache_ttl_seconds=120).test_client()

    first = get(client, user_id="u1")
    second = get(client, user_id="u1")

    assert first.headers["X-Cache"] == "MISS"
    assert max_age(first) == 120
    assert second.headers["X-Cache"] == "HIT"
    assert 0 <= max_age(second) <= 120
    for resp in (first, second):
        assert resp.status_code == 200
        assert resp.headers["X-Recommendations-Source"] == "fake"
        assert resp.headers["X-Recommendation-Id"] == "rid-u1"
    assert first.get_json() == second.get_json()


def test_default_max_age_is_the_default_ttl(client: FlaskClient) -> None:
    assert get(client, user_id="u1").headers["Cache-Control"] == "private, max-age=300"


def test_hit_max_age_counts_down(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> None:
    app = make_app({"recommender": fake_recommender}, cache_ttl_seconds=120)
    client = app.test_client()
    get(client, user_id="u1")
    age_cached_answer(app, fake_recommender, "u1", 10, seconds=50)

    resp = get(client, user_id="u1")

    assert resp.headers["X-Cache"] == "HIT"
    assert 68 <= max_age(resp) <= 70


# --------------------------------------------------------------------------------------------------
# caching semantics


def test_second_identical_request_does_not_call_recommender(
    client: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    get(client, user_id="u1")
    get(client, user_id="u1")
    get(client, user_id="u1", num_results=10)  # the default spelled out is the same request

    assert fake_recommender.calls == [("u1", 10)]


def test_users_never_share_an_entry(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    one = get(client, user_id="u1")
    two = get(client, user_id="u2")
    one_again = get(client, user_id="u1")

    assert fake_recommender.calls == [("u1", 10), ("u2", 10)]
    assert one.headers["X-Cache"] == two.headers["X-Cache"] == "MISS"
    assert one.get_json() != two.get_json()
    assert [i["id"] for i in two.get_json()][:2] == ["1111", "1000"]
    assert one_again.headers["X-Cache"] == "HIT"
    assert one_again.get_json() == one.get_json()
    assert two.headers["X-Recommendation-Id"] == "rid-u2"


@pytest.mark.parametrize(("first", "second"), [("u1", "U1"), ("u1", "u1 "), ("a b", "a+b"), ("1", "01")])
def test_near_identical_users_do_not_share_an_entry(
    client: FlaskClient, fake_recommender: FakeRecommender, first: str, second: str
) -> None:
    get(client, user_id=first)
    resp = get(client, user_id=second)

    assert resp.headers["X-Cache"] == "MISS"
    assert fake_recommender.calls == [(first, 10), (second, 10)]


def test_different_num_results_is_a_different_entry(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    two = get(client, user_id="u1", num_results=2)
    three = get(client, user_id="u1", num_results=3)
    two_again = get(client, user_id="u1", num_results=2)

    assert fake_recommender.calls == [("u1", 2), ("u1", 3)]
    assert three.headers["X-Cache"] == "MISS"
    assert len(two.get_json()) == 2 and len(three.get_json()) == 3
    assert two_again.headers["X-Cache"] == "HIT"
    assert two_again.get_json() == two.get_json()


def write_catalog(path: Path, price: str) -> None:
    path.write_text(
        "ITEM_ID,NAME,PRICE,URL,IMAGE_URL\n"
        f"1000,Shoes,{price},https://shop.example.com/p/1000,https://cdn.example.com/1000.jpg\n"
        "1037,Socks,5,https://shop.example.com/p/1037,\n"
        "1074,Jacket,,https://shop.example.com/p/1074,https://cdn.example.com/1074.jpg\n",
        encoding="utf-8",
    )


def test_catalog_change_shows_on_a_cache_hit(
    make_app: Callable[..., Flask], fake_recommender: FakeRecommender, tmp_path: Path
) -> None:
    """The cache holds the source's answer (ids), not the response: items are joined per request."""
    catalog_path = tmp_path / "catalog.csv"
    write_catalog(catalog_path, "10.00")
    app = make_app({"recommender": fake_recommender}, catalog_uri=str(catalog_path))
    client = app.test_client()

    first = get(client, user_id="u1")
    assert first.get_json() == [
        {"id": "1000", "name": "Shoes", "url": "https://shop.example.com/p/1000", "price": 10.0,
         "image": "https://cdn.example.com/1000.jpg"},
        {"id": "1037", "name": "Socks", "url": "https://shop.example.com/p/1037", "price": 5, "image": None},
        {"id": "1074", "name": "Jacket", "url": "https://shop.example.com/p/1074", "price": None,
         "image": "https://cdn.example.com/1074.jpg"},
    ]

    before = catalog_path.stat().st_mtime_ns
    write_catalog(catalog_path, "12345.50")
    os.utime(catalog_path, ns=(before + 2_000_000_000, before + 2_000_000_000))
    assert components(app).service.catalog.refresh() is True

    second = get(client, user_id="u1")
    assert second.headers["X-Cache"] == "HIT"
    assert second.get_json()[0]["price"] == 12345.5
    assert fake_recommender.calls == [("u1", 10)]


# --------------------------------------------------------------------------------------------------
# health checks and a missing catalog


def test_healthz(client: FlaskClient) -> None:
    resp = client.get("/healthz")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == {"status": "ok"}


def test_readyz_on_the_sample(sample_client: FlaskClient) -> None:
    resp = sample_client.get("/readyz")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["status"] == "ready"
    assert body["catalog_items"] == 40 == len(sample_catalog())
    assert body["source"] == "batch"


def test_readyz_with_the_fake(client: FlaskClient) -> None:
    resp = client.get("/readyz")

    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ready", "source": "fake", "catalog_items": 40, "breaker": "closed",
                               "last_error": None}


@pytest.fixture
def missing_catalog_app(make_app: Callable[..., Flask], fake_recommender: FakeRecommender, tmp_path: Path) -> Flask:
    return make_app({"recommender": fake_recommender}, catalog_uri=str(tmp_path / "missing" / "catalog.csv"))


def test_readyz_503_when_catalog_missing(missing_catalog_app: Flask) -> None:
    resp = missing_catalog_app.test_client().get("/readyz")

    assert resp.status_code == 503
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["status"] == "unavailable"
    assert "catalog" in body["reason"]


def test_healthz_ok_even_when_catalog_missing(missing_catalog_app: Flask) -> None:
    assert missing_catalog_app.test_client().get("/healthz").status_code == 200


def test_recommendations_503_when_catalog_missing(
    missing_catalog_app: Flask, fake_recommender: FakeRecommender
) -> None:
    client = missing_catalog_app.test_client()

    for _ in range(2):  # the first load attempt and the remembered failure
        assert_error(get(client, user_id="u1"), 503, "catalog_unavailable")
    assert fake_recommender.calls == []


# --------------------------------------------------------------------------------------------------
# the FileSystemCache default: shared by the workers of one host


def test_file_cache_is_shared_by_apps_on_one_cache_dir(make_app: Callable[..., Flask]) -> None:
    fake_a = FakeRecommender({"u1": ["1000", "1037"]})
    fake_b = FakeRecommender({"u1": ["9999"]})  # would answer differently if asked
    worker_a = make_app({"recommender": fake_a}).test_client()
    worker_b = make_app({"recommender": fake_b}).test_client()

    a = get(worker_a, user_id="u1")
    b = get(worker_b, user_id="u1")

    assert a.headers["X-Cache"] == "MISS"
    assert b.headers["X-Cache"] == "HIT"
    assert fake_b.calls == []
    assert b.get_json() == a.get_json()
    assert b.headers["X-Recommendation-Id"] == "rid-u1"


def test_file_cache_entries_are_per_source(make_app: Callable[..., Flask]) -> None:
    fake_a = FakeRecommender({"u1": ["1000"]}, key="campaign-a")
    fake_b = FakeRecommender({"u1": ["1037"]}, key="campaign-b")
    get(make_app({"recommender": fake_a}).test_client(), user_id="u1")

    resp = get(make_app({"recommender": fake_b}).test_client(), user_id="u1")

    assert resp.headers["X-Cache"] == "MISS"
    assert fake_b.calls == [("u1", 10)]
    assert [i["id"] for i in resp.get_json()][0] == "1037"


def _stale_pickle() -> bytes:
    """A cached answer pickled by a build whose class has since been renamed (a deploy)."""
    data = pickle.dumps(CachedAnswer(Recommendation(["1000"]), time.time()))
    assert b"CachedAnswer" in data
    return data.replace(b"CachedAnswer", b"CachedAnswex")


FILE_GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\x00", id="truncated-header"),
    pytest.param(struct.pack("I", 0) + b"not a pickle", id="not-a-pickle"),
    pytest.param(struct.pack("I", 0) + pickle.dumps({"not": "an answer"}), id="wrong-type"),
    pytest.param(
        struct.pack("I", 0) + _stale_pickle(),
        id="stale-class",
    ),
]


@pytest.mark.parametrize("garbage", FILE_GARBAGE)
def test_file_cache_garbage_is_a_miss(
    app: Flask, client: FlaskClient, fake_recommender: FakeRecommender, garbage: bytes
) -> None:
    get(client, user_id="u1")
    backend = app.extensions["cache"][cache_extension]
    filename = backend._get_filename(AnswerCache.key(fake_recommender.key, "u1", {"num_results": 10}))
    assert os.path.exists(filename)
    with open(filename, "wb") as fh:
        fh.write(garbage)

    resp = get(client, user_id="u1")

    assert resp.status_code == 200
    assert resp.headers["X-Cache"] == "MISS"
    assert len(fake_recommender.calls) == 2
