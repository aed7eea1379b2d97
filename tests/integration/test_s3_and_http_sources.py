"""Catalog and batch files read from S3 (moto) and from an https feed (responses), end to end through create_app."""
from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import responses
from flask import Flask
from responses import matchers

from app import create_app
from app.catalog.files import FileError, HttpFile, Reloadable, S3File, open_file
from app.catalog.items import parse_catalog
from app.components import components
from tests.conftest import SAMPLE_BATCH, SAMPLE_CATALOG, FakeAws
from tests.integration.conftest import BUCKET

FEED = "https://feeds.example.com/products.json"


def sample_catalog() -> dict[str, dict[str, str]]:
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8") as fh:
        return {row["ITEM_ID"]: row for row in csv.DictReader(fh)}


def sample_batch() -> dict[str, list[str]]:
    answers = {}
    with SAMPLE_BATCH.open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            answers[record["input"]["userId"]] = record["output"]["recommendedItems"]
    return answers


def expected_ids(user_id: str, num_results: int = 10) -> list[str]:
    catalog = sample_catalog()
    return [i for i in sample_batch()[user_id][:num_results] if i in catalog]


# --- S3 through moto -----------------------------------------------------------------------------


class CallCounter:
    """Counts S3 operations made by one client, through botocore's event hooks."""

    def __init__(self, client: Any) -> None:
        self.counts: dict[str, int] = {}
        client.meta.events.register("before-call.s3.*", self._count)

    def _count(self, model: Any, **kwargs: Any) -> None:
        self.counts[model.name] = self.counts.get(model.name, 0) + 1

    def __getitem__(self, operation: str) -> int:
        return self.counts.get(operation, 0)


def put(client: Any, key: str, data: bytes) -> str:
    return client.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"]


def s3_app(client: Any, cache_dir: str, catalog_key: str, batch_key: str = "out/batch.json.out") -> Flask:
    app = create_app(
        {"catalog_uri": f"s3://{BUCKET}/{catalog_key}", "recommendations_uri": f"s3://{BUCKET}/{batch_key}",
         "cache_dir": cache_dir, "data_dir": os.path.join(os.path.dirname(cache_dir), "data")},
        aws=FakeAws(s3=lambda: client),
    )
    app.config["TESTING"] = True
    return app


@pytest.mark.parametrize("catalog_key", ["catalog.csv", "exports/catalog.csv.gz"])
def test_catalog_and_batch_output_from_s3_are_served(s3: Any, cache_dir: str, catalog_key: str) -> None:
    data = SAMPLE_CATALOG.read_bytes()
    put(s3, catalog_key, gzip.compress(data) if catalog_key.endswith(".gz") else data)
    put(s3, "out/batch.json.out", SAMPLE_BATCH.read_bytes())
    client = s3_app(s3, cache_dir, catalog_key).test_client()

    catalog = sample_catalog()
    for user_id in ("user123", "Ana María", "🚀rocket-fan"):
        response = client.get("/recommendations", query_string={"user_id": user_id})
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert [item["id"] for item in body] == expected_ids(user_id)
        first = catalog[body[0]["id"]]
        assert body[0] == {"id": first["ITEM_ID"], "name": first["NAME"], "url": first["URL"],
                           "price": float(first["PRICE"]), "image": first["IMAGE_URL"]}

    response = client.get("/recommendations", query_string={"user_id": "user456", "num_results": 3})
    assert [item["id"] for item in response.get_json()] == expected_ids("user456", 3)


def test_changed_s3_object_is_picked_up_and_unchanged_one_is_not_downloaded(s3: Any, cache_dir: str) -> None:
    put(s3, "catalog.csv", SAMPLE_CATALOG.read_bytes())
    put(s3, "out/batch.json.out", SAMPLE_BATCH.read_bytes())
    app = s3_app(s3, cache_dir, "catalog.csv")
    client = app.test_client()
    catalog = components(app).service.catalog
    counter = CallCounter(s3)

    first_id = expected_ids("user123")[0]
    assert client.get("/recommendations?user_id=user123").get_json()[0]["id"] == first_id
    assert counter["GetObject"] == 2  # the catalog and the batch output, each once
    heads = counter["HeadObject"]  # the batch loader looks at its object's ETag too

    assert catalog.refresh() is False
    assert counter["HeadObject"] == heads + 1
    assert counter["GetObject"] == 2  # unchanged ETag: not downloaded again

    renamed = SAMPLE_CATALOG.read_bytes().replace(catalog_name(first_id).encode(), b"Renamed Product")
    put(s3, "catalog.csv", renamed)
    assert catalog.refresh() is True
    assert counter["GetObject"] == 3
    assert catalog.get() is not None and catalog.get().items[first_id]["name"] == "Renamed Product"
    assert client.get("/recommendations?user_id=user123").get_json()[0]["name"] == "Renamed Product"

    assert catalog.refresh() is False
    assert counter["GetObject"] == 3


