"""The JSON line each request writes to stderr, its request id, and what it must never contain."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import select
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from app.components import components
from app.errors import UpstreamError
from app.settings import ConfigError, Settings
from app.telemetry.logs import JsonFormatter, RequestLog, request_id
from tests.conftest import SAMPLE_BATCH, SAMPLE_CATALOG, FakeRecommender

USER_KEY = "log-user-id-key-0123456789abcdef"
API_KEY = "api-key-never-logged-0123456789"
RAW_USER = "jane.doe@example.com"


def output(app: Flask, capfd: pytest.CaptureFixture[str]) -> Any:
    """What the process printed, once the app's pending request lines are written (they go out in batches)."""
    components(app).request_log.flush()
    return capfd.readouterr()


def request_lines(captured: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in captured.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "request"]


def expected_hash(user_id: str) -> str:
    """HMAC-SHA256 with the key, hex, first 16 characters: what `openssl dgst -sha256 -hmac KEY` prints."""
    return hmac.new(USER_KEY.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:16]


@pytest.fixture
def logged_app(make_app: Callable[..., Flask]) -> Flask:
    fake = FakeRecommender({RAW_USER: ["1000", "1037"]})
    return make_app({"recommender": fake}, log_user_id_key=USER_KEY, api_keys=API_KEY)


def test_one_line_per_request_with_its_fields(logged_app: Flask, capfd: pytest.CaptureFixture[str]) -> None:
    client = logged_app.test_client()
    response = client.get("/recommendations", query_string={"user_id": RAW_USER, "num_results": 2},
                          headers={"X-API-Key": API_KEY, "X-Request-Id": "braze-abc.123"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "braze-abc.123"

    [line] = request_lines(output(logged_app, capfd).err)
    assert line.pop("time").endswith("Z")
    assert isinstance(line.pop("ms"), float)
    assert isinstance(line.pop("pid"), int)
    assert line == {
        "level": "INFO", "logger": "request", "message": "request", "request_id": "braze-abc.123", "method": "GET",
        "route": "/recommendations", "status": 200, "cache": "MISS", "source": "fake", "fallback_reason": None,
        "user": expected_hash(RAW_USER),
    }


def test_fallback_reason_and_error_statuses_are_logged(make_app: Callable[..., Flask],
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    fake = FakeRecommender()
    fake.error = UpstreamError("slow", code="upstream_timeout", status=504)
    app = make_app({"recommender": fake})
    client = app.test_client()
    client.get("/recommendations", query_string={"user_id": "user123"})
    client.get("/recommendations")  # neither user_id nor item_id
    fallback, invalid = request_lines(output(app, capfd).err)
    assert (fallback["status"], fallback["source"], fallback["fallback_reason"]) == (200, "batch", "upstream_timeout")
    assert (invalid["status"], invalid["cache"], invalid["source"]) == (400, None, None)


@pytest.mark.parametrize("sent", [None, "", "x" * 129, "bad\nid", "del\x7fid", "caf\u00e9", "tab\tid"])
def test_a_missing_or_odd_request_id_is_replaced_by_a_generated_one(
    logged_app: Flask, capfd: pytest.CaptureFixture[str], sent: str | None
) -> None:
    raw = {"HTTP_X_REQUEST_ID": sent} if sent is not None else {}  # as the server passes it, unchecked
    response = logged_app.test_client().get("/healthz", environ_overrides=raw)
    generated = response.headers["X-Request-Id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    [line] = request_lines(output(logged_app, capfd).err)
    assert line["request_id"] == generated


def test_request_ids_are_unique() -> None:
    assert len({request_id(None) for _ in range(1000)}) == 1000


def test_raw_user_id_api_key_and_query_never_reach_the_output(logged_app: Flask,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    client = logged_app.test_client()
    basic = base64.b64encode(f"braze:{API_KEY}".encode()).decode()
    client.get("/recommendations", query_string={"user_id": RAW_USER}, headers={"Authorization": f"Basic {basic}"})
    client.get("/recommendations", query_string={"user_id": RAW_USER, "api_key": API_KEY},
               headers={"X-API-Key": API_KEY})
    client.get("/recommendations", query_string={"user_id": RAW_USER}, headers={"X-API-Key": "wrong-" + API_KEY})
    captured = output(logged_app, capfd)
    printed = captured.out + captured.err
    assert [line["status"] for line in request_lines(printed)] == [200, 200, 401]
    for secret in (RAW_USER, "jane.doe", API_KEY, basic, "user_id"):
        assert secret not in printed


def test_without_a_key_no_user_field_at_all(app: Flask, capfd: pytest.CaptureFixture[str]) -> None:
    app.test_client().get("/recommendations", query_string={"user_id": "u1"})
    [line] = request_lines(output(app, capfd).err)
    assert "user" not in line and "u1" not in json.dumps(line)


def test_request_lines_follow_log_level(make_app: Callable[..., Flask], capfd: pytest.CaptureFixture[str],
                                        fake_recommender: FakeRecommender) -> None:
    app = make_app({"recommender": fake_recommender}, log_level="WARNING")
    app.test_client().get("/healthz")
    assert request_lines(output(app, capfd).err) == []


def test_a_short_user_id_key_stops_start_up_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="LOG_USER_ID_KEY") as info:
        Settings.from_mapping({"catalog_uri": str(SAMPLE_CATALOG), "recommendations_uri": str(SAMPLE_BATCH),
                               "log_user_id_key": "short-secret"})
    assert "short-secret" not in str(info.value)


def test_other_log_records_are_json_lines_too() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("app.recommendations.service", logging.ERROR, __file__, 1, "source %s crashed", ("x",),
                                   sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "app.recommendations.service", "source x crashed")
    assert "ValueError: boom" in line["exception"]


def test_app_logs_during_a_request_carry_its_request_id(app: Flask) -> None:
    record = logging.LogRecord("app.recommendations.service", logging.WARNING, __file__, 1, "batch fallback unavailable", (), None)
    with app.test_request_context("/recommendations", headers={"X-Request-Id": "send-42"}):
        app.preprocess_request()  # runs the before_request hooks
        line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "send-42"
    assert "request_id" not in json.loads(JsonFormatter().format(record))


def test_request_lines_wait_for_a_full_pipe_write_and_never_exceed_one(capfd: pytest.CaptureFixture[str]) -> None:
    """Lines go out together, in writes the pipe keeps whole (PIPE_BUF), and none is lost or split."""
    writes: list[bytes] = []
    log = RequestLog(None, flush_seconds=60)
    log._write = writes.append  # type: ignore[method-assign]
    for n in range(100):
        log.write({"request_id": f"r{n:03d}", "status": 200})
    assert len(writes) < 20  # about 3 KB of lines per write, not one write each
    log.flush()
    assert all(len(chunk) <= select.PIPE_BUF for chunk in writes)
    lines = [json.loads(text) for chunk in writes for text in chunk.splitlines()]
    assert [line["request_id"] for line in lines] == [f"r{n:03d}" for n in range(100)]


def test_pending_request_lines_are_written_within_the_flush_interval(tmp_path: Any) -> None:
    """A quiet worker's last lines do not wait for more traffic: the background flusher writes them."""
    path = tmp_path / "log"
    with path.open("wb") as out:
        log = RequestLog(None, fd=out.fileno(), flush_seconds=0.05)
        log.write({"request_id": "only-one"})
        assert path.read_bytes() == b""  # pending
        deadline = time.monotonic() + 5
        while b"only-one" not in path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert json.loads(path.read_bytes())["request_id"] == "only-one"
