"""Request options of GET /recommendations: item_id, filter and filter.KEY, context.KEY, fields, format,
LINK_QUERY placeholders, and the catalog settings that shape items (CATALOG_EXTRA_FIELDS, IMAGE_BASE_URL).

Most tests run on the FakeRecommender, which records each call's `options`; the Personalize tests use
a real boto3 personalize-runtime client stubbed with botocore's Stubber, so the exact
GetRecommendations parameters are checked (Stubber rejects any other parameter set).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.components import components
from app.settings import ConfigError
from app.sources.recommender import Options
from tests.wire_stub import WireStub
from tests.conftest import FakeAws, FakeRecommender

CAMPAIGN_ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/braze-recs"
FILTER_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/by-category"
STOCK_FILTER_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/in-stock"
PROMO_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/promoted"
FILTERS = {"category": FILTER_ARN, "instock": STOCK_FILTER_ARN}
ITEM_KEYS = ["id", "name", "url", "price", "image"]


def get(client: FlaskClient, query: str | dict[str, Any] | list[tuple[str, str]]) -> TestResponse:
    return client.get("/recommendations", query_string=query if isinstance(query, str) else urlencode(query))


def assert_error(resp: TestResponse, *params: str) -> dict[str, Any]:
    """A 400 invalid_parameter whose `errors` names exactly these parameters (and the message too)."""
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["status"] == 400
    assert set(error["errors"]) == set(params), error
    for param in params:
        problems = error["errors"][param]
        assert isinstance(problems, list) and problems and all(isinstance(p, str) and p for p in problems)
        assert param in error["message"]
    return error


def ok(resp: TestResponse) -> Any:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


@pytest.fixture
def fake() -> FakeRecommender:
    return FakeRecommender({"u1": ["1000", "1037", "1074"], "item:1000": ["1111", "1037"], "u2": ["1111"]})


@pytest.fixture
def client(make_app: Callable[..., Flask], fake: FakeRecommender) -> FlaskClient:
    return make_app({"recommender": fake}, filters=FILTERS).test_client()


# --------------------------------------------------------------------------------------------------
# item_id


def test_item_id_alone_reaches_the_recommender_without_a_user(client: FlaskClient, fake: FakeRecommender) -> None:
    body = ok(get(client, "item_id=1000&num_results=2"))

    assert [item["id"] for item in body] == ["1111", "1037"]
    assert fake.calls == [(None, 2)]
    assert fake.options == [Options(item_id="1000")]


def test_user_id_and_item_id_together(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, "user_id=u1&item_id=1000"))

    assert fake.calls == [("u1", 10)]
    assert fake.options[0].item_id == "1000"


def test_user_id_alone_has_no_item_id(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, "user_id=u1"))

    assert fake.options == [Options()]


@pytest.mark.parametrize("query", ["", "num_results=3", "filter=category", "fields=id", "item=1000"])
def test_neither_user_id_nor_item_id_is_400_naming_user_id(
    client: FlaskClient, fake: FakeRecommender, query: str
) -> None:
    assert_error(get(client, query), "user_id")
    assert fake.calls == []


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(urlencode({"item_id": "i" * 257}), id="257-chars-alone"),
        pytest.param(urlencode({"user_id": "u1", "item_id": "\U0001F600" * 257}), id="257-emoji-with-user"),
        pytest.param("user_id=u1&item_id=", id="empty"),
        pytest.param("item_id=1000&item_id=1037", id="repeated"),
    ],
)
def test_bad_item_id_is_400_naming_it(client: FlaskClient, fake: FakeRecommender, query: str) -> None:
    assert_error(get(client, query), "item_id")
    assert fake.calls == []


def test_item_id_of_256_characters_is_accepted(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, {"item_id": "i" * 256}))

    assert fake.options[0].item_id == "i" * 256


def test_item_id_is_part_of_the_cache_key(client: FlaskClient, fake: FakeRecommender) -> None:
    for query in ["user_id=u1", "user_id=u1&item_id=1000", "user_id=u1&item_id=1037", "item_id=1000",
                  "user_id=u1&item_id=1000", "item_id=1000"]:
        ok(get(client, query))

    assert [o.item_id for o in fake.options] == [None, "1000", "1037", "1000"]


def test_batch_source_answers_item_id_from_related_items_lines(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    batch = tmp_path / "related.json.out"
    lines = [
        {"input": {"itemId": "1000"}, "output": {"recommendedItems": ["1111", "1074", "1037"]}, "error": None},
        {"input": {"itemId": "1037"}, "output": {"recommendedItems": ["1000"]}},
        {"input": {"userId": "u7"}, "output": {"recommendedItems": ["1074", "1000"]}},
    ]
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    client = make_app(recommendations_uri=str(batch)).test_client()

    related = get(client, "item_id=1000&num_results=3")
    assert [item["id"] for item in ok(related)] == ["1111", "1074", "1037"]
    assert related.headers["X-Recommendations-Source"] == "batch"
    assert [item["id"] for item in ok(get(client, "item_id=1037&num_results=1"))] == ["1000"]
    # The item line answers item_id, not a user of the same id; users still get their own lines.
    assert [item["id"] for item in ok(get(client, "user_id=u7&num_results=2"))] == ["1074", "1000"]
    assert [item["id"] for item in ok(get(client, "user_id=u7&item_id=1037&num_results=1"))] == ["1000"]


# --------------------------------------------------------------------------------------------------
# filter and filter.KEY


@pytest.mark.parametrize("filters", [FILTERS, f"category={FILTER_ARN}, instock={STOCK_FILTER_ARN}"],
                         ids=["mapping", "env-string"])
def test_filter_name_maps_to_its_arn(
    make_app: Callable[..., Flask], fake: FakeRecommender, filters: Any
) -> None:
    client = make_app({"recommender": fake}, filters=filters).test_client()

    ok(get(client, "user_id=u1&filter=category"))
    ok(get(client, "user_id=u1&filter=instock"))

    assert [o.filter_arn for o in fake.options] == [FILTER_ARN, STOCK_FILTER_ARN]


def test_unknown_filter_is_400_listing_the_known_ones(client: FlaskClient, fake: FakeRecommender) -> None:
    error = assert_error(get(client, "user_id=u1&filter=nope"), "filter")

    problem = " ".join(error["errors"]["filter"])
    assert "nope" in problem and "category" in problem and "instock" in problem
    assert FILTER_ARN not in problem  # names, not ARNs
    assert fake.calls == []


def test_filter_without_filters_configured_is_400(make_app: Callable[..., Flask], fake: FakeRecommender) -> None:
    client = make_app({"recommender": fake}).test_client()

    error = assert_error(get(client, "user_id=u1&filter=category"), "filter")
    assert "FILTERS" in " ".join(error["errors"]["filter"])


@pytest.mark.parametrize(("query", "ignored"), [
    ("user_id=user123&filter=category", "filter"),
    ("user_id=user123&filter=category&filter.CATEGORY=tents", "filter"),
    ("user_id=user123&context.DEVICE=mobile", "context"),
    ("user_id=user123&filter=instock&context.DEVICE=mobile", "filter,context"),
    ("user_id=nobody-in-the-file&filter=category", "filter"),  # the popular-items fallback cannot filter either
    ("user_id=user123", None),
])
def test_a_batch_file_answers_a_filter_saying_it_ignored_it(
    make_app: Callable[..., Flask], query: str, ignored: str | None
) -> None:
    """With only a batch file (no campaign) a filter cannot apply: the send goes on, the header says so."""
    client = make_app(filters=FILTERS).test_client()  # the sample batch file, no PERSONALIZE_CAMPAIGN_ARN
    for _ in range(2):  # the cached answer says so too
        resp = get(client, query)
        assert resp.status_code == 200 and resp.get_json()
        assert resp.headers.get("X-Ignored-Parameters") == ignored


def test_a_source_that_applies_filters_sets_no_ignored_header(client: FlaskClient, fake: FakeRecommender) -> None:
    resp = get(client, "user_id=u1&filter=category&context.DEVICE=mobile")
    assert resp.status_code == 200 and "X-Ignored-Parameters" not in resp.headers
    assert fake.options[0].filter_arn == FILTER_ARN


def test_filter_values_reach_the_recommender(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, "user_id=u1&filter=category&filter.CATEGORY=shoes,boots&filter.MAX_PRICE=100"))

    assert fake.options == [
        Options(filter_arn=FILTER_ARN, filter_values=(("CATEGORY", "shoes,boots"), ("MAX_PRICE", "100")))
    ]


def test_filter_values_without_filter_is_400_naming_filter(client: FlaskClient, fake: FakeRecommender) -> None:
    assert_error(get(client, "user_id=u1&filter.CATEGORY=shoes"), "filter")
    assert fake.calls == []


def test_limits_that_are_just_allowed(client: FlaskClient, fake: FakeRecommender) -> None:
    query = [("user_id", "u1"), ("filter", "category"), ("filter." + "K" * 50, "v" * 1000)]
    query += [(f"filter.k{i}", "x") for i in range(24)]

    ok(get(client, query))

    assert len(fake.options[0].filter_values) == 25
    assert ("K" * 50, "v" * 1000) in fake.options[0].filter_values


BAD_FILTER_VALUES = [
    pytest.param([("filter.CATE-GORY", "shoes")], "filter.CATE-GORY", id="dash-in-key"),
    pytest.param([("filter." + "K" * 51, "shoes")], "filter." + "K" * 51, id="51-char-key"),
    pytest.param([("filter.", "shoes")], "filter.", id="empty-key"),
    pytest.param([("filter.caté", "shoes")], "filter.caté", id="non-ascii-key"),
    pytest.param([("filter.CATEGORY", "")], "filter.CATEGORY", id="empty-value"),
    pytest.param([("filter.CATEGORY", "v" * 1001)], "filter.CATEGORY", id="1001-char-value"),
    pytest.param([("filter.CATEGORY", 'shoes"),OR(1')], "filter.CATEGORY", id="double-quote"),
    pytest.param([("filter.CATEGORY", "shoes"), ("filter.CATEGORY", "boots")], "filter.CATEGORY", id="repeated"),
    pytest.param([("filter.CATEGORY", "shoes"), ("filter.CATEGORY", "shoes")], "filter.CATEGORY",
                 id="repeated-same"),
    pytest.param([(f"filter.k{i}", "x") for i in range(26)], "filter", id="26-keys"),
    pytest.param([("filter.CATEGORY\n", "shoes")], "filter.CATEGORY\n", id="trailing-newline-in-key"),
]


@pytest.mark.parametrize(("pairs", "param"), BAD_FILTER_VALUES)
def test_bad_filter_values_are_400_naming_the_parameter(
    client: FlaskClient, fake: FakeRecommender, pairs: list[tuple[str, str]], param: str
) -> None:
    resp = get(client, [("user_id", "u1"), ("filter", "category"), *pairs])

    assert_error(resp, param)
    assert fake.calls == []


def test_filter_values_are_part_of_the_cache_key(client: FlaskClient, fake: FakeRecommender) -> None:
    queries = [
        "user_id=u1",
        "user_id=u1&filter=category",
        "user_id=u1&filter=instock",
        "user_id=u1&filter=category&filter.CATEGORY=shoes",
        "user_id=u1&filter=category&filter.CATEGORY=boots",
        "user_id=u1&filter=category&filter.CATEGORY=shoes,boots",
        "user_id=u1&filter=category&filter.CATEGORY=shoes&filter.COLOR=red",
    ]
    for query in queries:
        assert ok(get(client, query))
    assert len(fake.calls) == len(queries)

    # The same filter and values again (in another parameter order) are hits: no new call.
    for query in [*queries, "user_id=u1&filter.COLOR=red&filter=category&filter.CATEGORY=shoes"]:
        assert get(client, query).headers["X-Cache"] == "HIT"
    assert len(fake.calls) == len(queries)


# --------------------------------------------------------------------------------------------------
# context.KEY


def test_context_passes_through(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, "user_id=u1&context.DEVICE=mobile%20phone&context.TIME_OF_DAY=evening&context.QUOTE=%22x%22"))

    assert fake.options == [
        Options(context=(("DEVICE", "mobile phone"), ("QUOTE", '"x"'), ("TIME_OF_DAY", "evening")))
    ]


def test_150_context_entries_are_allowed(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, [("user_id", "u1"), *[(f"context.k{i}", str(i)) for i in range(150)]]))

    assert len(fake.options[0].context) == 150


BAD_CONTEXT = [
    pytest.param([("context.DEVICE-TYPE", "mobile")], "context.DEVICE-TYPE", id="dash-in-key"),
    pytest.param([("context.a b", "mobile")], "context.a b", id="space-in-key"),
    pytest.param([("context." + "K" * 151, "mobile")], "context." + "K" * 151, id="151-char-key"),
    pytest.param([("context.DEVICE", "")], "context.DEVICE", id="empty-value"),
    pytest.param([("context.DEVICE", "v" * 1001)], "context.DEVICE", id="1001-char-value"),
    pytest.param([("context.DEVICE", "a"), ("context.DEVICE", "b")], "context.DEVICE", id="repeated"),
    pytest.param([(f"context.k{i}", "x") for i in range(151)], "context", id="151-entries"),
]


@pytest.mark.parametrize(("pairs", "param"), BAD_CONTEXT)
def test_bad_context_is_400_naming_the_parameter(
    client: FlaskClient, fake: FakeRecommender, pairs: list[tuple[str, str]], param: str
) -> None:
    assert_error(get(client, [("user_id", "u1"), *pairs]), param)
    assert fake.calls == []


def test_context_is_part_of_the_cache_key(client: FlaskClient, fake: FakeRecommender) -> None:
    queries = ["user_id=u1", "user_id=u1&context.DEVICE=mobile", "user_id=u1&context.DEVICE=desktop",
               "user_id=u1&context.DEVICE=mobile&context.LOCATION=US"]
    for query in queries + queries + ["user_id=u1&context.LOCATION=US&context.DEVICE=mobile"]:
        ok(get(client, query))

    assert len(fake.calls) == len(queries)


def test_context_and_filter_values_do_not_collide_in_the_cache(client: FlaskClient, fake: FakeRecommender) -> None:
    ok(get(client, "user_id=u1&filter=category&filter.DEVICE=mobile"))
    ok(get(client, "user_id=u1&filter=category&context.DEVICE=mobile"))

    assert len(fake.calls) == 2


# --------------------------------------------------------------------------------------------------
# What reaches Personalize: the signed request's JSON body, answered on the wire (tests/wire_stub.py)


def personalize_app(make_app: Callable[..., Flask], client: Any, **settings: Any) -> FlaskClient:
    app = make_app({"aws": FakeAws(personalize=lambda role, region: client)}, personalize_campaign_arn=CAMPAIGN_ARN,
                   filters=FILTERS, request_budget_ms=1900, **settings)
    return app.test_client()


def call_personalize(client: FlaskClient, stubber: WireStub, query: str, expected: dict[str, Any]) -> TestResponse:
    """Answer one GetRecommendations whose parameters must equal expected, and check it was Personalize that
    answered: the stub's mismatch error is an AssertionError, which the service would turn into a fallback."""
    stubber.add_response(
        "get_recommendations",
        {"itemList": [{"itemId": "1074"}, {"itemId": "1000"}], "recommendationId": "RID-1"},
        expected_params={"campaignArn": CAMPAIGN_ARN, "numResults": 10, **expected},
    )
    resp = get(client, query)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["X-Recommendations-Source"] == "personalize", resp.headers.get("X-Fallback-Reason")
    assert "X-Fallback-Reason" not in resp.headers
    assert resp.headers["X-Recommendation-Id"] == "RID-1"
    assert [item["id"] for item in resp.get_json()[:2]] == ["1074", "1000"]
    stubber.assert_no_pending_responses()
    return resp


