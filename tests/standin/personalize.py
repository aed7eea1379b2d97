"""A stand-in for Amazon Personalize Runtime that real boto3 talks to over its rest-json wire protocol.

Point boto3 at it with AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME=http://127.0.0.1:PORT (any dummy credentials).

    POST /recommendations      GetRecommendations: {"campaignArn"|"recommenderArn", "userId", "numResults"}
                               -> {"itemList": [{"itemId", "score"}], "recommendationId"}
    GET  /_control/calls       {"total", "by_user": {userId: n}, "requests": [the last 1000 bodies]}
    POST /_control/fault       {"mode": "ok"|"latency"|"hang"|"error500"|"throttle"|"not_found",
                                "latency_ms": N, "status": 500|503, "times": N (then back to "ok")}
    POST /_control/answer      {"userId", "itemIds": [...], "recommendationId"?}: a fixed answer for a user
    POST /_control/reset       clear counts, fixed answers and the fault mode (and wake hanging requests)

Each user's items are the start-up items ordered by sha256(userId, itemId): deterministic, and different for
different users. Errors look like AWS's: the status, an x-amzn-ErrorType header and {"__type", "message"}.

Run it:  python -m tests.standin.personalize --port 0 --items-from sample/catalog.csv [--arn ARN ...]
It prints "LISTENING 127.0.0.1:PORT" as its first stdout line. In tests use start_standin(items).
"""
from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.standin.control import ControlClient

DEFAULT_NUM_RESULTS = 25
MAX_NUM_RESULTS = 500
MAX_RECORDED_REQUESTS = 1000
HANG_SECONDS = 60.0
FAULT_MODES = ("ok", "latency", "hang", "error500", "throttle", "not_found")


class FaultError(ValueError):
    """A control request asked for something the stand-in cannot do."""


class State:
    """Everything the stand-in knows: items, allowed ARNs, fixed answers, the fault mode and the calls seen."""

    def __init__(self, items: Sequence[str], arns: Iterable[str] = ()) -> None:
        if not items:
            raise ValueError("the Personalize stand-in needs at least one item id")
        self.items = list(dict.fromkeys(str(i) for i in items))
        self.arns = frozenset(arns)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.total = 0
            self.by_user: collections.Counter[str] = collections.Counter()
            self.requests: collections.deque[Any] = collections.deque(maxlen=MAX_RECORDED_REQUESTS)
            self.answers: dict[str, dict[str, Any]] = {}
            self.mode = "ok"
            self.latency_ms = 0
            self.error_status = 500
            self.times: int | None = None
            old_release = getattr(self, "release", None)
            self.release = threading.Event()
            self.sequence = 0
        if old_release is not None:
            old_release.set()  # wake requests hanging or sleeping under the previous fault

    def set_fault(self, mode: str, latency_ms: int = 0, status: int = 500, times: int | None = None) -> None:
        if mode not in FAULT_MODES:
            raise FaultError(f"unknown fault mode {mode!r}; use one of {', '.join(FAULT_MODES)}")
        if status not in (500, 503):
            raise FaultError("status must be 500 (InternalServerError) or 503 (ServiceUnavailable)")
        with self.lock:
            self.mode, self.latency_ms, self.error_status = mode, int(latency_ms or 0), int(status)
            self.times = None if times is None else int(times)
            release = self.release
        if mode == "ok":
            release.set()
            with self.lock:
                self.release = threading.Event()

    def set_answer(self, user_id: str, item_ids: Sequence[str], recommendation_id: str | None = None) -> None:
        with self.lock:
            self.answers[user_id] = {"itemIds": [str(i) for i in item_ids], "recommendationId": recommendation_id}

    def record(self, body: Any) -> tuple[int, str, int, int, threading.Event]:
        """Count a GetRecommendations call; return its sequence number and the fault to apply to it."""
        with self.lock:
            self.total += 1
            self.sequence += 1
            user = body.get("userId") if isinstance(body, dict) else None
            if isinstance(user, str):
                self.by_user[user] += 1
            self.requests.append(body)
            mode, latency, status = self.mode, self.latency_ms, self.error_status
            if mode != "ok" and self.times is not None:
                self.times -= 1
                if self.times <= 0:
                    self.mode, self.times = "ok", None
            return self.sequence, mode, latency, status, self.release

    def calls(self) -> dict[str, Any]:
        with self.lock:
            return {"total": self.total, "by_user": dict(self.by_user), "requests": list(self.requests)}

    def ranked(self, user_id: str) -> list[str]:
        """Every item, ordered by a hash of (user, item): stable per user, different between users."""
        def rank(item_id: str) -> bytes:
            return hashlib.sha256(f"{user_id}\x00{item_id}".encode()).digest()

        return sorted(self.items, key=rank)


