"""flask import-pinpoint FILE: the listing `aws pinpoint get-recommender-configurations` printed, recreated with
its Ids; a second run changes nothing; a conflicting Id is reported, not overwritten, unless --replace."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from app.commands.import_pinpoint import EXIT_INCOMPLETE, EXIT_NOT_A_LISTING
from app.pinpoint.configs import SQLiteStore, new_record

ADMIN_KEY = "admin-key-0123456789abcdef"

# What `aws pinpoint get-recommender-configurations > recommenders.json` prints (the CLI's JSON output: the
# response's outer key, fields the configuration left empty absent, Pinpoint's 32-hex Ids and dates).
SAVED_LISTING = """{
    "ListRecommenderConfigurationsResponse": {
        "Item": [
            {
                "Attributes": {
                    "Title": "Title",
                    "Genre": "Genre"
                },
                "CreationDate": "2024-03-11T09:12:44.201Z",
                "Description": "Weekly movie picks",
                "Id": "4d1c2a9e0f7b4b8c9a3e5d6f7a8b9c0d",
                "LastModifiedDate": "2025-01-20T16:02:13.877Z",
                "Name": "movies-weekly",
                "RecommendationProviderIdType": "PINPOINT_USER_ID",
                "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/PinpointRecommendations",
                "RecommendationProviderUri": "arn:aws:personalize:us-east-1:123456789012:campaign/movies",
                "RecommendationTransformerUri": "arn:aws:lambda:us-east-1:123456789012:function:pinpoint-transformer",
                "RecommendationsPerMessage": 3
            },
            {
                "CreationDate": "2024-06-02T14:30:00.000Z",
                "Id": "9b8a7c6d5e4f40312a1b2c3d4e5f6a7b",
                "LastModifiedDate": "2024-06-02T14:30:00.000Z",
                "Name": "books-sms",
                "RecommendationProviderIdType": "PINPOINT_ENDPOINT_ID",
                "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/PinpointRecommendations",
                "RecommendationProviderUri": "arn:aws:personalize:eu-west-1:123456789012:campaign/books",
                "RecommendationsDisplayName": "Book picks",
                "RecommendationsPerMessage": 1
            }
        ]
    }
}
"""
IDS = ["4d1c2a9e0f7b4b8c9a3e5d6f7a8b9c0d", "9b8a7c6d5e4f40312a1b2c3d4e5f6a7b"]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(str(tmp_path / "state" / "recommenders.sqlite3"))


@pytest.fixture
def run(make_app: Callable[..., Flask], store: SQLiteStore, tmp_path: Path) -> Callable[..., Result]:
    app = make_app({"recommender_store": store}, admin_api_keys=ADMIN_KEY)

    def invoke(listing: str | dict[str, Any] = SAVED_LISTING, *options: str) -> Result:
        path = tmp_path / "recommenders.json"
        path.write_text(listing if isinstance(listing, str) else json.dumps(listing), encoding="utf-8")
        return app.test_cli_runner().invoke(args=["import-pinpoint", str(path), *options])

    return invoke


def stored(store: SQLiteStore) -> list[dict[str, Any]]:
    return store.list(100, None)[0]


def test_the_importer_on_a_saved_listing_twice(run: Callable[..., Result], store: SQLiteStore,
                                               make_app: Callable[..., Flask]) -> None:
    first = run()
    assert first.exit_code == 0, first.output
    assert first.output.splitlines()[-1] == "created 2, unchanged 0, replaced 0, conflict 0, invalid 0"
    records = stored(store)
    listed = json.loads(SAVED_LISTING)["ListRecommenderConfigurationsResponse"]["Item"]
    assert records == listed  # each with its original Id, dates and every field as Pinpoint returned it

    second = run()
    assert second.exit_code == 0, second.output
    assert second.output.splitlines() == [f"unchanged {i}" for i in IDS] + [
        "created 0, unchanged 2, replaced 0, conflict 0, invalid 0"]
    assert stored(store) == records

    # The Ids templates name are the ones the API answers.
    admin = make_app({"recommender_store": store}, admin_api_keys=ADMIN_KEY).test_client()
    assert admin.get(f"/v1/recommenders/{IDS[0]}", headers={"X-API-Key": ADMIN_KEY}).get_json() == listed[0]


def test_the_listing_without_its_outer_key_is_read_too(run: Callable[..., Result], store: SQLiteStore) -> None:
    inner = json.loads(SAVED_LISTING)["ListRecommenderConfigurationsResponse"]
    result = run({**inner, "NextToken": None})
    assert result.exit_code == 0, result.output
    assert [r["Id"] for r in stored(store)] == IDS


def test_a_listing_with_a_next_token_is_imported_and_says_a_page_is_left(run: Callable[..., Result],
                                                                        store: SQLiteStore) -> None:
    listing = json.loads(SAVED_LISTING)
    listing["ListRecommenderConfigurationsResponse"]["NextToken"] = "page-2-token"
    result = run(listing)
    assert result.exit_code == EXIT_INCOMPLETE
    assert [r["Id"] for r in stored(store)] == IDS
    assert "--token 'page-2-token'" in result.stderr
    assert result.stdout.splitlines()[-1] == "created 2, unchanged 0, replaced 0, conflict 0, invalid 0"


def test_a_conflicting_id_is_reported_and_left_alone_unless_replace(run: Callable[..., Result],
                                                                    store: SQLiteStore) -> None:
    mine = new_record({"RecommendationProviderUri": "arn:aws:personalize:us-east-1:123456789012:campaign/other",
                       "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/Other",
                       "RecommendationsDisplayName": "Other"}) | {"Id": IDS[1]}
    store.create(mine)

    result = run()
    assert result.exit_code == EXIT_INCOMPLETE
    assert f"conflict {IDS[1]}: a different configuration has this Id" in result.output
    assert "RecommendationProviderUri" in result.output and "--replace" in result.output
    assert result.output.splitlines()[-1] == "created 1, unchanged 0, replaced 0, conflict 1, invalid 0"
    assert store.get(IDS[1]) == mine  # not overwritten

    replaced = run(SAVED_LISTING, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert replaced.output.splitlines()[-1] == "created 0, unchanged 1, replaced 1, conflict 0, invalid 0"
    listed = json.loads(SAVED_LISTING)["ListRecommenderConfigurationsResponse"]["Item"]
    assert store.get(IDS[1]) == listed[1]


def test_an_invalid_configuration_is_reported_with_its_id_and_the_rest_imported(run: Callable[..., Result],
                                                                               store: SQLiteStore) -> None:
    listing = json.loads(SAVED_LISTING)
    items = listing["ListRecommenderConfigurationsResponse"]["Item"]
    items[1]["RecommendationsPerMessage"] = 9
    items.append({"Id": "../etc", "RecommendationProviderUri": "x"})
    items.append("not a configuration")
    result = run(listing)
    assert result.exit_code == EXIT_INCOMPLETE
    assert f"invalid {IDS[1]}: RecommendationsPerMessage:" in result.output
    assert "invalid ../etc: Id:" in result.output
    assert "invalid #4: not a JSON object" in result.output
    assert result.output.splitlines()[-1] == "created 1, unchanged 0, replaced 0, conflict 0, invalid 3"
    assert [r["Id"] for r in stored(store)] == IDS[:1]


@pytest.mark.parametrize("listing", ["not json", "[]", '{"Items": []}', '{"ListRecommenderConfigurationsResponse": 1}'])
def test_a_file_that_is_not_a_listing_imports_nothing(run: Callable[..., Result], store: SQLiteStore,
                                                      listing: str) -> None:
    result = run(listing)
    assert result.exit_code == EXIT_NOT_A_LISTING
    assert "get-recommender-configurations" in result.output or "recommenders.json" in result.output
    assert stored(store) == []