def test_personalize_gets_item_id_without_user_id(
    make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]
) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client)

    call_personalize(app, stubber, "item_id=1000", {"itemId": "1000"})


def test_personalize_gets_user_and_item(make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client)

    call_personalize(app, stubber, "user_id=u%201&item_id=1000", {"userId": "u 1", "itemId": "1000"})


def test_personalize_gets_filter_arn_and_quoted_values(
    make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]
) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client)

    call_personalize(
        app, stubber, "user_id=u1&filter=category&filter.CATEGORY=shoes,boots&filter.BRAND=Acme%20Co",
        {"userId": "u1", "filterArn": FILTER_ARN, "filterValues": {"CATEGORY": '"shoes","boots"',
                                                                   "BRAND": '"Acme Co"'}},
    )


def test_personalize_gets_filter_arn_without_values(
    make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]
) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client)

    call_personalize(app, stubber, "user_id=u1&filter=instock", {"userId": "u1", "filterArn": STOCK_FILTER_ARN})


def test_personalize_gets_context(make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client)

    call_personalize(app, stubber, "user_id=u1&context.DEVICE=mobile&context.TIME=evening",
                     {"userId": "u1", "context": {"DEVICE": "mobile", "TIME": "evening"}})


def test_personalize_gets_the_promotion(make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client, promotion_filter_arn=PROMO_ARN, promotion_percent="25",
                          promotion_name="summer-sale")

    call_personalize(
        app, stubber, "user_id=u1&item_id=1000&filter=category&filter.CATEGORY=shoes&context.DEVICE=mobile",
        {
            "userId": "u1",
            "itemId": "1000",
            "filterArn": FILTER_ARN,
            "filterValues": {"CATEGORY": '"shoes"'},
            "context": {"DEVICE": "mobile"},
            "promotions": [{"name": "summer-sale", "filterArn": PROMO_ARN, "percentPromotedItems": 25}],
        },
    )