class AwsError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def get_recommendations(state: State, body: Any, sequence: int) -> dict[str, Any]:
    """Answer one GetRecommendations body the way Personalize would (validation first, then the items)."""
    if not isinstance(body, dict):
        raise AwsError(400, "SerializationException", "Request body is not a JSON object")
    campaign, recommender = body.get("campaignArn"), body.get("recommenderArn")
    if campaign and recommender:
        raise AwsError(400, "InvalidInputException", "Provide either campaignArn or recommenderArn, not both")
    arn = campaign or recommender
    if not arn:
        raise AwsError(400, "InvalidInputException", "Either campaignArn or recommenderArn is required")
    if state.arns and arn not in state.arns:
        kind = "campaign" if campaign else "recommender"
        raise AwsError(404, "ResourceNotFoundException", f"Resource {arn} of type {kind} does not exist.")
    user_id = body.get("userId")
    if not isinstance(user_id, str) or not user_id:
        raise AwsError(400, "InvalidInputException", "userId is required")
    num_results = body.get("numResults", DEFAULT_NUM_RESULTS)
    if not isinstance(num_results, int) or isinstance(num_results, bool) or not 1 <= num_results <= MAX_NUM_RESULTS:
        raise AwsError(
            400, "InvalidInputException", f"numResults must be between 1 and {MAX_NUM_RESULTS}, got {num_results!r}"
        )
    with state.lock:
        fixed = state.answers.get(user_id)
    if fixed is not None:
        item_ids = fixed["itemIds"][:num_results]
        rid = fixed["recommendationId"] or f"RID-{sequence:06d}-{uuid.uuid4().hex[:8]}"
    else:
        item_ids = state.ranked(user_id)[:num_results]
        rid = f"RID-{sequence:06d}-{uuid.uuid4().hex[:8]}"
    count = max(len(item_ids), 1)
    item_list = [{"itemId": item, "score": round(1.0 - n / count, 6)} for n, item in enumerate(item_ids)]
    return {"itemList": item_list, "recommendationId": rid}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    server_version = "PersonalizeStandin/1.0"
    timeout = 30  # close idle keep-alive connections
    # Headers and body go out in two writes; with Nagle on, a keep-alive client waits ~40 ms for the body.
    disable_nagle_algorithm = True
    server: StandinServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. a read timeout during "hang")
            self.close_connection = True

    def _send_error(self, error: AwsError) -> None:
        self._send(
            error.status,
            {"__type": error.error_type, "message": error.message},
            {"x-amzn-ErrorType": error.error_type},
        )

    # -- routes -----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/_control/calls":
            self._send(200, self.server.state.calls())
        elif self.path == "/_control/health":
            self._send(200, {"status": "ok", "items": len(self.server.state.items)})
        else:
            self._send_error(AwsError(404, "UnknownOperationException", f"No operation at GET {self.path}"))

    def do_POST(self) -> None:  # noqa: N802
        raw = self._body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if self.path.startswith("/_control/"):
            self._control(self.path, body)
        elif self.path.split("?", 1)[0] == "/recommendations":
            self._recommendations(body)
        else:
            self._send_error(AwsError(404, "UnknownOperationException", f"No operation at POST {self.path}"))

    def _control(self, path: str, body: Any) -> None:
        state = self.server.state
        body = body if isinstance(body, dict) else {}
        try:
            if path == "/_control/fault":
                state.set_fault(
                    str(body.get("mode", "ok")), body.get("latency_ms", 0), body.get("status", 500), body.get("times")
                )
            elif path == "/_control/answer":
                state.set_answer(str(body["userId"]), body.get("itemIds", []), body.get("recommendationId"))
            elif path == "/_control/reset":
                state.reset()
            else:
                self._send(404, {"error": f"unknown control path {path}"})
                return
        except (FaultError, KeyError, TypeError, ValueError) as exc:
            self._send(400, {"error": str(exc)})
            return
        self._send(200, {"ok": True})

    def _recommendations(self, body: Any) -> None:
        state = self.server.state
        sequence, mode, latency_ms, status, release = state.record(body)
        if mode == "latency":
            release.wait(latency_ms / 1000)
        elif mode == "hang":
            release.wait(HANG_SECONDS)
        if mode == "error500":
            name = "ServiceUnavailable" if status == 503 else "InternalServerError"
            self._send_error(AwsError(status, name, "We encountered an internal error. Please try again."))
            return
        if mode == "throttle":
            self._send_error(AwsError(400, "ThrottlingException", "Rate exceeded"))
            return
        if mode == "not_found":
            fields = body if isinstance(body, dict) else {}
            arn = fields.get("campaignArn") or fields.get("recommenderArn") or ""
            self._send_error(AwsError(404, "ResourceNotFoundException", f"Resource {arn} does not exist."))
            return
        try:
            answer = get_recommendations(state, body, sequence)
        except AwsError as error:
            self._send_error(error)
            return
        self._send(200, answer)


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State, verbose: bool = False) -> None:
        self.state = state
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open client connection so their handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class StandinHandle:
    """A stand-in running in this process: its URL, its calls, and switches for its behaviour."""

    def __init__(self, server: StandinServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host, self.port = str(host), int(port)
        self.url = f"http://{self.host}:{self.port}"
        self.state = server.state

    def calls(self) -> dict[str, Any]:
        return self.state.calls()

    def set_fault(self, mode: str, latency_ms: int = 0, status: int = 500, times: int | None = None) -> None:
        self.state.set_fault(mode, latency_ms, status, times)

    def set_answer(self, user_id: str, item_ids: Sequence[str], recommendation_id: str | None = None) -> None:
        self.state.set_answer(user_id, item_ids, recommendation_id)

    def ranked(self, user_id: str, num_results: int = DEFAULT_NUM_RESULTS) -> list[str]:
        """The items this stand-in answers for the user (without a fixed answer), best first."""
        return self.state.ranked(user_id)[:num_results]

    def reset(self) -> None:
        self.state.reset()

    def stop(self) -> None:
        self.state.reset()  # wake anything hanging
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StandinHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_standin(
    items: Sequence[str], arns: Iterable[str] = (), host: str = "127.0.0.1", port: int = 0, verbose: bool = False
) -> StandinHandle:
    """Start the stand-in on a daemon thread; port 0 picks a free port (see handle.url)."""
    server = StandinServer((host, port), State(items, arns), verbose)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="personalize-standin", daemon=True)
    thread.start()
    return StandinHandle(server, thread)


def items_from(spec: str) -> list[str]:
    """Read item ids from a catalog CSV's ITEM_ID column (any case), or from a comma-separated list."""
    path = Path(spec)
    if path.is_file():
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in reader.fieldnames or () if c.strip().lower() in ("item_id", "id")), None)
            if column is None:
                raise SystemExit(f"{spec}: no ITEM_ID column")
            return [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    return [part.strip() for part in spec.split(",") if part.strip()]


class Control(ControlClient):
    """A client of a stand-in running in another process, with the same methods as StandinHandle."""

    def set_answer(self, user_id: str, item_ids: Sequence[str], recommendation_id: str | None = None) -> None:
        self._call("POST", "/_control/answer", {"userId": user_id, "itemIds": list(item_ids),
                                                 "recommendationId": recommendation_id})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A stand-in for Amazon Personalize Runtime (GetRecommendations).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--items-from", required=True, help="a catalog CSV with an ITEM_ID column, or id1,id2,...")
    parser.add_argument("--arn", action="append", default=[], help="the only ARN(s) that exist; others get 404")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    handle = start_standin(items_from(args.items_from), args.arn, args.host, args.port, args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"LISTENING {handle.host}:{handle.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
