"""A stand-in for Amazon Personalize Events that real boto3 talks to over its rest-json wire protocol.

Point boto3 at it with AWS_ENDPOINT_URL_PERSONALIZE_EVENTS=http://127.0.0.1:PORT (any dummy credentials).

    POST /events               PutEvents: {"trackingId", "userId"?, "sessionId", "eventList": [1..10 events]}
                               -> 200 with an empty body; validated as Personalize's model says (lengths,
                               required eventType and sentAt, properties a JSON string of <= 1,024 characters,
                               impression <= 25 ids, recommendationId <= 40)
    GET  /_control/calls       {"total", "events": [every event accepted, with userId, sessionId, trackingId],
                                "event_ids": {eventId: times accepted}, "rejected": n}
    POST /_control/fault       {"mode": "ok"|"latency"|"error500"|"throttle", "latency_ms": N, "status": 500|503,
                                "times": N (then back to "ok")}
    POST /_control/reset       clear calls and the fault mode

Run it:  python -m tests.standin.personalize_events --port 0 [--tracking-id ID ...]
It prints "LISTENING 127.0.0.1:PORT" as its first stdout line. In tests use start_events_standin().
"""
from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.standin.control import ControlClient

FAULT_MODES = ("ok", "latency", "error500", "throttle")
MAX_EVENTS_PER_CALL = 10


class EventsError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def _string(value: Any, name: str, maximum: int, required: bool = False) -> None:
    if value is None:
        if required:
            raise EventsError(400, "InvalidInputException", f"{name} is required")
        return
    if not isinstance(value, str) or not 1 <= len(value) <= maximum:
        raise EventsError(400, "InvalidInputException", f"{name} must be a string of 1 to {maximum} characters")


def validate(body: Any, tracking_ids: frozenset[str]) -> list[dict[str, Any]]:
    """Check one PutEvents body the way Personalize's model does; return its events, each with its call's ids."""
    if not isinstance(body, dict):
        raise EventsError(400, "SerializationException", "Request body is not a JSON object")
    _string(body.get("trackingId"), "trackingId", 256, required=True)
    if tracking_ids and body["trackingId"] not in tracking_ids:
        raise EventsError(404, "ResourceNotFoundException", f"Tracking id {body['trackingId']} does not exist.")
    _string(body.get("userId"), "userId", 256)
    _string(body.get("sessionId"), "sessionId", 256, required=True)
    events = body.get("eventList")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_CALL:
        raise EventsError(400, "InvalidInputException", "eventList must hold 1 to 10 events")
    accepted = []
    for event in events:
        if not isinstance(event, dict):
            raise EventsError(400, "SerializationException", "an event is not a JSON object")
        _string(event.get("eventType"), "eventType", 256, required=True)
        _string(event.get("eventId"), "eventId", 256)
        _string(event.get("itemId"), "itemId", 256)
        _string(event.get("recommendationId"), "recommendationId", 40)
        _string(event.get("properties"), "properties", 1024)
        if event.get("properties") is not None:
            try:
                json.loads(event["properties"])
            except ValueError:
                raise EventsError(400, "InvalidInputException", "properties is not a JSON string") from None
        if not isinstance(event.get("sentAt"), (int, float)) or isinstance(event.get("sentAt"), bool):
            raise EventsError(400, "InvalidInputException", "sentAt is required (epoch seconds)")
        value = event.get("eventValue")
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise EventsError(400, "SerializationException", "eventValue must be a number")
        impression = event.get("impression")
        if impression is not None:
            if not isinstance(impression, list) or not 1 <= len(impression) <= 25:
                raise EventsError(400, "InvalidInputException", "impression must hold 1 to 25 item ids")
            for item in impression:
                _string(item, "impression item", 256)
        accepted.append({**event, "userId": body.get("userId"), "sessionId": body["sessionId"],
                         "trackingId": body["trackingId"]})
    return accepted