def test_personalize_promotion_defaults(make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client, promotion_filter_arn=PROMO_ARN)

    call_personalize(app, stubber, "item_id=1000", {
        "itemId": "1000",
        "promotions": [{"name": "promoted", "filterArn": PROMO_ARN, "percentPromotedItems": 10}],
    })


def test_personalize_gets_no_extras_by_default(make_app: Callable[..., Flask], runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    app = personalize_app(make_app, client)

    call_personalize(app, stubber, "user_id=u1&utm_source=braze", {"userId": "u1"})


@pytest.mark.parametrize("arn", ["arn:aws:personalize:us-east-1:123456789012:campaign/x", "not-an-arn"])
def test_bad_promotion_filter_arn_is_a_config_error(make_app: Callable[..., Flask], arn: str) -> None:
    with pytest.raises(ConfigError, match="PROMOTION_FILTER_ARN"):
        make_app(personalize_campaign_arn=CAMPAIGN_ARN, promotion_filter_arn=arn)


# --------------------------------------------------------------------------------------------------
# fields and CATALOG_EXTRA_FIELDS


@pytest.mark.parametrize("fields", [["id"], ["price", "id"], ["image", "url", "name"], ITEM_KEYS[::-1]])
def test_fields_select_a_subset_in_the_given_order(client: FlaskClient, fields: list[str]) -> None:
    full = ok(get(client, "user_id=u1"))

    body = ok(get(client, {"user_id": "u1", "fields": ",".join(fields)}))

    assert len(body) == len(full) == 10
    for item, whole in zip(body, full, strict=True):
        assert list(item) == fields
        assert item == {name: whole[name] for name in fields}


def test_fields_tolerate_spaces_and_repeats(client: FlaskClient) -> None:
    body = ok(get(client, {"user_id": "u1", "fields": " name , id,name"}))

    assert body[0] == {"name": "Trail Running Shoes", "id": "1000"}


@pytest.mark.parametrize("fields", ["sku", "id,colour", "ID", "category"])
def test_unknown_field_is_400_listing_the_choices(client: FlaskClient, fake: FakeRecommender, fields: str) -> None:
    error = assert_error(get(client, {"user_id": "u1", "fields": fields}), "fields")

    problem = " ".join(error["errors"]["fields"])
    assert all(name in problem for name in ITEM_KEYS)
    assert fake.calls == []


@pytest.mark.parametrize("fields", ["", ",", " , "])
def test_empty_fields_is_400(client: FlaskClient, fields: str) -> None:
    assert_error(get(client, {"user_id": "u1", "fields": fields}), "fields")


def test_fields_repeated_is_400(client: FlaskClient) -> None:
    assert_error(get(client, "user_id=u1&fields=id&fields=name"), "fields")


def test_catalog_extra_fields_appear_in_every_item_and_can_be_selected(
    make_app: Callable[..., Flask], fake: FakeRecommender
) -> None:
    client = make_app({"recommender": fake}, catalog_extra_fields="Category").test_client()

    body = ok(get(client, "user_id=u1"))
    assert len(body) == 10  # backfilled items too
    assert all(list(item) == [*ITEM_KEYS, "category"] for item in body)
    assert [item["category"] for item in body[:3]] == ["footwear", "apparel", "apparel"]

    selected = ok(get(client, "user_id=u1&fields=category,id"))
    assert selected[:2] == [{"category": "footwear", "id": "1000"}, {"category": "apparel", "id": "1037"}]

    error = assert_error(get(client, "user_id=u1&fields=colour"), "fields")
    assert "category" in " ".join(error["errors"]["fields"])


def test_catalog_extra_field_missing_from_the_catalog_is_null(make_app: Callable[..., Flask], fake: FakeRecommender) -> None:
    client = make_app({"recommender": fake}, catalog_extra_fields="colour").test_client()

    assert all(item["colour"] is None for item in ok(get(client, "user_id=u1")))


@pytest.mark.parametrize("extra", ["price", "ID", "image", "category,url", "bad-name", "1st"])
def test_catalog_extra_fields_that_clash_or_are_malformed_are_a_config_error(
    make_app: Callable[..., Flask], extra: str
) -> None:
    with pytest.raises(ConfigError, match="CATALOG_EXTRA_FIELDS"):
        make_app(catalog_extra_fields=extra)


# --------------------------------------------------------------------------------------------------
# format


def test_default_format_is_the_bare_array(client: FlaskClient) -> None:
    body = ok(get(client, "user_id=u1"))

    assert isinstance(body, list)
    assert body == ok(get(client, "user_id=u1&format=array"))


def test_format_object(client: FlaskClient) -> None:
    array = ok(get(client, "user_id=u1"))

    body = ok(get(client, "user_id=u1&format=object"))

    assert body == {"items": array, "recommendation_id": "rid-u1", "source": "fake"}


def test_format_object_with_fields(client: FlaskClient) -> None:
    body = ok(get(client, "user_id=u1&format=object&fields=id&num_results=2"))

    assert body["items"] == [{"id": "1000"}, {"id": "1037"}]


@pytest.mark.parametrize("fmt", ["xml", "", "json", "array&format=object"])
def test_bad_format_is_400(client: FlaskClient, fake: FakeRecommender, fmt: str) -> None:
    assert_error(get(client, f"user_id=u1&format={fmt}"), "format")
    assert fake.calls == []


# --------------------------------------------------------------------------------------------------
# LINK_QUERY and IMAGE_BASE_URL, on a catalog of their own

LINKS = {
    "1": ("https://shop.example.com/p/1", "img/1.jpg"),
    "2": ("https://shop.example.com/p/2?color=red", "/img/2.jpg"),
    "3": ("https://shop.example.com/p/3#reviews", "https://cdn.other.com/3.jpg"),
    "4": ("https://shop.example.com/p/4?size=m#top", "//cdn.other.com/4.jpg"),
    "5": ("https://shop.example.com/p/5", ""),  # an item without a url is never served (test_catalog.py)
    "6": ("https://shop.example.com/p/6?", "http://cdn.other.com/6.jpg"),
}
LINK_QUERY = "utm_source=braze&utm_campaign={campaign}"


@pytest.fixture
def link_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "links.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["item_id", "name", "url", "price", "image"])
        for item_id, (url, image) in LINKS.items():
            writer.writerow([item_id, f"Item {item_id}", url, item_id, image])
    return path


@pytest.fixture
def link_fake() -> FakeRecommender:
    return FakeRecommender({"u1": list(LINKS)})


@pytest.fixture
def link_app(make_app: Callable[..., Flask], link_fake: FakeRecommender, link_catalog: Path) -> Flask:
    return make_app({"recommender": link_fake}, catalog_uri=str(link_catalog), link_query=LINK_QUERY)


def urls(resp: TestResponse) -> dict[str, str]:
    return {item["id"]: item["url"] for item in ok(resp)}


def test_link_query_is_appended_with_the_right_separator(link_app: Flask) -> None:
    got = urls(get(link_app.test_client(), "user_id=u1&campaign=spring"))

    suffix = "utm_source=braze&utm_campaign=spring"
    assert got == {
        "1": f"https://shop.example.com/p/1?{suffix}",
        "2": f"https://shop.example.com/p/2?color=red&{suffix}",
        "3": f"https://shop.example.com/p/3?{suffix}#reviews",
        "4": f"https://shop.example.com/p/4?size=m&{suffix}#top",
        "5": f"https://shop.example.com/p/5?{suffix}",
        "6": f"https://shop.example.com/p/6?{suffix}",
    }


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("spring sale", "spring%20sale"),
        ("a&b=c", "a%26b%3Dc"),
        ("a/b?c#d", "a%2Fb%3Fc%23d"),
        ("\U0001F600 \u00e9", "%F0%9F%98%80%20%C3%A9"),
        ("100%+{x}", "100%25%2B%7Bx%7D"),
    ],
)
def test_placeholder_values_are_url_encoded(link_app: Flask, value: str, encoded: str) -> None:
    got = urls(get(link_app.test_client(), {"user_id": "u1", "campaign": value}))

    assert got["1"] == f"https://shop.example.com/p/1?utm_source=braze&utm_campaign={encoded}"
    for item_id in ("1", "2", "3", "4"):
        query = parse_qs(urlsplit(got[item_id]).query)
        assert query["utm_campaign"] == [value]
        assert query["utm_source"] == ["braze"]


