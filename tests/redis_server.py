"""A `redis-server` of the tests' own on a free loopback port: never the Redis other programs share on 6379.

Tests and the benchmark start one (or several) and may empty any database of it, since nobody else uses it.
`TEST_REDIS_URL` names a Redis given to the tests instead (for a machine without `redis-server`); the tests
then empty its database, so give them one of their own.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

START_TIMEOUT = 5.0


class RedisUnavailable(Exception):
    """redis-server is not installed, or did not start; the message says which."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A `redis-server` process without persistence on a port of its own, started and stopped by its owner."""

    def __init__(self, log_path: Path | None = None, port: int | None = None, extra_args: tuple[str, ...] = ()
                 ) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._own_folder = None if log_path is not None else tempfile.mkdtemp(prefix="tests-redis-")
        self.folder = Path(self._own_folder) if self._own_folder else log_path.parent  # type: ignore[union-attr]
        self.log_path = log_path or self.folder / "redis.log"
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, db: int) -> str:
        """Return the URL of one of this server's databases."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start the server (again, on the same port, empty) and wait until it answers PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisUnavailable("redis-server is not installed: apt-get install redis-server (.ci/run does).")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.folder), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise RedisUnavailable(f"redis-server on port {self.port} did not start:\n{self.log_path.read_text()}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send a signal (SIGKILL by default) and, unless it only pauses the server, wait for it to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                self.process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the server and remove the folder it was given, if it made one."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._own_folder and self.process is not None and self.process.poll() is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)


def given_redis_url() -> str | None:
    """Return TEST_REDIS_URL, a Redis database handed to the tests, or None to start one of their own."""
    return os.environ.get("TEST_REDIS_URL") or None


def must_fail() -> bool:
    """Whether a missing Redis fails the tests (CI) rather than skipping them (a developer's machine)."""
    return os.environ.get("CI") == "true"

