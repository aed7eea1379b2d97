"""Recommender configurations under gunicorn: every worker sees one SQLite file, and a restart loses nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import CAMPAIGN_ARN, WORKERS, get

ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
BODY = {"Name": "e2e", "RecommendationProviderUri": CAMPAIGN_ARN,
        "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/RecommendationsReader",
        "RecommendationsPerMessage": 2}


def admin_get(url: str, request_id: str) -> requests.Response:
    return requests.get(url, headers={"Connection": "close", "X-API-Key": ADMIN_KEY, "X-E2E-Request": request_id},
                        timeout=10)


def test_every_worker_serves_the_configuration_and_a_restart_keeps_it(gunicorn_factory: Any, tmp_path: Path,
                                                                      standin: Any) -> None:
    settings = {"ADMIN_API_KEYS": ADMIN_KEY, "RECOMMENDER_DB_PATH": str(tmp_path / "state" / "recs.sqlite3"),
                # STS is asked for the role; the stand-in answers it with an error, so the fallback must answer.
                "AWS_ENDPOINT_URL_STS": standin.url}
    server = gunicorn_factory(**settings)
    created = requests.post(server.url + "/v1/recommenders", json=BODY, timeout=10,
                            headers={"X-API-Key": ADMIN_KEY, "Connection": "close"})
    assert created.status_code == 201, created.text
    config_id = created.json()["Id"]

    ids = {f"admin-{i}" for i in range(30)}
    answers = {request_id: admin_get(f"{server.url}/v1/recommenders/{config_id}", request_id) for request_id in ids}
    assert {r.status_code for r in answers.values()} == {200}
    assert len(set(server.served_by(ids).values())) == WORKERS  # each worker opened the file itself

    served = get(f"{server.url}/recommendations", {"user_id": "user123", "recommender": config_id})
    assert served.status_code == 200  # the role cannot be assumed here: the fallback answers, never a 5xx
    assert len(served.json()) == 2  # the configuration's RecommendationsPerMessage
    assert served.headers["X-Recommendations-Source"] == "fallback"
    unknown = get(f"{server.url}/recommendations", {"user_id": "user123", "recommender": "nope"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_recommender")

    assert server.stop() == 0
    restarted = gunicorn_factory(**settings)
    again = admin_get(f"{restarted.url}/v1/recommenders/{config_id}", "after-restart")
    assert again.status_code == 200 and again.json() == created.json()