@pytest.mark.parametrize("query", ["user_id=u1", "user_id=u1&campaign="])
def test_empty_placeholder_drops_its_pair(link_app: Flask, query: str) -> None:
    got = urls(get(link_app.test_client(), query))

    assert got["1"] == "https://shop.example.com/p/1?utm_source=braze"
    assert got["3"] == "https://shop.example.com/p/3?utm_source=braze#reviews"
    assert got["5"] == "https://shop.example.com/p/5?utm_source=braze"


def test_link_query_with_only_empty_placeholders_leaves_urls_alone(
    make_app: Callable[..., Flask], link_fake: FakeRecommender, link_catalog: Path
) -> None:
    client = make_app({"recommender": link_fake}, catalog_uri=str(link_catalog),
                      link_query="?utm_campaign={campaign}").test_client()

    assert urls(get(client, "user_id=u1")) == {item_id: url for item_id, (url, _) in LINKS.items()}
    assert urls(get(client, "user_id=u1&campaign=x"))["1"] == "https://shop.example.com/p/1?utm_campaign=x"


def test_placeholder_value_limit(link_app: Flask, link_fake: FakeRecommender) -> None:
    client = link_app.test_client()

    assert urls(get(client, {"user_id": "u1", "campaign": "c" * 200}))["1"].endswith("c" * 200)
    assert_error(get(client, {"user_id": "u1", "campaign": "c" * 201}), "campaign")
    assert_error(get(client, "user_id=u1&campaign=a&campaign=b"), "campaign")
    assert len(link_fake.calls) == 1


