"""Recommender configurations under gunicorn: every worker sees one SQLite file, and a restart loses nothing."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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

    # Which worker accepts a connection is the kernel's choice: ask in concurrent rounds until each has answered.
    workers: set[int] = set()
    with ThreadPoolExecutor(max_workers=10) as pool:
        for round_ in range(10):
            ids = {f"admin-{round_}-{i}" for i in range(30)}
            answers = dict(zip(ids, pool.map(  # noqa: B905 - one answer per id
                lambda request_id: admin_get(f"{server.url}/v1/recommenders/{config_id}", request_id), ids)))
            assert {r.status_code for r in answers.values()} == {200}
            workers |= set(server.served_by(ids).values())
            if len(workers) == WORKERS:
                break
    assert len(workers) == WORKERS  # each worker opened the file itself and found the configuration

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
