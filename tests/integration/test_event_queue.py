"""POST /events' queue on real Redis and on SQLite shared by processes: deduplication, one claim per event,
leases, and events queued before a restart sent once after it."""
from __future__ import annotations

import json
import os
import stat
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from flask import Flask

from app import start_background
from app.components import components
from app.events.putevents import Event
from app.events.queue import REDIS_KEYS, EventQueue, RedisEventQueue, SQLiteEventQueue
from tests.standin.personalize_events import EventsStandinHandle, start_events_standin

TRACKING_ID = "tracker-1"


def events(ids: range | list[int], user: str = "u1") -> list[Event]:
    return [Event(user_id=user, session_id="s1", event_type="click", sent_at=1_700_000_000 + n, event_id=f"e{n}",
                  item_id=str(n), properties='{"n": 1}', impression=("1", "2")) for n in ids]


def open_queue(kind: str, where: str) -> EventQueue:
    if kind == "redis":
        return RedisEventQueue(redis.Redis.from_url(where))
    return SQLiteEventQueue(where)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(kind, where): a SQLite file of the test's own, or the tests' own Redis, emptied."""
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "data" / "events.sqlite3")
    else:
        yield "redis", request.getfixturevalue("redis_url")


def test_put_deduplicates_claim_leases_done_removes(store: tuple[str, str]) -> None:
    queue = open_queue(*store)
    assert queue.put(events(range(5))) == 5
    assert queue.put(events(range(3, 8))) == 3  # e3 and e4 were seen: a retried request
    assert queue.depth() == 8
    claimed = queue.claim(6, lease_seconds=0.3)
    assert [e.event_id for e in claimed] == [f"e{n}" for n in range(6)]
    assert claimed[0] == events([0])[0]  # every field back as it went in
    assert [e.event_id for e in queue.claim(100, 30)] == ["e6", "e7"]  # the leased ones are not offered again
    queue.done(["e0", "e1"])
    deadline = time.monotonic() + 5
    again: list[Event] = []
    while not again and time.monotonic() < deadline:  # the 0.3 s lease ends: the rest come back
        again = queue.claim(100, 30)
    assert [e.event_id for e in again] == ["e2", "e3", "e4", "e5"]
    queue.retry_later(["e2"], 0)
    assert [e.event_id for e in queue.claim(100, 30)] == ["e2"]
    assert queue.put(events([0])) == 0  # sent an hour ago at most: still recognised
    assert queue.depth() == 6
    if store[0] == "sqlite":  # it holds user ids: the service's user's only
        assert stat.S_IMODE(os.stat(store[1]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(store[1])).st_mode) == 0o700


def test_redis_keys_share_one_cluster_slot(redis_url: str) -> None:
    """A script may only touch keys of one slot in a Redis Cluster: every key of the queue has the same hash tag."""
    client = redis.Redis.from_url(redis_url)
    RedisEventQueue(client).put(events([1]))
    assert {key_slot(key.encode()) for key in REDIS_KEYS} == {key_slot(b"{recs-events}")}
    assert {k.decode() for k in client.keys("*")} <= set(REDIS_KEYS)


def _work_in_child(kind: str, where: str, offset: int, result: str) -> None:
    """Put 150 events (50 shared with the other children), then claim until nothing is due."""
    queue = open_queue(kind, where)
    queue.put(events(list(range(offset, offset + 100)) + list(range(10_000, 10_050))))
    claimed: list[str] = []
    while batch := queue.claim(7, lease_seconds=60):
        claimed += [e.event_id for e in batch]
        queue.done([e.event_id for e in batch])
    Path(result).write_text(json.dumps(claimed))


def test_processes_share_the_queue_and_each_event_is_claimed_once(store: tuple[str, str], tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # as gunicorn makes its workers
    results = [str(tmp_path / f"claimed-{i}.json") for i in range(3)]
    children = [context.Process(target=_work_in_child, args=(*store, i * 100, results[i])) for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    claimed = Counter(event_id for path in results for event_id in json.loads(Path(path).read_text()))
    leftover = open_queue(*store).claim(1000, 60)
    claimed.update(e.event_id for e in leftover)  # a child may finish before another one's last put
    assert set(claimed.values()) == {1}
    assert len(claimed) == 350


@pytest.fixture
def standin(dummy_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[EventsStandinHandle]:
    with start_events_standin([TRACKING_ID]) as handle:
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", handle.url)
        yield handle


def test_events_queued_while_personalize_is_down_are_sent_once_after_a_restart(
        store: tuple[str, str], make_app: Callable[..., Flask], standin: EventsStandinHandle) -> None:
    kind, where = store
    settings = {"personalize_tracking_id": TRACKING_ID, "aws_region": "us-east-1"}
    if kind == "redis":
        settings["cache_redis_url"] = where
    standin.set_fault("error500")
    before = make_app(**settings)
    body = {"user_id": "u1", "events": [{"event_type": "click", "item_id": str(n)} for n in range(25)]}
    response = before.test_client().post("/events", json=body)
    assert response.status_code == 202 and response.json["queued"] == 25
    forwarder = components(before).events
    deadline = time.monotonic() + 10
    while standin.calls()["total"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the drainer tried, and failed
    forwarder.stop()  # the restart: this worker is gone, its events are in the store
    assert forwarder.queue.depth() == 25
    assert standin.calls()["events"] == []
    standin.set_fault("ok")
    after = make_app(**settings)
    start_background(after)  # as gunicorn does in every new worker, before any request
    try:
        deadline = time.monotonic() + 15
        while components(after).events.queue.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        calls = standin.calls()
        assert len(calls["event_ids"]) == 25
        assert set(calls["event_ids"].values()) == {1}
    finally:
        components(after).events.stop()