def test_catalog_items_are_not_mutated_by_link_query(link_app: Flask) -> None:
    client = link_app.test_client()

    first = urls(get(client, "user_id=u1&campaign=first"))
    second = urls(get(client, "user_id=u1&campaign=second"))
    third = urls(get(client, "user_id=u1"))

    assert first["2"] == "https://shop.example.com/p/2?color=red&utm_source=braze&utm_campaign=first"
    assert second["2"] == "https://shop.example.com/p/2?color=red&utm_source=braze&utm_campaign=second"
    assert third["2"] == "https://shop.example.com/p/2?color=red&utm_source=braze"
    catalog = components(link_app).service.catalog.get()
    assert {item_id: catalog.items[item_id]["url"] for item_id in LINKS} == {i: u for i, (u, _) in LINKS.items()}


def test_link_query_applies_before_fields_selection(link_app: Flask) -> None:
    body = ok(get(link_app.test_client(), "user_id=u1&campaign=x&fields=url&num_results=1"))

    assert body == [{"url": "https://shop.example.com/p/1?utm_source=braze&utm_campaign=x"}]


@pytest.mark.parametrize("link_query", ["utm_content={user_id}", "a={item_id}", "a={Campaign}", "a={}", "a={0}",
                                        "a={campaign", "a={campaign.x}", "a={fields}"])
