"""End-to-end fixtures: gunicorn started from the repo root the way a user starts it, the Personalize stand-in,
and the tests' own redis-server (tests/redis_server.py) as the shared answer cache.

`gunicorn wsgi:app` reads gunicorn.conf.py (PORT, WEB_CONCURRENCY, ...). The only additions are
ACCESS_LOG and GUNICORN_CMD_ARGS with an access-log format that records each request's worker pid and the
test's X-E2E-Request header, so tests can tell which worker served which request without touching the app.
The same id goes in X-Request-Id, so the app's own JSON request line (with its pid) tells it too when a
test runs gunicorn with its default logging.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import requests

from tests.conftest import ROOT, SAMPLE_CATALOG
from tests.standin.personalize import StandinHandle, items_from, start_standin

CAMPAIGN_ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/e2e"
# Set by the session's `e2e_session` fixture: the answer cache every server shares unless a test says otherwise,
# and the temporary folder servers are given (TMPDIR), so tests look only at the folders their servers made.
E2E: dict[str, str] = {}
WORKERS = 3
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# pid, the test's request id and the status of every request, one line each on gunicorn's stdout.
ACCESS_FORMAT = "E2E-ACCESS pid=%(p)s req=%({x-e2e-request}i)s status=%(s)s"
ACCESS_LINE = re.compile(r"E2E-ACCESS pid=<(\d+)> req=(\S+) status=(\d+)")
REQUEST_LINE = re.compile(r'"logger":"request".*"request_id":"([^"]+)".*"pid":(\d+)')

# Settings the service reads; none may leak in from the environment running the tests.
SERVICE_VARIABLES = (
    "HOST", "PORT", "WEB_CONCURRENCY", "WEB_THREADS", "WORKER_TIMEOUT", "GRACEFUL_TIMEOUT", "ACCESS_LOG",
    "GUNICORN_CMD_ARGS", "CATALOG_URI", "PERSONALIZE_CAMPAIGN_ARN", "RECOMMENDATIONS_URI", "POPULAR_ITEMS_URI",
)


def gunicorn_executable() -> str:
    """The gunicorn next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("gunicorn")
    if beside.exists():
        return str(beside)
    found = shutil.which("gunicorn")
    if found is None:
        pytest.fail("gunicorn is not installed next to this Python nor on PATH; pip install -r requirements.txt")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(standin_url: str, port: int, **overrides: str | None) -> dict[str, str]:
    """The environment of a user's shell with the service configured; an override of None unsets a variable."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AWS_", "CACHE_", "PERSONALIZE_", "CATALOG_", "REQUEST_", "BREAKER_"))
        and k not in SERVICE_VARIABLES
    }
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY=str(WORKERS),
        GRACEFUL_TIMEOUT="5",
        ACCESS_LOG="-",
        GUNICORN_CMD_ARGS=f"--access-logformat '{ACCESS_FORMAT}'",
        PERSONALIZE_CAMPAIGN_ARN=CAMPAIGN_ARN,
        CATALOG_URI="sample/catalog.csv",
        AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME=standin_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    if E2E:  # the e2e session's own Redis and temporary folder (tests/contract starts servers without them)
        env.update(CACHE_REDIS_URL=E2E["redis_url"], TMPDIR=E2E["tmpdir"], DATA_DIR=os.path.join(E2E["tmpdir"], "data"))
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass
class Gunicorn:
    """A running `gunicorn wsgi:app` whose stdout and stderr go to one log file."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _log: IO[bytes]
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.output())}

    def served_by(self, request_ids: set[str], timeout: float = 5.0) -> dict[str, int]:
        """Map each request id to the pid of the worker whose access log line names it."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.output()
            found = {m.group(2): int(m.group(1)) for m in ACCESS_LINE.finditer(output) if m.group(2) in request_ids}
            found |= {m.group(1): int(m.group(2)) for m in REQUEST_LINE.finditer(output)
                      if m.group(1) in request_ids}
            if len(found) == len(request_ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def wait_ready(self, workers: int = 1) -> None:
        """Poll GET /readyz until `workers` different workers have answered it 200; fail with the log if not.

        Each poll is a new connection, so any worker may take it; a worker that answers has finished
        post_worker_init (the catalog is loaded) and is accepting requests.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        last, ready_ids, polls = "no answer", set(), 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode} before it was ready:\n{self.output()}")
            polls += 1
            request_id = f"readyz-{polls}"
            try:
                response = get(self.url + "/readyz", request_id=request_id, timeout=1)
                last = f"{response.status_code} {response.text[:200]}"
                if response.status_code == 200:
                    ready_ids.add(request_id)
                    if len(set(self.served_by(ready_ids, timeout=1).values())) >= workers:
                        return
            except requests.RequestException as exc:
                last = repr(exc)
                time.sleep(0.05)
        pytest.fail(f"{workers} gunicorn workers were not ready within {READY_TIMEOUT:.0f} s "
                    f"(last /readyz: {last}):\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM gunicorn and wait for it (SIGKILL if it will not stop); return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        else:
            self.process.wait()
        self._log.close()
        return self.process.returncode


def start_gunicorn(env: Mapping[str, str], log_path: Path) -> Gunicorn:
    log = log_path.open("wb")
    try:
        process = subprocess.Popen(
            [gunicorn_executable(), "wsgi:app"],
            cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so a stuck worker can be killed with the master
        )
    except BaseException:
        log.close()
        raise
    return Gunicorn(process, f"http://127.0.0.1:{env['PORT']}", log_path, log)


def run_gunicorn_to_exit(env: Mapping[str, str], log_path: Path, timeout: float = 20.0) -> tuple[int, str, float]:
    """Start gunicorn expecting it to give up by itself; return (exit code, output, seconds it took)."""
    server = start_gunicorn(env, log_path)
    try:
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"gunicorn was still running after {timeout:.0f} s:\n{server.output()}")
    elapsed = time.monotonic() - server.started
    code = server.stop()
    return code, server.output(), elapsed


