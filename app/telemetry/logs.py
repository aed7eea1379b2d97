"""JSON log lines: one shape for every record (the app's, gunicorn's) and the one line each request writes.

User ids can be personal data: a request line carries them only as a keyed hash (LOG_USER_ID_KEY), or
not at all. Query strings, headers and credentials are never logged.
"""
from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import random
import select
import sys
import threading
import time
import weakref
from typing import Any

import orjson
from flask import g, has_request_context
from gunicorn.glogging import Logger as _GunicornLogger

MAX_REQUEST_ID_LENGTH = 128
# 64 bits: no two of millions of users share one; without the key nobody can recompute them from guessed ids.
USER_HASH_HEX_CHARS = 16
# Libraries that log request URLs (werkzeug's dev server) or signed headers (botocore, urllib3 at DEBUG).
# The lines gunicorn's arbiter logs with its listening sockets (gunicorn/arbiter.py: start(), and reload()).
LISTENING_AT = ("Listening at: %s (%s)", "Listening at: %s")
QUIET_LOGGERS = ("werkzeug", "botocore", "boto3", "urllib3", "s3transfer")


_second = (-1, "")  # the last second formatted: most lines fall in the same second as the one before


def timestamp(created: float) -> str:
    """Format a Unix time as UTC ISO 8601 with milliseconds."""
    global _second
    second, text = _second
    if second != int(created):
        second = int(created)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{int(created % 1 * 1000):03d}Z"


def line(created: float, level: str, logger: str, message: str, fields: dict[str, Any] | None = None) -> bytes:
    """Return one JSON log line, newline included: time, level, logger, message, then the fields."""
    record = {"time": timestamp(created), "level": level, "logger": logger, "message": message}
    if fields:
        record.update(fields)
    return orjson.dumps(record, default=str) + b"\n"


class JsonFormatter(logging.Formatter):
    """Format any log record as one JSON line (the traceback, if any, in "exception").

    A record logged while a request is handled carries its request_id, to find it next to the request's line.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"pid": record.process}
        if has_request_context() and (rid := g.get("request_id")) is not None:
            fields["request_id"] = rid
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return line(record.created, record.levelname, record.name, record.getMessage(), fields)[:-1].decode()


class GunicornLogger(_GunicornLogger):
    """gunicorn's logger, naming the address in "Listening at" (gunicorn.conf.py: logger_class; its lines are
    JSON through gunicorn.conf.py's logconfig_dict)."""

    @property
    def access_log_enabled(self) -> bool:
        """Only with ACCESS_LOG (gunicorn's accesslog): a logconfig_dict alone would turn gunicorn's on."""
        return bool(self.cfg.accesslog)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log as gunicorn does, with the addresses in the master's "Listening at" line when it has no socket.

        With reuse_port the master binds nothing (each worker does), and gunicorn prints an empty list.
        """
        if msg in LISTENING_AT and args and not args[0]:
            addresses = ", ".join(f"http://{a[0]}:{a[1]}" if isinstance(a, tuple) else str(a) for a in self.cfg.address)
            args = (f"{addresses}, on a socket per worker (reuse_port)", *args[1:])
        super().info(msg, *args, **kwargs)


class Occasional:
    """Let a repeated log line through at most once every `seconds` per key, counting the ones held back.

    In a send a failure repeats with every request, millions of times; one line a minute per kind says as much.
    """

    def __init__(self, seconds: float = 60.0, clock: Any = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when its last line went out, lines held back since)

    def due(self, key: str) -> int | None:
        """Return how many lines were held back for key since its last one if a line may go out now, else None."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.seconds:
                self._last[key] = (last[0], last[1] + 1)
                return None
            self._last[key] = (now, 0)
            return 0 if last is None else last[1]


def held_back(count: int) -> str:
    """Return the suffix that says how many repeats of a line were not logged."""
    return f" ({count} more like it in the last minute were not logged)" if count else ""


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON at the given level; keep libraries that log secrets quiet."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    floor = max(logging.getLevelName(level), logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(floor)


class RequestLog:
    """Write the one JSON line per request to stderr, a few lines per write call, no logging machinery.

    Each write call is a system call that hands the GIL to another of the worker's threads; one per
    request cost a cache hit a measurable share of its time under gunicorn (README, Benchmark). So lines wait (at most
    flush_seconds, by a background thread) until PIPE_BUF bytes of them are pending, and go out in one
    write of at most PIPE_BUF bytes: the pipe keeps such a write whole, so lines of several workers
    sharing stderr never interleave. flush() writes what is pending; gunicorn's worker_exit and atexit
    call it. flush_seconds 0 writes every line at once.
    """

    def __init__(self, user_id_key: str | None, enabled: bool = True, fd: int = 2,
                 flush_seconds: float = 0.25) -> None:
        self.enabled = enabled
        self.fd = fd  # stderr, as a descriptor
        self.flush_seconds = flush_seconds
        self._user_mac = hmac.new(user_id_key.encode(), digestmod=hashlib.sha256) if user_id_key else None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._flusher_pid = 0  # the process whose background flusher runs (gunicorn forks after create_app)
        if enabled and flush_seconds > 0:
            atexit.register(_flush_if_alive, weakref.ref(self))  # a weak one: apps that are gone hold nothing

    def user_hash(self, user_id: str | None) -> str | None:
        """Return HMAC-SHA256(LOG_USER_ID_KEY, user id) in hex, truncated; None without a key or a user id."""
        if self._user_mac is None or not user_id:
            return None
        mac = self._user_mac.copy()
        mac.update(user_id.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()[:USER_HASH_HEX_CHARS]

    def write(self, fields: dict[str, Any]) -> None:
        """Write one request line (logger "request", level INFO), soon."""
        if not self.enabled:
            return
        fields["pid"] = pid = os.getpid()
        data = line(time.time(), "INFO", "request", "request", fields)
        if self.flush_seconds <= 0:
            self._write(data)
            return
        with self._lock:
            full = self._take() if self._pending_bytes + len(data) > select.PIPE_BUF else b""
            self._pending.append(data)
            self._pending_bytes += len(data)
        if full:
            self._write(full)
        if self._flusher_pid != pid:
            self._start_flusher(pid)

    def flush(self) -> None:
        """Write the pending lines now."""
        with self._lock:
            pending = self._take()
        if pending:
            self._write(pending)

    def _take(self) -> bytes:
        pending, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
        return pending

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # stderr closed or full: losing a log line must not fail the request
            pass

    def _start_flusher(self, pid: int) -> None:
        with self._lock:
            if self._flusher_pid == pid:
                return
            self._flusher_pid = pid

        def run() -> None:
            while True:
                time.sleep(self.flush_seconds)
                self.flush()

        threading.Thread(target=run, name="request-log-flush", daemon=True).start()


def _flush_if_alive(ref: weakref.ref[RequestLog]) -> None:
    if (request_log := ref()) is not None:
        request_log.flush()


def request_id(header: str | None) -> str:
    """Return the caller's X-Request-Id when it is short printable ASCII, else a new random id.

    The id only has to be unique, not unguessable: random's generator (reseeded in each forked worker)
    makes one without os.urandom's system call, which hands the GIL to another thread on every request.
    """
    if header and len(header) <= MAX_REQUEST_ID_LENGTH and header.isascii() and header.isprintable():
        return header
    return f"{random.getrandbits(128):032x}"