def test_bad_link_query_placeholder_is_a_config_error(make_app: Callable[..., Flask], link_query: str) -> None:
    with pytest.raises(ConfigError, match="LINK_QUERY"):
        make_app(link_query=link_query)


@pytest.mark.parametrize("base", ["https://cdn.example.com/media", "https://cdn.example.com/media/"])
def test_image_base_url_makes_relative_images_absolute(
    make_app: Callable[..., Flask], link_fake: FakeRecommender, link_catalog: Path, base: str
) -> None:
    client = make_app({"recommender": link_fake}, catalog_uri=str(link_catalog), image_base_url=base).test_client()

    images = {item["id"]: item["image"] for item in ok(get(client, "user_id=u1"))}

    assert images == {
        "1": "https://cdn.example.com/media/img/1.jpg",
        "2": "https://cdn.example.com/media/img/2.jpg",
        "3": "https://cdn.other.com/3.jpg",
        "4": "//cdn.other.com/4.jpg",
        "5": None,
        "6": "http://cdn.other.com/6.jpg",
    }


def test_without_image_base_url_images_are_as_written(
    make_app: Callable[..., Flask], link_fake: FakeRecommender, link_catalog: Path
) -> None:
    client = make_app({"recommender": link_fake}, catalog_uri=str(link_catalog)).test_client()

    images = {item["id"]: item["image"] for item in ok(get(client, "user_id=u1"))}

    assert images["1"] == "img/1.jpg" and images["2"] == "/img/2.jpg"


