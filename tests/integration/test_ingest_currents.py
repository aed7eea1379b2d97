"""`flask --app wsgi ingest-currents` as an operator runs it, into the PutEvents stand-in over its rest-json wire
(AWS_ENDPOINT_URL_PERSONALIZE_EVENTS): Currents files written with Braze's schemas, from a folder and from an S3
prefix (moto), sent once each across overlapping deliveries, reruns, a Personalize outage mid-run, a SIGTERM
and a dry run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from click.testing import Result
from flask import Flask

from app.events import dispatch
from app.events.currents import BOT, NO_ITEM
from app.events.putevents import Event, PutEventsSender, SendError
from app.events.wire import SignedPutEvents
from tests.conftest import EVENTS_TRACKER, ROOT, SAMPLE_BATCH, SAMPLE_CATALOG
from tests.integration.conftest import BUCKET
from tests.currents_files import CARD_CLICK, EMAIL_CLICK, PURCHASE, record, write_currents
from tests.standin.personalize_events import EventsStandinHandle

TRACKER = EVENTS_TRACKER
T0 = 1_764_583_200
TRACKED = "https://shop.example.com/p/1740/trail-mix-variety-pack?utm_source=braze&recs_item=1740&recs_rid=RID-7"


@pytest.fixture
def standin(events_standin: EventsStandinHandle) -> EventsStandinHandle:
    return events_standin


@pytest.fixture
def ingest(make_app: Callable[..., Flask]) -> Callable[..., Result]:
    def run(*args: str, **settings: Any) -> Result:
        app = make_app(personalize_tracking_id=TRACKER, aws_region="us-east-1", **settings)
        return app.test_cli_runner().invoke(args=["ingest-currents", *args])

    return run


def click(event_id: str, user: str, url: str | None = TRACKED, **fields: Any) -> dict[str, Any]:
    return record(EMAIL_CLICK, id=event_id, user_id=f"braze-{user}", external_user_id=user, time=T0,
                  dispatch_id=f"dispatch-{user}", url=url, **fields)


def write_send(root: Path) -> set[str]:
    """Write a realistic hour or two of Currents; return the ids that should reach Personalize."""
    write_currents(root, EMAIL_CLICK, [click("c1", "user123"), click("c2", "user456"),
                                       click("bot", "user789", is_suspected_bot_click=True),
                                       click("c3", "user123", url="https://shop.example.com/p/1333/fleece-pullover"),
                                       click("nowhere", "user123", url="https://shop.example.com/account")])
    # An overlapping delivery: c2 again, in the next hour's file.
    write_currents(root, EMAIL_CLICK, [click("c2", "user456"), click("c4", "user456")], hour="2026-12-01-11")
    write_currents(root, PURCHASE, [record(PURCHASE, id="p1", user_id="braze-user123", external_user_id="user123",
                                           time=T0 + 60, product_id="1740", price=19.99)])
    write_currents(root, CARD_CLICK, [record(CARD_CLICK, id="k1", user_id="braze-user1", time=T0)])
    return {"c1", "c2", "c3", "c4", "p1"}


def test_each_event_reaches_personalize_once_and_a_rerun_sends_nothing(
        ingest: Callable[..., Result], standin: EventsStandinHandle, tmp_path: Path) -> None:
    expected = write_send(tmp_path / "currents")

    first = ingest(str(tmp_path / "currents"), "--processes", "2", "--threads", "2")

    assert first.exit_code == 0, first.output
    calls = standin.calls()
    assert calls["event_ids"] == dict.fromkeys(expected, 1)
    by_id = {e["eventId"]: e for e in calls["events"]}
    assert by_id["c1"] == {"eventId": "c1", "eventType": "click", "sentAt": T0, "itemId": "1740",
                           "recommendationId": "RID-7", "userId": "user123", "sessionId": "dispatch-user123",
                           "trackingId": TRACKER}
    assert by_id["c3"]["itemId"] == "1333"  # no recs_item: the catalog's page
    assert (by_id["p1"]["eventType"], by_id["p1"]["itemId"], by_id["p1"]["eventValue"]) == ("purchase", "1740", 19.99)
    assert f"{EMAIL_CLICK} -> click: read 7, sent 4, duplicates 1, skipped ({NO_ITEM}) 1, skipped ({BOT}) 1" \
        in first.stdout
    assert f"{CARD_CLICK}: read 1, sent 0, duplicates 0, skipped (unmapped event type) 1" in first.stdout
    assert "Files: 3 done now, 1 of unmapped types counted, not read; 0 left to do." in first.stdout

    again = ingest(str(tmp_path / "currents"), "--processes", "1")

    assert again.exit_code == 0, again.output
    assert standin.calls()["total"] == calls["total"]  # not one more call
    assert "3 done before, 1 to read" in again.stderr


def test_a_run_that_loses_personalize_midway_stops_and_the_next_run_sends_the_rest_once(
        ingest: Callable[..., Result], standin: EventsStandinHandle, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "RETRY_DELAYS", (0.0,))
    root = tmp_path / "currents"
    expected = set()
    for hour in range(3):
        rows = [click(f"h{hour}-{n}", f"user{n // 10}") for n in range(100)]  # 10 calls of 10
        expected |= {row["id"] for row in rows}
        write_currents(root, EMAIL_CLICK, rows, hour=f"2026-12-01-{hour:02d}")
    fault = standin.state.fault

    def down_after_twelve_calls() -> tuple[str, int, int]:
        mode, latency, status = fault()
        return ("error500", 0, 500) if standin.state.total > 12 else (mode, latency, status)

    monkeypatch.setattr(standin.state, "fault", down_after_twelve_calls)

    stopped = ingest(str(root), "--processes", "1", "--threads", "2")

    assert stopped.exit_code == 1, stopped.output
    assert "Stopped: PutEvents kept failing (InternalServerError)" in stopped.stdout
    assert stopped.stdout.count("  to do: ") == 2  # the first file was done; the second broke off, the third waits
    sent_before = set(standin.calls()["event_ids"])
    assert 0 < len(sent_before) < len(expected)

    monkeypatch.setattr(standin.state, "fault", fault)  # Personalize is back
    resumed = ingest(str(root), "--processes", "1", "--threads", "2")

    assert resumed.exit_code == 0, resumed.output
    assert standin.calls()["event_ids"] == dict.fromkeys(expected, 1)  # nothing lost, nothing twice
    assert "1 done before, 2 to read" in resumed.stderr


def test_a_dry_run_prints_the_calls_and_sends_and_remembers_nothing(
        ingest: Callable[..., Result], standin: EventsStandinHandle, tmp_path: Path) -> None:
    expected = write_send(tmp_path / "currents")

    dry = ingest(str(tmp_path / "currents"), "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert standin.calls()["total"] == 0
    assert '{"userId":"user123","sessionId":"dispatch-user123","eventList":[{"eventId":"c1","eventType":"click"' \
        in dry.stdout
    assert f"{EMAIL_CLICK} -> click: read 7, would send 4, duplicates 1" in dry.stdout
    assert "Dry run: nothing was sent and nothing remembered." in dry.stdout

    real = ingest(str(tmp_path / "currents"), "--processes", "1")

    assert real.exit_code == 0, real.output
    assert standin.calls()["event_ids"] == dict.fromkeys(expected, 1)


def test_an_s3_prefix_is_read_recursively(ingest: Callable[..., Result], standin: EventsStandinHandle, s3: Any,
                                          tmp_path: Path) -> None:
    expected = write_send(tmp_path / "currents")
    for path in (tmp_path / "currents").rglob("*.avro"):
        s3.upload_file(str(path), BUCKET, "exports/" + path.relative_to(tmp_path / "currents").as_posix())
    s3.put_object(Bucket=BUCKET, Key="elsewhere/event_type=users.behaviors.Purchase/x.avro", Body=b"")

    result = ingest(f"s3://{BUCKET}/exports/", "--processes", "1")

    assert result.exit_code == 0, result.output
    assert standin.calls()["event_ids"] == dict.fromkeys(expected, 1)
    assert f"4 Currents files under s3://{BUCKET}/exports/" in result.stderr


def test_with_redis_the_ledger_is_shared_and_an_overlap_in_a_later_delivery_is_sent_once(
        ingest: Callable[..., Result], standin: EventsStandinHandle, tmp_path: Path, redis_url: str) -> None:
    expected = write_send(tmp_path / "first")
    write_currents(tmp_path / "second", EMAIL_CLICK, [click("c4", "user456"), click("c5", "user456")])

    first = ingest(str(tmp_path / "first"), "--processes", "1", cache_redis_url=redis_url)
    second = ingest(str(tmp_path / "second"), "--processes", "1", cache_redis_url=redis_url)

    assert (first.exit_code, second.exit_code) == (0, 0), first.output + second.output
    assert standin.calls()["event_ids"] == dict.fromkeys(expected | {"c5"}, 1)
    assert f"{EMAIL_CLICK} -> click: read 2, sent 1, duplicates 1" in second.stdout
    with redis.Redis.from_url(redis_url) as client:
        days = client.keys("recs:currents:sent:*")
        assert len(days) == 1 and 7 * 86_400 < client.ttl(days[0]) <= 8 * 86_400
        assert len(client.keys("recs:currents:file:*")) == 4
    assert not (tmp_path / "data" / "currents.sqlite3").exists()


def test_without_a_tracking_id_only_a_dry_run_is_allowed(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    write_send(tmp_path / "currents")
    result = make_app().test_cli_runner().invoke(args=["ingest-currents", str(tmp_path / "currents")])
    assert result.exit_code == 2
    assert "PERSONALIZE_TRACKING_ID is not set" in result.output


def test_the_signed_call_is_the_one_boto3_makes_and_failures_say_whether_to_retry(
        standin: EventsStandinHandle) -> None:
    boto = boto3.client("personalize-events", region_name="us-east-1")
    lean = SignedPutEvents(*SignedPutEvents.endpoint_of(boto), boto3.session.Session().get_credentials())
    events = [Event(user_id="u1", session_id="s1", event_type="click", sent_at=T0, event_id=f"e{n}", item_id="i1",
                    event_value=1.5, recommendation_id="rid", properties='{"a": 1}') for n in range(2)]
    PutEventsSender(lambda: boto, TRACKER).send(events[:1])
    PutEventsSender(lambda: lean, TRACKER).send(events[1:])
    boto.close()
    by_boto, by_lean = standin.calls()["events"]
    assert {**by_boto, "eventId": "e1"} == by_lean

    standin.set_fault("throttle")
    with pytest.raises(SendError) as throttled:
        PutEventsSender(lambda: lean, TRACKER).send(events)
    standin.set_fault("ok")
    with pytest.raises(SendError) as refused:
        PutEventsSender(lambda: lean, "no-such-tracker").send(events)
    lean.close()
    assert (throttled.value.code, throttled.value.retryable) == ("ThrottlingException", True)
    assert (refused.value.code, refused.value.retryable) == ("ResourceNotFoundException", False)


def test_a_run_stopped_with_sigterm_resumes_without_losing_or_repeating_an_event(
        standin: EventsStandinHandle, tmp_path: Path) -> None:
    root = tmp_path / "currents"
    expected = set()
    for hour in range(4):
        rows = [click(f"s{hour}-{n}", f"user{n // 10}") for n in range(300)]  # 30 calls of 10 per file
        expected |= {row["id"] for row in rows}
        write_currents(root, EMAIL_CLICK, rows, hour=f"2026-12-01-{hour:02d}")
    standin.set_fault("latency", latency_ms=20)
    env = {**os.environ, "CATALOG_URI": str(SAMPLE_CATALOG), "RECOMMENDATIONS_URI": str(SAMPLE_BATCH),
           "DATA_DIR": str(tmp_path / "data"), "PERSONALIZE_TRACKING_ID": TRACKER, "AWS_REGION": "us-east-1",
           "LOG_LEVEL": "WARNING", "PUT_EVENTS_MAX_TPS": "100"}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "ingest-currents", str(root), "--processes", "2",
               "--threads", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while standin.calls()["total"] < 15 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 130, out + err
    assert "Interrupted: the events sent so far are remembered" in out
    sent_before = standin.calls()["event_ids"]
    assert 0 < len(sent_before) < len(expected)

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert standin.calls()["event_ids"] == dict.fromkeys(expected, 1)
