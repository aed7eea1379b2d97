"""A failure that repeats with every request of a send is logged once a minute per kind, with a count."""
from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Flask

from app.errors import UnavailableError
from app.telemetry.logs import Occasional


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_due_once_a_minute_and_counts_what_it_held_back() -> None:
    clock = Clock()
    occasional = Occasional(60, clock=clock)
    assert occasional.due("a") == 0
    assert [occasional.due("a") for _ in range(3)] == [None, None, None]
    assert occasional.due("b") == 0  # another kind has its own minute
    clock.now += 60
    assert occasional.due("a") == 3
    assert occasional.due("a") is None


def test_a_5xx_repeated_per_request_is_logged_once(make_app: Callable[..., Flask],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()

    @app.get("/boom")
    def boom() -> None:
        raise UnavailableError("Not ready.", code="not_ready")

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("bug")

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="app.errors"):
        statuses = [client.get("/boom").status_code for _ in range(50)] + [
            client.get("/crash").status_code for _ in range(50)]
    assert statuses == [503] * 50 + [500] * 50
    messages = [r.getMessage() for r in caplog.records if r.name == "app.errors"]
    assert messages == ["not_ready: Not ready.", "unhandled error"]
