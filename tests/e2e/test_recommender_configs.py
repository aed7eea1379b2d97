"""Recommender configurations under gunicorn: every worker sees one SQLite file, and a restart loses nothing."""
from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

from tests.e2e.conftest import CAMPAIGN_ARN, WORKERS, get

ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
BODY = {"Name": "e2e", "RecommendationProviderUri": CAMPAIGN_ARN,
        "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/RecommendationsReader",
        "RecommendationsPerMessage": 2, "RecommendationsDisplayName": "Top picks"}


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


def test_what_crashed_the_admin_api_is_a_client_error_under_gunicorn(gunicorn_factory: Any, tmp_path: Path) -> None:
    """Issue 12's reproductions over real HTTP: gunicorn reads a chunked body itself (wsgi.input_terminated)."""
    server = gunicorn_factory(ADMIN_API_KEYS=ADMIN_KEY, RECOMMENDER_DB_PATH=str(tmp_path / "recs.sqlite3"))
    url, headers = server.url + "/v1/recommenders", {"X-API-Key": ADMIN_KEY, "Connection": "close",
                                                     "Content-Type": "application/json"}

    def chunks(body: bytes) -> Iterator[bytes]:  # a generator body: requests sends it chunked, no Content-Length
        for start in range(0, len(body), 65_536):
            yield body[start:start + 65_536]

    huge = orjson.dumps({**BODY, "Description": "x" * 10_000_000})
    refused = requests.post(url, data=chunks(huge), headers=headers, timeout=30)
    assert refused.status_code == 413 and set(refused.json()) == {"Message", "RequestID"}
    assert "Content-Length" not in refused.request.headers
    created = requests.post(url, data=chunks(orjson.dumps(BODY)), headers=headers, timeout=10)
    assert created.status_code == 201, created.text

    deep = b'{"Attributes": ' + b"[" * 990 + b"]" * 990 + b"}"
    assert requests.post(url, data=deep, headers=headers, timeout=10).status_code == 400
    for query in ("page-size=%C2%B2", f"token={base64.urlsafe_b64encode(b'9223372036854775808').decode()}",
                  f"token={base64.urlsafe_b64encode(b'true').decode()}"):
        answer = requests.get(f"{url}?{query}", headers=headers, timeout=10)
        assert answer.status_code == 400 and set(answer.json()) == {"Message", "RequestID"}, query
    assert "Traceback" not in server.output()
