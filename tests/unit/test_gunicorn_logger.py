"""gunicorn's "Listening at" lines name the address even when the master has no socket (reuse_port)."""
from __future__ import annotations

import logging
import runpy
from pathlib import Path

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



# gunicorn applies logconfig_dict with logging.config.dictConfig, which rewires this process's loggers: the
# checks run in a child process of their own.
CHILD = """
import json, os, runpy, sys
from gunicorn.config import Config
from app.telemetry.logs import GunicornLogger
cfg = Config()
cfg.set("logconfig_dict", runpy.run_path("gunicorn.conf.py")["logconfig_dict"])
cfg.set("accesslog", os.environ.get("ACCESS_LOG") or None)
logger = GunicornLogger(cfg)
logger.error("Worker (pid:%s) was sent SIGKILL!", 42)
print(json.dumps({"access_log_enabled": logger.access_log_enabled}))
"""


def run_logger(access_log: str | None, folder: Path) -> tuple[dict, list[str]]:
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "ACCESS_LOG"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # else gunicorn.conf.py makes a folder of its own in /tmp
    if access_log is not None:
        env["ACCESS_LOG"] = access_log
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip().splitlines()


@pytest.mark.parametrize("access_log, enabled", [(None, False), ("-", True)])
def test_gunicorns_access_log_stays_off_without_access_log(access_log: str | None, enabled: bool,
                                                           tmp_path: Path) -> None:
    """gunicorn turns its access log on whenever logconfig_dict is set; it must stay off (and cost no request
    anything) unless ACCESS_LOG asks for it."""
    state, _ = run_logger(access_log, tmp_path)
    assert state["access_log_enabled"] is enabled


def test_gunicorns_own_lines_are_json(tmp_path: Path) -> None:
    import json

    _, err = run_logger(None, tmp_path)
    lines = [json.loads(line) for line in err if line.startswith("{")]
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("gunicorn.error", "ERROR", "Worker (pid:42) was sent SIGKILL!")]


def test_keep_alive_and_connections_are_settings_checked_at_start(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("KEEPALIVE_SECONDS", "65")
    monkeypatch.setenv("WORKER_CONNECTIONS", "4000")
    settings = runpy.run_path("gunicorn.conf.py")
    assert (settings["keepalive"], settings["worker_connections"]) == (65, 4000)
    monkeypatch.delenv("KEEPALIVE_SECONDS")
    assert runpy.run_path("gunicorn.conf.py")["keepalive"] == 5
    monkeypatch.setenv("KEEPALIVE_SECONDS", "1h")
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path("gunicorn.conf.py")
    assert str(stopped.value) == "Cannot start: KEEPALIVE_SECONDS must be a whole number of at least 1 and at most 3600, got '1h'."