def catalog_name(item_id: str) -> str:
    return sample_catalog()[item_id]["NAME"]


def test_s3_source_version_is_the_etag(s3: Any) -> None:
    etag = put(s3, "items.jsonl", b'{"id": "a"}\n')
    source = open_file(f"s3://{BUCKET}/items.jsonl", lambda: s3)
    assert isinstance(source, S3File)
    snapshot = source.fetch(None)
    assert snapshot is not None
    assert (snapshot.data, snapshot.version) == (b'{"id": "a"}\n', etag)
    assert source.fetch(etag) is None
    new_etag = put(s3, "items.jsonl", b'{"id": "b"}\n')
    assert new_etag != etag
    assert source.fetch(etag).version == new_etag  # type: ignore[union-attr]


@pytest.mark.parametrize(("uri", "code"), [
    (f"s3://{BUCKET}/missing/catalog.csv", "NoSuchKey"),
    ("s3://no-such-bucket/catalog.csv", "NoSuchBucket"),
])
def test_missing_s3_object_is_a_source_error_naming_s3s_code(s3: Any, uri: str, code: str) -> None:
    holder = Reloadable(open_file(uri, lambda: s3), parse_catalog, 60, "catalog")
    with pytest.raises(FileError) as info:
        holder.load()
    assert str(info.value) == f"{uri}: S3 answered {code}."


def test_s3_object_deleted_after_load_keeps_the_catalog(s3: Any) -> None:
    put(s3, "catalog.csv", SAMPLE_CATALOG.read_bytes())
    holder = Reloadable(open_file(f"s3://{BUCKET}/catalog.csv", lambda: s3), parse_catalog, 60, "catalog")
    first = holder.load()
    s3.delete_object(Bucket=BUCKET, Key="catalog.csv")
    assert holder.refresh() is False
    assert holder.get() is first
    assert holder.last_error is not None and "S3 answered" in holder.last_error


