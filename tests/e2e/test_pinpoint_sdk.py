"""Moving from Pinpoint without rewriting code: boto3 and the AWS CLI, unchanged, against gunicorn.

Neither gets a plugin or an event hook: only the endpoint and an access key of ADMIN_AWS_KEYS. They sign with
AWS Signature Version 4 for `mobiletargeting`, and name errors from X-Amzn-ErrorType.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from tests.e2e.conftest import CAMPAIGN_ARN

KEY_ID = "AKIAE2EADMINKEY00001"
SECRET = "e2e-secret-access-key-0123456789abcdef"
CONFIGURATION = {"Name": "moved-from-pinpoint", "RecommendationProviderUri": CAMPAIGN_ARN,
                 "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/RecommendationsReader",
                 "RecommendationsPerMessage": 3, "RecommendationsDisplayName": "Top picks"}


@pytest.fixture
def server(gunicorn_factory: Any, tmp_path: Path) -> Any:
    """A gunicorn whose admin API only signed requests open (ADMIN_API_KEYS is not set)."""
    return gunicorn_factory(ADMIN_AWS_KEYS=f"{KEY_ID}:{SECRET}", ADMIN_API_KEYS=None,
                            RECOMMENDER_DB_PATH=str(tmp_path / "recommenders.sqlite3"))


def pinpoint(url: str, secret: str = SECRET) -> Any:
    return boto3.client("pinpoint", endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=secret)


def test_boto3_runs_every_call_and_catches_errors_by_class(server: Any) -> None:
    client = pinpoint(server.url)
    created = [client.create_recommender_configuration(CreateRecommenderConfiguration={
        **CONFIGURATION, "Name": f"config-{i}"})["RecommenderConfigurationResponse"] for i in range(3)]
    assert [c["Name"] for c in created] == ["config-0", "config-1", "config-2"]
    first = created[0]
    assert client.get_recommender_configuration(RecommenderId=first["Id"])["RecommenderConfigurationResponse"] \
        == first

    seen, token = [], None
    while True:
        page = client.get_recommender_configurations(PageSize="2", **({"Token": token} if token else {}))
        listing = page["ListRecommenderConfigurationsResponse"]
        assert len(listing["Item"]) <= 2
        seen += [item["Id"] for item in listing["Item"]]
        token = listing.get("NextToken")
        if not token:
            break
    assert seen == [c["Id"] for c in created]

    updated = client.update_recommender_configuration(
        RecommenderId=first["Id"], UpdateRecommenderConfiguration={**CONFIGURATION, "RecommendationsPerMessage": 5})
    assert updated["RecommenderConfigurationResponse"]["RecommendationsPerMessage"] == 5
    deleted = client.delete_recommender_configuration(RecommenderId=first["Id"])
    assert deleted["RecommenderConfigurationResponse"]["Id"] == first["Id"]

    with pytest.raises(client.exceptions.NotFoundException) as missing:
        client.get_recommender_configuration(RecommenderId=first["Id"])
    assert first["Id"] in missing.value.response["Error"]["Message"]
    assert missing.value.response["ResponseMetadata"]["RequestId"]
    with pytest.raises(client.exceptions.BadRequestException) as invalid:
        client.create_recommender_configuration(CreateRecommenderConfiguration={
            **CONFIGURATION, "RecommendationsPerMessage": 6})
    assert "RecommendationsPerMessage" in invalid.value.response["Error"]["Message"]
    with pytest.raises(client.exceptions.BadRequestException):
        client.get_recommender_configurations(PageSize="0")

    stranger = pinpoint(server.url, secret="not-the-secret-0123456789abcdef")
    with pytest.raises(stranger.exceptions.ForbiddenException) as refused:
        stranger.get_recommender_configurations()
    assert "signature does not match" in refused.value.response["Error"]["Message"]
    assert SECRET not in server.output()


def aws_cli(url: str, *args: str, secret: str = SECRET) -> subprocess.CompletedProcess[str]:
    """Run `aws pinpoint ...` as a user would, with only the access key in its environment."""
    executable = Path(sys.executable).with_name("aws")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "AWS_ACCESS_KEY_ID": KEY_ID,
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "eu-west-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"}
    return subprocess.run([sys.executable, str(executable), "pinpoint", *args, "--endpoint-url", url,
                           "--output", "json"], env=env, capture_output=True, text=True, timeout=60, check=False)


def cli_json(url: str, *args: str) -> dict[str, Any]:
    done = aws_cli(url, *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_the_aws_cli_runs_every_call_and_names_errors(server: Any) -> None:
    body = orjson.dumps(CONFIGURATION).decode()
    created = [cli_json(server.url, "create-recommender-configuration", "--create-recommender-configuration",
                        body)["RecommenderConfigurationResponse"] for _ in range(2)]
    record = created[0]
    assert {k: record[k] for k in CONFIGURATION} == CONFIGURATION
    fetched = cli_json(server.url, "get-recommender-configuration", "--recommender-id", record["Id"])
    assert fetched["RecommenderConfigurationResponse"] == record

    first = cli_json(server.url, "get-recommender-configurations", "--page-size", "1")
    page = first["ListRecommenderConfigurationsResponse"]
    rest = cli_json(server.url, "get-recommender-configurations", "--page-size", "1", "--token", page["NextToken"])
    assert [i["Id"] for i in page["Item"] + rest["ListRecommenderConfigurationsResponse"]["Item"]] == \
        [c["Id"] for c in created]

    changed = orjson.dumps({**CONFIGURATION, "Name": "renamed"}).decode()
    updated = cli_json(server.url, "update-recommender-configuration", "--recommender-id", record["Id"],
                       "--update-recommender-configuration", changed)
    assert updated["RecommenderConfigurationResponse"]["Name"] == "renamed"
    cli_json(server.url, "delete-recommender-configuration", "--recommender-id", record["Id"])

    missing = aws_cli(server.url, "get-recommender-configuration", "--recommender-id", record["Id"])
    assert missing.returncode != 0
    assert "An error occurred (NotFoundException) when calling the GetRecommenderConfiguration operation" \
        in missing.stderr
    invalid = aws_cli(server.url, "get-recommender-configurations", "--page-size", "0")
    assert "(BadRequestException)" in invalid.stderr
    refused = aws_cli(server.url, "get-recommender-configurations", secret="not-the-secret-0123456789abcdef")
    assert "(ForbiddenException)" in refused.stderr and "signature does not match" in refused.stderr
