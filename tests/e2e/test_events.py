"""POST /events under gunicorn: Personalize Events down for 30 s while events arrive, gunicorn restarted in between,
then back: every event arrives exactly once.

The PutEvents stand-in runs as a process of its own, reached through AWS_ENDPOINT_URL_PERSONALIZE_EVENTS; the
queue is SQLite under the server's DATA_DIR, shared by its 3 workers and by the server started after the restart.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT
from tests.standin.personalize_events import EventsControl

TRACKING_ID = "e2e-tracker"
OUTAGE_SECONDS = 30
EVENTS_PER_REQUEST = 5


@pytest.fixture
def events_standin() -> Iterator[EventsControl]:
    process = subprocess.Popen([sys.executable, "-m", "tests.standin.personalize_events", "--port", "0",
                                "--tracking-id", TRACKING_ID], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first.startswith("LISTENING 127.0.0.1:"), first
        yield EventsControl("http://" + first.split(" ", 1)[1])
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def post_until_accepted(url: str, body: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
    """POST the events, retrying the same body while the server cannot answer (as a careful client does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = requests.post(url + "/events", json=body, headers={"Connection": "close"}, timeout=5)
            if response.status_code == 202:
                return response.json()
            problem = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            problem = repr(exc)
        if time.monotonic() > deadline:
            pytest.fail(f"POST /events was not accepted: {problem}")
        time.sleep(0.2)


def body(number: int) -> dict[str, Any]:
    """Request `number`: one user's events, each told apart by its item and time (ids are derived)."""
    return {"user_id": f"user-{number % 7}", "events": [
        {"event_type": "click", "item_id": str(1000 + i), "sent_at": 1_796_119_200 + number * 10 + i}
        for i in range(EVENTS_PER_REQUEST)]}


def test_events_sent_during_an_outage_and_a_restart_arrive_exactly_once(gunicorn_factory: Any,
                                                                        events_standin: EventsControl,
                                                                        tmp_path: Path) -> None:
    settings = {"PERSONALIZE_TRACKING_ID": TRACKING_ID, "AWS_ENDPOINT_URL_PERSONALIZE_EVENTS": events_standin.url,
                "CACHE_REDIS_URL": None, "DATA_DIR": str(tmp_path / "data"), "PUT_EVENTS_MAX_TPS": "30"}
    server = gunicorn_factory(**settings)
    sent = 0
    for _ in range(4):  # Personalize up: sent at once
        assert post_until_accepted(server.url, body(sent))["queued"] == EVENTS_PER_REQUEST
        sent += 1
    events_standin.set_fault("error500")
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    restarted = False
    while time.monotonic() < outage_ends:
        post_until_accepted(server.url, body(sent))
        sent += 1
        if not restarted and time.monotonic() > outage_ends - OUTAGE_SECONDS / 2:
            server.stop()  # events queued so far live only in the store now
            server = gunicorn_factory(**settings)
            restarted = True
        time.sleep(0.25)
    # a retry of an accepted request (its answer lost, say) is recognised and not queued again
    assert post_until_accepted(server.url, body(sent - 1)) == {"received": EVENTS_PER_REQUEST, "queued": 0,
                                                               "deduplicated": EVENTS_PER_REQUEST}
    during = events_standin.calls()
    events_standin.set_fault("ok")

    expected = sent * EVENTS_PER_REQUEST
    deadline = time.monotonic() + 40
    calls = events_standin.calls()
    while len(calls["event_ids"]) < expected and time.monotonic() < deadline:
        time.sleep(0.25)
        calls = events_standin.calls()
    assert restarted
    assert during["total"] > len(during["call_sizes"]), "the outage refused no call"
    assert len(calls["event_ids"]) == expected, f"{len(calls['event_ids'])} of {expected} events arrived"
    assert set(calls["event_ids"].values()) == {1}, "an event arrived twice"
    assert max(calls["call_sizes"]) <= 10
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert "recs_events_queue_depth 0.0" in metrics
