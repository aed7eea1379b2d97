"""Metrics and logs of `gunicorn wsgi:app` with several workers: /metrics adds every worker's counts up,
and nothing gunicorn or the app prints holds a raw user id or an API key."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import E2E, Gunicorn, get
from tests.standin.personalize import StandinHandle

USER_KEY = "e2e-log-user-id-key-0123456789"
API_KEY = "e2e-api-key-never-logged-0123456789"
USERS = ("jane.doe@example.com", "Ana María", "vip+1@example.com")


def scrape(server: Gunicorn, request_id: str, **headers: str) -> tuple[dict[tuple[str, str], float], int]:
    """Return {(sample name, sorted labels): value} from /metrics, and the pid of the worker that answered."""
    response = requests.get(server.url + "/metrics", headers={"Connection": "close", "X-Request-Id": request_id,
                                                              "X-E2E-Request": request_id, **headers}, timeout=10)
    assert response.status_code == 200, response.text
    samples = {(s.name, json.dumps(s.labels, sort_keys=True)): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    return samples, server.served_by({request_id})[request_id]


def value(samples: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    return samples.get((name, json.dumps(labels, sort_keys=True)), 0.0)


def served(samples: dict[tuple[str, str], float]) -> float:
    return value(samples, "recs_http_request_duration_seconds_count", route="/recommendations", status="200")


def test_metrics_add_up_the_requests_of_every_worker(server: Gunicorn, standin: StandinHandle) -> None:
    before, _ = scrape(server, "scrape-before")
    ids = [f"metrics-{n:02d}" for n in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(
            lambda rid: get(server.url + "/recommendations", {"user_id": "metrics-user", "num_results": 3}, rid), ids))
    assert [a.status_code for a in answers] == [200] * 40
    served_by = server.served_by(set(ids))
    assert len(set(served_by.values())) >= 2, f"one worker served every request: {served_by}"

    # Whichever worker answers /metrics, it reports all 40; keep scraping until two different workers have.
    scrapers: set[int] = set()
    for n in range(40):
        after, pid = scrape(server, f"scrape-{n:02d}")
        assert served(after) - served(before) == 40
        assert value(after, "recs_cache_results_total", result="MISS") - \
            value(before, "recs_cache_results_total", result="MISS") + \
            value(after, "recs_cache_results_total", result="HIT") - \
            value(before, "recs_cache_results_total", result="HIT") == 40
        scrapers.add(pid)
        if len(scrapers) >= 2:
            break
    assert len(scrapers) >= 2, "every scrape landed on one worker"
    personalize_calls = value(after, "recs_personalize_call_duration_seconds_count", outcome="ok") - \
        value(before, "recs_personalize_call_duration_seconds_count", outcome="ok")
    assert personalize_calls == standin.calls()["total"] >= 1
    assert value(after, "recs_source_items", source="catalog") == 40


def test_logs_carry_hashed_user_ids_only_and_no_keys(gunicorn_factory: Any) -> None:
    # gunicorn as a user runs it: its own access log off (the default), the app's JSON lines on.
    server: Gunicorn = gunicorn_factory(WEB_CONCURRENCY="2", ACCESS_LOG=None, GUNICORN_CMD_ARGS=None,
                                        LOG_USER_ID_KEY=USER_KEY, API_KEYS=API_KEY)
    basic = base64.b64encode(f"braze:{API_KEY}".encode()).decode()
    for n, user in enumerate(USERS):
        header = {"X-API-Key": API_KEY} if n % 2 else {"Authorization": f"Basic {basic}"}
        response = requests.get(server.url + "/recommendations", params={"user_id": user, "num_results": 2},
                                headers={"Connection": "close", "X-Request-Id": f"privacy-{n}", **header}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-Id"] == f"privacy-{n}"
    denied = requests.get(server.url + "/recommendations", params={"user_id": USERS[0]},
                          headers={"X-API-Key": "wrong-" + API_KEY}, timeout=10)
    assert denied.status_code == 401
    generated = denied.headers["X-Request-Id"]
    server.served_by({f"privacy-{n}" for n in range(len(USERS))} | {generated})  # waits for the lines
    server.stop()
    output = server.output()

    for secret in (*USERS, "jane.doe", "Ana%20Mar", "vip%2B1", API_KEY, basic, "user_id="):
        assert secret not in output, f"{secret!r} is in the output:\n{output}"
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    requests_logged = {line["request_id"]: line for line in lines if line["logger"] == "request"}
    for n, user in enumerate(USERS):
        expected = hmac.new(USER_KEY.encode(), user.encode(), hashlib.sha256).hexdigest()[:16]
        assert requests_logged[f"privacy-{n}"]["user"] == expected
    assert requests_logged[generated]["status"] == 401
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)


def test_a_metrics_folder_from_the_environment_outlives_the_server(gunicorn_factory: Any) -> None:
    """A PROMETHEUS_MULTIPROC_DIR the caller set is theirs, even one named like the folders gunicorn.conf.py
    makes: gunicorn empties it at start but never removes it, so a second server started with the same
    environment (as loadtest.bench does) still boots."""
    folder = Path(tempfile.mkdtemp(prefix="recs-metrics-", dir=E2E["tmpdir"]))
    (folder / "counter_12345.db").write_bytes(b"left by an earlier run")
    first = gunicorn_factory(PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert not (folder / "counter_12345.db").exists()
    assert get(first.url + "/recommendations", {"user_id": "u1"}).status_code == 200
    assert first.stop() == 0
    assert folder.is_dir()

    second = gunicorn_factory(PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert get(second.url + "/recommendations", {"user_id": "u1"}).status_code == 200
    assert second.stop() == 0
    shutil.rmtree(folder)


def test_a_metrics_folder_gunicorn_made_is_removed_at_exit(gunicorn_factory: Any) -> None:
    server = gunicorn_factory(PROMETHEUS_MULTIPROC_DIR=None)
    folders = {path.parent for path in Path(E2E["tmpdir"]).glob("recs-metrics-*/*.db")
               if int(path.stem.rsplit("_", 1)[1]) in server.worker_pids()}
    assert len(folders) == 1  # the workers write into the one folder gunicorn.conf.py made
    assert server.stop() == 0
    assert not folders.pop().exists()