def test_missing_s3_catalog_makes_requests_unavailable(s3: Any, cache_dir: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    put(s3, "out/batch.json.out", SAMPLE_BATCH.read_bytes())
    response = s3_app(s3, cache_dir, "catalog.csv").test_client().get("/recommendations?user_id=user123")
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "catalog_unavailable"
    assert "catalog.csv" not in error["message"] and "s3://" not in error["message"]  # the URI stays in the log
    assert "NoSuchKey" in caplog.text


# --- https through responses ---------------------------------------------------------------------


FEED_ITEMS = [
    {"item_id": "1000", "title": "Trail Running Shoes", "link": "https://shop.example.com/p/1000", "price": 89.99,
     "image_link": "https://cdn.example.com/img/1000.jpg"},
    {"item_id": "1037", "title": "Merino Wool Socks", "link": "https://shop.example.com/p/1037", "price": 14,
     "image_link": None},
]


@pytest.fixture
def web() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def feed_holder() -> Reloadable[Any]:
    source = open_file(FEED, lambda: None)
    assert isinstance(source, HttpFile)
    return Reloadable(source, parse_catalog, 60, "catalog")


def test_https_feed_is_loaded(web: responses.RequestsMock) -> None:
    web.get(FEED, json={"products": FEED_ITEMS}, headers={"ETag": '"v1"'})
    catalog = feed_holder().load()
    assert catalog.items == {
        "1000": {"id": "1000", "name": "Trail Running Shoes", "url": "https://shop.example.com/p/1000",
                 "price": 89.99, "image": "https://cdn.example.com/img/1000.jpg"},
        "1037": {"id": "1037", "name": "Merino Wool Socks", "url": "https://shop.example.com/p/1037",
                 "price": 14, "image": None},
    }
    assert "If-None-Match" not in web.calls[0].request.headers
    assert "If-Modified-Since" not in web.calls[0].request.headers


def test_https_feed_served_through_the_app(web: responses.RequestsMock, cache_dir: str) -> None:
    catalog = sample_catalog()
    items = [{"id": i, "name": row["NAME"], "url": row["URL"], "price": float(row["PRICE"])}
             for i, row in catalog.items()]
    web.get(FEED, json=items, headers={"ETag": '"feed-1"'})
    app = create_app({"catalog_uri": FEED, "recommendations_uri": str(SAMPLE_BATCH), "cache_dir": cache_dir,
                      "data_dir": os.path.join(os.path.dirname(cache_dir), "data")})
    app.config["TESTING"] = True
    response = app.test_client().get("/recommendations?user_id=user456&num_results=4")
    assert response.status_code == 200
    body = response.get_json()
    assert [item["id"] for item in body] == expected_ids("user456", 4)
    assert all(item["image"] is None for item in body)  # the feed has no image column
    assert len(web.calls) == 1


def test_etag_is_sent_back_and_304_keeps_the_value(web: responses.RequestsMock) -> None:
    web.get(FEED, json=FEED_ITEMS, headers={"ETag": 'W/"v1"'})
    holder = feed_holder()
    first = holder.load()

    web.replace(responses.GET, FEED, status=304, match=[matchers.header_matcher({"If-None-Match": 'W/"v1"'})])
    assert holder.refresh() is False
    assert holder.get() is first
    assert holder.last_error is None
    assert web.calls[1].request.headers["If-None-Match"] == 'W/"v1"'

    web.replace(responses.GET, FEED, json=FEED_ITEMS[:1], headers={"ETag": '"v2"'})
    assert holder.refresh() is True
    assert list(holder.get().items) == ["1000"]

    web.replace(responses.GET, FEED, status=304)
    assert holder.refresh() is False
    assert web.calls[3].request.headers["If-None-Match"] == '"v2"'


def test_last_modified_is_sent_back_as_if_modified_since(web: responses.RequestsMock) -> None:
    stamp = "Wed, 21 Oct 2025 07:28:00 GMT"
    web.get(FEED, json=FEED_ITEMS, headers={"Last-Modified": stamp})
    holder = feed_holder()
    first = holder.load()

    web.replace(responses.GET, FEED, status=304, match=[matchers.header_matcher({"If-Modified-Since": stamp})])
    assert holder.refresh() is False
    assert holder.get() is first and holder.last_error is None
    assert web.calls[1].request.headers["If-Modified-Since"] == stamp
    assert "If-None-Match" not in web.calls[1].request.headers


def test_server_error_keeps_the_previous_value(web: responses.RequestsMock) -> None:
    web.get(FEED, json=FEED_ITEMS, headers={"ETag": '"v1"'})
    holder = feed_holder()
    first = holder.load()

    web.replace(responses.GET, FEED, status=500, body="upstream exploded")
    assert holder.refresh() is False
    assert holder.get() is first
    assert holder.last_error == f"{FEED}: the server answered HTTP 500."

    web.replace(responses.GET, FEED, json=FEED_ITEMS, headers={"ETag": '"v2"'})
    assert holder.refresh() is True
    assert holder.last_error is None


def test_feed_without_validators_is_compared_by_content(web: responses.RequestsMock) -> None:
    web.get(FEED, json=FEED_ITEMS)
    holder = feed_holder()
    first = holder.load()

    assert holder.refresh() is False  # same bytes, same hash
    assert holder.get() is first
    assert "If-None-Match" not in web.calls[1].request.headers
    assert "If-Modified-Since" not in web.calls[1].request.headers

    web.replace(responses.GET, FEED, json=FEED_ITEMS[1:])
    assert holder.refresh() is True
    assert list(holder.get().items) == ["1037"]


def test_gzipped_feed_file_is_decompressed(web: responses.RequestsMock) -> None:
    url = "https://feeds.example.com/export/items.csv.gz?sig=abc"
    body = gzip.compress(b"ITEM_ID,NAME,URL\nz1,Zed,/z1\n")
    web.get(url, body=body, content_type="application/gzip")
    catalog = Reloadable(open_file(url, lambda: None), parse_catalog, 60, "catalog").load()
    assert catalog.items["z1"]["name"] == "Zed"


def test_unreachable_feed_is_a_source_error(web: responses.RequestsMock) -> None:
    import requests

    web.get(FEED, body=requests.ConnectionError("connection refused"))
    with pytest.raises(FileError, match="connection refused") as info:
        feed_holder().load()
    assert str(info.value).startswith(FEED + ": ")


def test_first_load_error_status_is_a_source_error(web: responses.RequestsMock) -> None:
    web.get(FEED, status=404)
    holder = feed_holder()
    with pytest.raises(FileError, match="HTTP 404"):
        holder.load()
    assert holder._value is None  # nothing was loaded

