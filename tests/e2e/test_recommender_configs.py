"""Recommender configurations under gunicorn: every worker sees one SQLite file, and a restart loses nothing."""
from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import CAMPAIGN_ARN, WORKERS, free_port, get, service_env
from tests.unit.test_import_pinpoint import IDS, SAVED_LISTING

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


def test_flask_import_pinpoint_then_the_service_answers_the_original_ids(gunicorn_factory: Any, tmp_path: Path,
                                                                          standin: Any) -> None:
    """As the README says: `flask --app wsgi import-pinpoint FILE` from the repo root, twice, then serve."""
    settings = {"ADMIN_API_KEYS": ADMIN_KEY, "RECOMMENDER_DB_PATH": str(tmp_path / "state" / "recs.sqlite3")}
    listing = tmp_path / "recommenders.json"
    listing.write_text(SAVED_LISTING, encoding="utf-8")
    env = service_env(standin.url, free_port(), **settings)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "import-pinpoint", str(listing)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)

    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == "created 2, unchanged 0, replaced 0, conflict 0, invalid 0"
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "created 0, unchanged 2, replaced 0, conflict 0, invalid 0"

    server = gunicorn_factory(**settings)
    listed = orjson.loads(SAVED_LISTING)["ListRecommenderConfigurationsResponse"]["Item"]
    for config_id, expected in zip(IDS, listed, strict=True):
        assert admin_get(f"{server.url}/v1/recommenders/{config_id}", f"import-{config_id}").json() == expected