def read_catalog() -> dict[str, dict[str, str]]:
    """The sample catalog's rows by item id, read with the csv module (independently of app.catalog.items)."""
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8-sig") as fh:
        return {row["ITEM_ID"].strip(): row for row in csv.DictReader(fh)}


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def e2e_session(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Give every server of the session the tests' own Redis and a temporary folder of the session's own."""
    E2E.update(redis_url=redis_server, tmpdir=str(tmp_path_factory.mktemp("tmpdir")))
    yield E2E
    E2E.clear()


@pytest.fixture(scope="session")
def redis_client(e2e_session: dict[str, str]) -> Iterator[redis.Redis]:
    """A client of the tests' own Redis, which the servers share as their answer cache."""
    client = redis.Redis.from_url(e2e_session["redis_url"], socket_connect_timeout=1)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def standin() -> Iterator[StandinHandle]:
    handle = start_standin(items_from(str(SAMPLE_CATALOG)), arns=[CAMPAIGN_ARN])
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def gunicorn_server(standin: StandinHandle, redis_client: redis.Redis,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """One `gunicorn wsgi:app` with 3 workers for the tests that only send requests."""
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    server = start_gunicorn(service_env(standin.url, free_port()), log_path)
    try:
        server.wait_ready(workers=WORKERS)
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(gunicorn_server: Gunicorn, standin: StandinHandle, redis_client: redis.Redis) -> Iterator[Gunicorn]:
    """The shared gunicorn, with an empty answer cache and a stand-in that is healthy and has seen no calls."""
    redis_client.flushdb()
    standin.reset()
    yield gunicorn_server
    standin.reset()
    if gunicorn_server.process.poll() is not None:
        pytest.fail(f"gunicorn died during the test:\n{gunicorn_server.output()}")


@pytest.fixture
def catalog() -> dict[str, dict[str, str]]:
    return read_catalog()


def get(url: str, params: Mapping[str, Any] | None = None, request_id: str | None = None,
        timeout: float = 10.0) -> requests.Response:
    """GET on a connection of its own (no keep-alive), so consecutive requests can land on any worker."""
    headers = {"Connection": "close"}
    if request_id:
        headers["X-E2E-Request"] = headers["X-Request-Id"] = request_id
    return requests.get(url, params=params, headers=headers, timeout=timeout)


@pytest.fixture
def gunicorn_factory(standin: StandinHandle, redis_client: redis.Redis,
                     tmp_path: Path) -> Iterator[Any]:
    """Start a `gunicorn wsgi:app` of the test's own with service_env overrides; stopped after the test.

    Like `server`, it starts from an empty answer cache (Redis db 14) and a healthy stand-in with no calls.
    Call it as `gunicorn_factory(REQUEST_BUDGET_MS="500", ...)`; it returns the ready Gunicorn.
    """
    started: list[Gunicorn] = []

    def start(**overrides: str | None) -> Gunicorn:
        redis_client.flushdb()
        standin.reset()
        workers = int(overrides.get("WEB_CONCURRENCY") or WORKERS)
        server = start_gunicorn(service_env(standin.url, free_port(), **overrides),
                                tmp_path / f"gunicorn-{len(started)}.log")
        started.append(server)
        server.wait_ready(workers=workers)
        return server

    try:
        yield start
    finally:
        standin.reset()  # wake requests hanging in the stand-in before stopping gunicorn
        for server in started:
            server.stop()
