"""gunicorn's threaded worker, made to give a thread only to a request that has fully arrived.

gunicorn's gthread worker hands each new connection to a thread, which waits up to 5 s for a first byte and
then reads the request with blocking calls and no deadline: 34 connections sending their head at a byte a
second held all 32 threads of two workers for as long as they liked, and 300 silent ones queued every other
request behind their 5 s waits. Here the worker's event loop reads each request head (and a short body) itself,
without blocking, and only a complete one goes to a thread; a connection that has not sent one within
REQUEST_HEAD_TIMEOUT seconds is closed. gunicorn's errors for requests it cannot parse (a URL or a header
over the limits, a malformed request line) are answered in the service's JSON error shape, and logged
without the request line, which carries user ids.
"""
from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import ssl
import time
from collections import deque
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

DEFAULT_HEAD_TIMEOUT = 5  # seconds; Braze gives up after 2
# A head longer than this goes to gunicorn's parser as it is, which answers 414/431 (the limits are far less).
MAX_BUFFERED = 64 * 1024
HEAD_END = re.compile(rb"\r?\n\r?\n")
CONTENT_LENGTH = re.compile(rb"\ncontent-length:[ \t]*(\d{1,9})[ \t]*\r?\n", re.IGNORECASE)
EXPECT = re.compile(rb"\nexpect:", re.IGNORECASE)
SUMMARY_SECONDS = 60.0

# gunicorn's parse errors: (status, code, message). The message never repeats what the client sent.
CLIENT_ERRORS: tuple[tuple[type[Exception], int, str, str], ...] = (
    (http_errors.LimitRequestLine, 414, "uri_too_long",
     "The request line (method, path and query string) is longer than the service accepts."),
    (http_errors.LimitRequestHeaders, 431, "request_header_fields_too_large",
     "A request header, or the number of headers, is over the service's limit."),
    (http_errors.UnsupportedTransferCoding, 501, "not_implemented", "The request's Transfer-Encoding is not supported."),
    (http_errors.ExpectationFailed, 417, "expectation_failed", "The request's Expect header is not supported."),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden", "A PROXY protocol line from this address is not allowed."),
)
BAD_REQUEST = (400, "bad_request", "The request is not valid HTTP/1.1.")
REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented"}


def request_ready(data: bytes) -> bool:
    """Whether `data` holds a whole request head, and the body its Content-Length announces if that is short."""
    end = HEAD_END.search(data)
    if end is None:
        return len(data) >= MAX_BUFFERED
    head = data[:end.end()]
    if EXPECT.search(head):
        return True  # the client waits for "100 Continue" before it sends the body
    length = CONTENT_LENGTH.search(head)
    if length is None or int(length.group(1)) > MAX_BUFFERED:
        return True
    return len(data) - end.end() >= int(length.group(1))


def error_answer(status: int, code: str, message: str) -> bytes:
    """Return a whole HTTP/1.1 error response, closing the connection, with the JSON error shape as body."""
    body = orjson.dumps({"error": {"code": code, "status": status, "message": message}})
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("ascii") + body


class HeadFirstWorker(ThreadWorker):
    """gthread, with each request read on the event loop up to its end before a thread serves it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn.conf.py has checked it is a whole number
        self.head_timeout = float(os.environ.get("REQUEST_HEAD_TIMEOUT", "").strip() or DEFAULT_HEAD_TIMEOUT)
        self.arriving: deque[TConn] = deque()  # by deadline: every connection gets the same timeout
        self.head_timeouts = 0
        self.summary_at = time.monotonic() + SUMMARY_SECONDS

    def enqueue_req(self, conn: TConn) -> None:
        """Read the connection's request on the event loop; give it to a thread once it is all there."""
        if conn.is_http2 or self.cfg.is_ssl or (
                conn.parser is None and negotiation.prior_knowledge_allowed(self.cfg, conn.client)):
            super().enqueue_req(conn)  # TLS and HTTP/2 read their own way: gunicorn's behaviour
            return
        conn.received = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        if conn.sock.getblocking():  # only after a pipelined request: a system call saved on every other
            conn.sock.setblocking(False)
        ready = self._receive(conn)  # often already there: no round through the poller
        if ready:
            self._dispatch(conn)
        elif ready is None:
            self._close(conn)
        else:
            conn.head_deadline = time.monotonic() + self.head_timeout
            self.arriving.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_arriving, conn))

    def _on_arriving(self, conn: TConn, _sock: socket.socket) -> None:
        ready = self._receive(conn)
        if ready is False:
            return
        self._unwatch(conn)
        if ready:
            self._dispatch(conn)
        else:
            self._close(conn)

    @staticmethod
    def _receive(conn: TConn) -> bool | None:
        """Read what has arrived: True once the request is whole, False while it is not, None if the client left."""
        if request_ready(conn.received):
            return True
        try:
            data = conn.sock.recv(MAX_BUFFERED)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return None
        if not data:
            return None
        conn.received += data
        return request_ready(conn.received)

    def _dispatch(self, conn: TConn) -> None:
        conn.data_ready = True  # gthread's handle() would otherwise wait for a first byte again
        if conn.parser is None:
            conn.init()  # without TLS, this only makes the parser
        conn.parser.unreader.unread(conn.received)
        conn.received = b""
        super().enqueue_req(conn)

    def _unwatch(self, conn: TConn) -> None:
        self.arriving.remove(conn)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _close(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Close connections whose request did not arrive in time (silent ones at once when stopping)."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            for conn in [c for c in self.arriving if not c.received and c.head_deadline > now]:
                conn.head_deadline = now  # nothing sent yet: no request to finish
                self.arriving.remove(conn)
                self.arriving.appendleft(conn)  # keeps the deque ordered by deadline
        while self.arriving and self.arriving[0].head_deadline <= now:
            conn = self.arriving[0]
            self._unwatch(conn)
            self._close(conn)
            self.head_timeouts += 1
        if now >= self.summary_at:
            if self.head_timeouts:
                self.log.warning("Closed %d connections that sent no whole request within %g s in the last %d s "
                                 "(slow or idle clients; REQUEST_HEAD_TIMEOUT)",
                                 self.head_timeouts, self.head_timeout, SUMMARY_SECONDS)
            self.head_timeouts = 0
            self.summary_at = now + SUMMARY_SECONDS

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: Exception) -> None:
        """Answer a request gunicorn could not parse, or a crash outside the app, in the JSON error shape.

        The log line names the kind of error, never what the client sent: a request line holds user ids.
        """
        request_start = datetime.now()
        status, code, message = next(((s, c, m) for kind, s, c, m in CLIENT_ERRORS if isinstance(exc, kind)),
                                     BAD_REQUEST if is_client_error(exc) else
                                     (500, "internal_error", "The service failed unexpectedly; the error is logged."))
        ip = (addr or ("",))[0]
        if status < 500:
            self.log.warning("Invalid request from ip=%s: %s (%s)", ip, type(exc).__name__, status)
        else:
            self.log.exception("Error handling request %s", getattr(req, "path", "(no request line read)"))
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = ip
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {REASONS.get(status, 'Error')}"
            self.log.access(resp, req, environ, datetime.now() - request_start)
        try:
            client.sendall(error_answer(status, code, message))
        except OSError as send_error:
            if send_error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                self.log.debug("Failed to send error message.")


def is_client_error(exc: Exception) -> bool:
    """Whether gunicorn raised `exc` because the request was malformed, not because of the app or its settings."""
    return isinstance(exc, (http_errors.ParseException, ssl.SSLError)) and not isinstance(exc, (
        http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName, http_errors.ConfigurationProblem))