@pytest.mark.parametrize("base", ["ftp://x", "cdn.example.com", "//cdn.example.com"])
def test_bad_image_base_url_is_a_config_error(make_app: Callable[..., Flask], base: str) -> None:
    with pytest.raises(ConfigError, match="IMAGE_BASE_URL"):
        make_app(image_base_url=base)


# --------------------------------------------------------------------------------------------------
# Several bad parameters: one 400 naming them all


def test_every_bad_parameter_is_reported_at_once(link_app: Flask, link_fake: FakeRecommender) -> None:
    query = [
        ("user_id", "u1"),
        ("num_results", "0"),
        ("filter", "nope"),
        ("filter.BAD-KEY", "x"),
        ("context.BAD-KEY", "y"),
        ("context.OK", ""),
        ("fields", "bogus"),
        ("format", "xml"),
        ("campaign", "c" * 201),
    ]

    assert_error(get(link_app.test_client(), query), "num_results", "filter", "filter.BAD-KEY", "context.BAD-KEY",
                 "context.OK", "fields", "format", "campaign")
    assert link_fake.calls == []


def test_bad_item_id_and_bad_options_are_reported_together(client: FlaskClient) -> None:
    query = [("item_id", "i" * 257), ("format", "xml"), ("fields", ""), ("filter.CATEGORY", "shoes")]

    assert_error(get(client, query), "item_id", "format", "fields", "filter")


@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "tab\there", "\x7f", "   ", " \t "])
@pytest.mark.parametrize("param", ["user_id", "item_id"])
def test_ids_with_control_characters_or_only_spaces_are_rejected(app: Flask, param: str, bad: str) -> None:
    """Such an id is a broken template: a 400 naming it, not a Personalize call and a cached answer."""
    error = assert_error(get(app.test_client(), {param: bad}), param)
    assert "printable" in error["errors"][param][0]


@pytest.mark.parametrize("good", ["jane.doe@example.com", "Ana María", "🚀rocket-fan", " padded ", "a" * 256])
def test_printable_ids_with_spaces_or_unicode_are_accepted(app: Flask, good: str) -> None:
    assert get(app.test_client(), {"user_id": good}).status_code == 200
