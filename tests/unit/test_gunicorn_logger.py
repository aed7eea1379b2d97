"""gunicorn's "Listening at" lines name the address even when the master has no socket (reuse_port)."""
from __future__ import annotations

import logging

import pytest
from gunicorn.config import Config

from app.telemetry.logs import GunicornLogger


@pytest.mark.parametrize("message, args, expected", [
    ("Listening at: %s (%s)", ("", 42), "Listening at: http://127.0.0.1:8123, on a socket per worker (reuse_port) (42)"),
    ("Listening at: %s", ("",), "Listening at: http://127.0.0.1:8123, on a socket per worker (reuse_port)"),  # reload
    ("Listening at: %s (%s)", ("http://127.0.0.1:8123", 42), "Listening at: http://127.0.0.1:8123 (42)"),
])
def test_listening_line_names_the_address(message: str, args: tuple, expected: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    cfg = Config()
    cfg.set("bind", ["127.0.0.1:8123"])
    logger = GunicornLogger(cfg)
    logger.error_log.propagate = True  # gunicorn stops it; caplog listens at the root
    with caplog.at_level(logging.INFO, logger="gunicorn.error"):
        logger.info(message, *args)
    assert [r.getMessage() for r in caplog.records] == [expected]