class State:
    """The events accepted, the calls seen and the fault mode."""

    def __init__(self, tracking_ids: Iterable[str] = ()) -> None:
        self.tracking_ids = frozenset(tracking_ids)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.total = 0
            self.rejected = 0
            self.events: list[dict[str, Any]] = []
            self.event_ids: collections.Counter[str] = collections.Counter()
            self.call_sizes: list[int] = []
            self.call_times: list[float] = []
            self.mode, self.latency_ms, self.error_status, self.times = "ok", 0, 500, None

    def set_fault(self, mode: str, latency_ms: int = 0, status: int = 500, times: int | None = None) -> None:
        if mode not in FAULT_MODES or status not in (500, 503):
            raise ValueError(f"mode is one of {', '.join(FAULT_MODES)} and status 500 or 503")
        with self.lock:
            self.mode, self.latency_ms, self.error_status = mode, int(latency_ms or 0), int(status)
            self.times = None if times is None else int(times)

    def fault(self) -> tuple[str, int, int]:
        """Return the fault to apply to the next call, counting it down."""
        with self.lock:
            self.total += 1
            mode, latency, status = self.mode, self.latency_ms, self.error_status
            if mode != "ok" and self.times is not None:
                self.times -= 1
                if self.times <= 0:
                    self.mode, self.times = "ok", None
            return mode, latency, status

    def accept(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.events.extend(events)
            self.call_sizes.append(len(events))
            self.call_times.append(time.monotonic())
            self.event_ids.update(e["eventId"] for e in events if e.get("eventId"))

    def calls(self) -> dict[str, Any]:
        with self.lock:
            return {"total": self.total, "events": list(self.events), "event_ids": dict(self.event_ids),
                    "call_sizes": list(self.call_sizes), "call_times": list(self.call_times),
                    "rejected": self.rejected}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PersonalizeEventsStandin/1.0"
    timeout = 30
    disable_nagle_algorithm = True
    server: EventsStandinServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _error(self, error: EventsError) -> None:
        payload = json.dumps({"__type": error.error_type, "message": error.message}).encode()
        self._send(error.status, payload, {"x-amzn-ErrorType": error.error_type})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/_control/calls":
            self._send(200, json.dumps(self.server.state.calls()).encode())
        else:
            self._error(EventsError(404, "UnknownOperationException", f"No operation at GET {self.path}"))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        state = self.server.state
        if self.path.startswith("/_control/"):
            body = body if isinstance(body, dict) else {}
            try:
                if self.path == "/_control/fault":
                    state.set_fault(str(body.get("mode", "ok")), body.get("latency_ms", 0), body.get("status", 500),
                                    body.get("times"))
                elif self.path == "/_control/reset":
                    state.reset()
                else:
                    self._send(404, b'{"error": "unknown control path"}')
                    return
            except (TypeError, ValueError) as exc:
                self._send(400, json.dumps({"error": str(exc)}).encode())
                return
            self._send(200, b'{"ok": true}')
            return
        if self.path.split("?", 1)[0] != "/events":
            self._error(EventsError(404, "UnknownOperationException", f"No operation at POST {self.path}"))
            return
        mode, latency_ms, status = state.fault()
        if latency_ms and mode == "latency":
            time.sleep(latency_ms / 1000)  # the upstream's own latency, which the caller must live with
        if mode == "error500":
            name = "ServiceUnavailable" if status == 503 else "InternalServerError"
            self._error(EventsError(status, name, "We encountered an internal error. Please try again."))
            return
        if mode == "throttle":
            self._error(EventsError(400, "ThrottlingException", "Rate exceeded"))
            return
        try:
            events = validate(body, state.tracking_ids)
        except EventsError as error:
            with state.lock:
                state.rejected += 1
            self._error(error)
            return
        state.accept(events)
        self._send(200, b"")


class EventsStandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State, verbose: bool = False) -> None:
        self.state = state
        self.verbose = verbose
        super().__init__(address, Handler)


class EventsStandinHandle:
    """A stand-in running in this process: its URL, the events it accepted, and its fault switch."""

    def __init__(self, server: EventsStandinServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.state = server.state

    def calls(self) -> dict[str, Any]:
        return self.state.calls()

    def set_fault(self, mode: str, latency_ms: int = 0, status: int = 500, times: int | None = None) -> None:
        self.state.set_fault(mode, latency_ms, status, times)

    def reset(self) -> None:
        self.state.reset()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> EventsStandinHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_events_standin(tracking_ids: Iterable[str] = (), host: str = "127.0.0.1", port: int = 0,
                         verbose: bool = False) -> EventsStandinHandle:
    """Start the stand-in on a daemon thread; port 0 picks a free port (see handle.url)."""
    server = EventsStandinServer((host, port), State(tracking_ids), verbose)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="personalize-events-standin", daemon=True)
    thread.start()
    return EventsStandinHandle(server, thread)


class EventsControl(ControlClient):
    """A client of a stand-in running in another process, with the same methods as EventsStandinHandle."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tracking-id", action="append", default=[], help="accept only these tracking ids")
    parser.add_argument("--latency-ms", type=int, default=0, help="start in latency mode with this delay")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    server = EventsStandinServer((args.host, args.port), State(args.tracking_id), args.verbose)
    if args.latency_ms:
        server.state.set_fault("latency", args.latency_ms)
    host, port = server.server_address[:2]
    print(f"LISTENING {host}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
