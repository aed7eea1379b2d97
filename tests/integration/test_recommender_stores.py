"""Both configuration stores behind one interface: SQLite on disk and DynamoDB (through moto)."""
from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from app.pinpoint.configs import (
    BadTokenError,
    DynamoDBStore,
    RecommenderStore,
    SQLiteStore,
    StoreError,
    new_record,
)

TABLE = "recommender-configurations"
BODY = {"RecommendationProviderUri": "arn:aws:personalize:us-east-1:123456789012:campaign/movies",
        "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/PinpointRecommendations"}


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path, dummy_aws: None) -> Iterator[RecommenderStore]:
    if request.param == "sqlite":
        yield SQLiteStore(str(tmp_path / "db" / "recommenders.sqlite3"))
        return
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}],
                            BillingMode="PAY_PER_REQUEST")
        yield DynamoDBStore(TABLE, lambda: client)


def record(name: str) -> dict[str, Any]:
    return new_record({**BODY, "Name": name})


def test_create_get_replace_delete(store: RecommenderStore) -> None:
    first = record("first")
    store.create(first)
    assert store.get(first["Id"]) == first
    changed = {**first, "Name": "changed", "RecommendationsPerMessage": 2}
    assert store.replace(changed) is True
    assert store.get(first["Id"]) == changed
    assert store.replace(record("never-created")) is False
    assert store.delete(first["Id"]) == changed
    assert store.get(first["Id"]) is None
    assert store.delete(first["Id"]) is None


def test_pages_cover_every_record_once(store: RecommenderStore) -> None:
    records = [record(f"r{i}") for i in range(7)]
    for r in records:
        store.create(r)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        items, token = store.list(3, token)
        pages += 1
        assert len(items) <= 3
        seen += [i["Id"] for i in items]
        if token is None:
            break
    assert pages >= 3
    assert sorted(seen) == sorted(r["Id"] for r in records)


def test_a_token_from_elsewhere_is_rejected(store: RecommenderStore) -> None:
    with pytest.raises(BadTokenError):
        store.list(2, "not-a-token!")


def test_sqlite_pages_in_creation_order(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "r.sqlite3"))
    records = [record(f"r{i}") for i in range(5)]
    for r in records:
        store.create(r)
    first, token = store.list(2, None)
    second, token = store.list(2, token)
    third, token = store.list(2, token)
    assert [r["Name"] for r in first + second + third] == ["r0", "r1", "r2", "r3", "r4"]
    assert token is None


def test_sqlite_uses_wal_and_survives_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sqlite3")
    kept = record("kept")
    SQLiteStore(path).create(kept)
    reopened = SQLiteStore(path)
    assert reopened.get(kept["Id"]) == kept
    assert reopened._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _create_in_child(path: str, name: str) -> None:
    SQLiteStore(path).create(record(name))


def test_sqlite_is_shared_by_processes(tmp_path: Path) -> None:
    """Gunicorn workers each open their own connection to the one file and see each other's writes."""
    path = str(tmp_path / "r.sqlite3")
    store = SQLiteStore(path)
    store.create(record("parent"))
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_create_in_child, args=(path, f"child{i}")) for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    items, _ = store.list(10, None)
    assert sorted(i["Name"] for i in items) == ["child0", "child1", "child2", "parent"]


def test_an_unwritable_sqlite_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="RECOMMENDER_DB_PATH"):
        SQLiteStore(str(blocker / "r.sqlite3")).get("x")


def test_a_missing_dynamodb_table_is_a_store_error(dummy_aws: None) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        with pytest.raises(StoreError, match="RECOMMENDER_TABLE"):
            DynamoDBStore("no-such-table", lambda: client).get("x")


def test_the_app_keeps_configurations_in_dynamodb_when_told(make_app: Any, dummy_aws: None) -> None:
    """RECOMMENDER_STORE=dynamodb: the admin API writes the table, and a second app (another host) reads it."""
    key = "admin-key-0123456789abcdef"
    settings = {"recommender_store": "dynamodb", "recommender_table": TABLE, "aws_region": "us-east-1",
                "admin_api_keys": key}
    with mock_aws():
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName=TABLE, KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
        first = make_app(**settings).test_client()
        created = first.post("/v1/recommenders", json={**BODY, "RecommendationsDisplayName": "Picks"},
                             headers={"X-API-Key": key})
        assert created.status_code == 201
        config_id = created.get_json()["Id"]
        item = boto3.client("dynamodb", region_name="us-east-1").get_item(TableName=TABLE, Key={"Id": {"S": config_id}})
        assert item["Item"]["Id"]["S"] == config_id

        other_host = make_app(**settings).test_client()
        assert other_host.get(f"/v1/recommenders/{config_id}", headers={"X-API-Key": key}).get_json() == \
            created.get_json()
        assert other_host.delete(f"/v1/recommenders/{config_id}", headers={"X-API-Key": key}).status_code == 200
        assert first.get(f"/v1/recommenders/{config_id}", headers={"X-API-Key": key}).status_code == 404
