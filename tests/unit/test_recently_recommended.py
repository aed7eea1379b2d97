"""The items recommended most lately (app/sources/popularity.py): counted in process, flushed to a shared store."""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from app.components import components
from app.sources.popularity import RecentlyRecommended, SQLiteCounts
from tests.conftest import FakeRecommender


class Clock:
    def __init__(self, now: float = 1_000 * 3600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingStore:
    """A count store that records its calls and can fail."""

    def __init__(self) -> None:
        self.added: list[tuple[int, dict[str, int]]] = []
        self.tops = 0
        self.fail = False

    def add(self, hour: int, counts: dict[str, int], keep_hours: int) -> None:
        if self.fail:
            raise sqlite3.OperationalError("database is locked")
        self.added.append((hour, dict(counts)))

    def top(self, hours: range, limit: int) -> list[str]:
        self.tops += 1
        if self.fail:
            raise sqlite3.OperationalError("database is locked")
        return ["x"]


def counter(store: object, clock: Clock, **kwargs: float) -> RecentlyRecommended:
    return RecentlyRecommended(store, keep_hours=24, clock=clock, start_flusher=False, **kwargs)  # type: ignore[arg-type]


def test_counts_are_summed_in_process_and_written_in_one_flush() -> None:
    store, clock = RecordingStore(), Clock()
    recent = counter(store, clock)
    recent.count(["a", "b"])
    recent.count(["b"])
    assert store.added == []  # the request path only touched a dict
    recent.flush()
    recent.flush()  # nothing new: nothing written
    assert store.added == [(1000, {"a": 1, "b": 2})]


def test_most_recommended_first_over_the_window_only(tmp_path: Path) -> None:
    clock = Clock()
    recent = counter(SQLiteCounts(str(tmp_path / "recent.sqlite3")), clock, top_seconds=0)
    recent.count(["old"] * 5)
    recent.flush()
    clock.now += 3600
    for answer in (["a", "b"], ["b", "c"], ["b"], ["c"]):
        recent.count(answer)
    recent.flush()
    assert recent.top() == ["old", "b", "c", "a"]  # 5, 3, 2, 1
    clock.now += 23 * 3600  # the "old" hour is now 24 hours back: out of a 24-hour window
    assert recent.top() == ["b", "c", "a"]


def test_a_worker_reads_the_list_at_most_every_top_seconds() -> None:
    store, clock = RecordingStore(), Clock()
    recent = counter(store, clock, top_seconds=30)
    assert [recent.top() for _ in range(5)] == [["x"]] * 5
    clock.now += 31
    recent.top()
    assert store.tops == 2


def test_a_failing_store_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = RecordingStore(), Clock()
    recent = counter(store, clock, top_seconds=0)
    assert recent.top() == ["x"]
    store.fail = True
    with caplog.at_level(logging.INFO, logger="app.sources.popularity"):
        for _ in range(5):
            recent.count(["a"])
            recent.flush()
            assert recent.top() == ["x"]  # the last list read
        store.fail = False
        recent.top()
    messages = [r.getMessage() for r in caplog.records if r.name == "app.sources.popularity"]
    assert len(messages) == 2, messages
    assert "unavailable" in messages[0] and "again" in messages[1]


def test_only_misses_are_counted(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": FakeRecommender({"u1": ["1000", "1037"]})})
    client = app.test_client()
    recent = components(app).service.recent
    client.get("/recommendations?user_id=u1")  # a miss
    for _ in range(3):
        assert client.get("/recommendations?user_id=u1").headers["X-Cache"] == "HIT"
    assert dict(recent._pending) == {"1000": 1, "1037": 1}


def test_the_counts_file_is_private(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app({"recommender": FakeRecommender({"u1": ["1000"]})})
    app.test_client().get("/recommendations?user_id=u1")
    components(app).service.recent.flush()
    path = tmp_path / "data" / "recently-recommended.sqlite3"
    assert path.stat().st_mode & 0o777 == 0o600
