"""app/wire.py's CurlSession on real sockets (127.0.0.1, free ports): failures, TLS, connection reuse, errors.

libcurl's failures must become the botocore exceptions urllib3's would have (so botocore's retries and the
project's error mapping treat them alike), connections must be kept and reused, and what goes on the wire
must be the request as signed. Servers here are the Personalize stand-in (plain or behind TLS, with a
certificate from tests/redis_server.py's Tls) and a hand-written HTTP/1.1 server whose every answer (or
silence, or dropped connection) the test chooses.
"""
from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)

from app.aws import Timeouts
from app.errors import UpstreamError
from app.sources.personalize import PersonalizeRecommender, PersonalizeRuntime
from app.wire import CurlSession
from tests.redis_server import Tls
from tests.standin.personalize import StandinHandle, StandinServer, State

CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/x"
ITEMS = ["1000", "1037", "1074", "1111"]
KEYS = Credentials("testing", "testing", "testing")
ANSWER = {"itemList": [{"itemId": "1000"}, {"itemId": "1037"}], "recommendationId": "RID-raw"}
PARAMS = {"campaignArn": CAMPAIGN, "userId": "u1", "numResults": 2}
WAIT = 5.0  # the longest a test waits for a server-side event it expects (it fails if the event never comes)


# -- a hand-written HTTP/1.1 server ------------------------------------------------------------------------------


class Request:
    def __init__(self, line: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.line, self.headers, self.body = line, headers, body

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


def http_answer(status: int = 200, payload: Any = ANSWER, headers: tuple[tuple[str, str], ...] = (),
                interim: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers)]
    return interim + ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer:
    """HTTP/1.1 on a free 127.0.0.1 port, each connection on a thread of its own, kept alive between requests.

    answer(n, request) gives the bytes to send for the n-th request (from 0, over all connections), or None to
    close the connection without answering; with close_after_answer, the server closes each connection once it
    has answered. Counts connections accepted, closed by the client and closed by the server after answering.
    """

    def __init__(self, answer: Callable[[int, Request], bytes | None]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        self.accepted = 0
        self.closed_by_client = 0
        self.closed_after_answer = 0
        self.close_after_answer = False
        self.greeting = b""  # sent as soon as a connection is accepted, before reading anything
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="raw-http-accept", daemon=True)
        self._acceptor.start()

    def wait_for(self, predicate: Callable[[], bool]) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout=WAIT)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # stop() shut the listener
            with self._changed:
                self.accepted += 1
                self._connections.append(connection)
                self._changed.notify_all()
            thread = threading.Thread(target=self._serve, args=(connection,), name="raw-http", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        try:
            if self.greeting:
                connection.sendall(self.greeting)
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        with self._changed:
                            self.closed_by_client += 1
                            self._changed.notify_all()
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")
                headers = [(name.strip(), value.strip()) for name, _, value in (f.partition(":") for f in fields)]
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                request = Request(line, headers, buffer[:length])
                buffer = buffer[length:]
                with self._changed:
                    n = len(self.requests)
                    self.requests.append(request)
                    self._changed.notify_all()
                reply = self.answer(n, request)
                if reply is None:
                    return
                connection.sendall(reply)
                if self.close_after_answer:
                    connection.close()
                    with self._changed:
                        self.closed_after_answer += 1
                        self._changed.notify_all()
                    return
        except OSError:
            return  # stop() cut the connection
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(WAIT)
        with self._changed:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(WAIT)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[int, Request], bytes | None]], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Callable[[int, Request], bytes | None]) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


# -- the stand-in, counting connections, optionally behind TLS --------------------------------------------------


class CountingStandin(StandinServer):
    accepted = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        self.accepted += 1  # serve_forever's thread only
        super().process_request(request, client_address)


def start_standin(tls: Tls | None = None) -> tuple[StandinHandle, CountingStandin]:
    server = CountingStandin(("127.0.0.1", 0), State(ITEMS))
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    handle = StandinHandle(server, thread)
    if tls is not None:
        handle.url = f"https://127.0.0.1:{handle.port}"
    return handle, server


@pytest.fixture
def standin() -> Iterator[tuple[StandinHandle, CountingStandin]]:
    handle, server = start_standin()
    yield handle, server
    handle.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls.make(tmp_path_factory.mktemp("wire-tls"))


@pytest.fixture
def tls_standin(tls: Tls) -> Iterator[StandinHandle]:
    handle, _ = start_standin(tls)
    yield handle
    handle.stop()


# -- clients ----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def aws_env(isolated_aws: None) -> None:
    """Dummy keys, and nothing from the machine: no config file, CA bundle, endpoint or proxy."""


def make_client(endpoint: str, attempts: int = 1, pool: int = 4, connect: float = 1.0, read: float = 2.0,
                **kwargs: Any) -> Any:
    return boto3.session.Session().client("personalize-runtime", region_name="us-east-1", endpoint_url=endpoint,
                                          config=Timeouts(connect, read, attempts, pool).config(), **kwargs)


def make_runtime(endpoint: str, **kwargs: Any) -> PersonalizeRuntime:
    runtime = PersonalizeRuntime(make_client(endpoint, **kwargs), KEYS)
    assert runtime.curl is not None  # the call goes through libcurl, not botocore's own session
    return runtime


def count_attempts(runtime: PersonalizeRuntime) -> list[int]:
    """Record each attempt's number, as the client's before-send handlers see it."""
    seen: list[int] = []

    def record(request: Any, **kwargs: Any) -> None:
        seen.append(int(str(request.headers["amz-sdk-request"]).split(";")[0].split("=")[1]))

    runtime.events.register("before-send.personalize-runtime.GetRecommendations", record)
    return seen


def recommender_on(runtime: PersonalizeRuntime) -> PersonalizeRecommender:
    recommender = PersonalizeRecommender(CAMPAIGN, lambda: None)
    recommender._runtime = runtime  # the runtime (and its client) the test built and watches
    return recommender


HEADERS = [("Content-Type", "application/json")]


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 that nothing listens on (held for the test, so nothing else takes it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# -- failures ---------------------------------------------------------------------------------------------------


def test_a_refused_port_is_endpoint_connection_error(refused_port: int) -> None:
    session = CurlSession(f"http://127.0.0.1:{refused_port}/recommendations", 1.0, 1.0, 2, None)

    with pytest.raises(EndpointConnectionError) as caught:
        session.post(HEADERS, b"{}")

    assert f"127.0.0.1:{refused_port}" in str(caught.value)
    assert not session._idle  # the failed handle is not kept


def test_a_refused_port_is_upstream_unavailable_after_botocore_s_retries(refused_port: int) -> None:
    runtime = make_runtime(f"http://127.0.0.1:{refused_port}", attempts=3)
    attempts = count_attempts(runtime)

    with pytest.raises(UpstreamError) as caught:
        recommender_on(runtime).recommend("u1", 2)

    assert (caught.value.code, caught.value.status) == ("upstream_unavailable", 502)
    assert isinstance(caught.value.__cause__, EndpointConnectionError)
    assert attempts == [1, 2, 3]


def test_a_connection_closed_without_an_answer_is_connection_closed_error(raw_server: Any) -> None:
    server = raw_server(lambda n, request: None)
    session = CurlSession(server.url + "/recommendations", 1.0, 1.0, 2, None)

    with pytest.raises(ConnectionClosedError):
        session.post(HEADERS, b"{}")

    assert len(server.requests) == 1 and server.requests[0].body == b"{}"


def test_a_dropped_request_is_retried_and_the_retry_answers(raw_server: Any) -> None:
    server = raw_server(lambda n, request: None if n == 0 else http_answer())
    runtime = make_runtime(server.url, attempts=2)
    attempts = count_attempts(runtime)

    answer = runtime.get_recommendations(**PARAMS)

    assert answer == ANSWER
    assert attempts == [1, 2]
    assert [json.loads(r.body) for r in server.requests] == [PARAMS, PARAMS]
    assert server.accepted == 2  # the dropped connection was not reused


def test_a_dropped_request_with_one_attempt_is_upstream_unavailable(raw_server: Any) -> None:
    server = raw_server(lambda n, request: None)
    runtime = make_runtime(server.url, attempts=1)

    with pytest.raises(UpstreamError) as caught:
        recommender_on(runtime).recommend("u1", 2)

    assert caught.value.code == "upstream_unavailable"
    assert isinstance(caught.value.__cause__, ConnectionClosedError)
    assert len(server.requests) == 1


def test_a_kept_connection_the_server_closed_is_replaced_without_an_error(raw_server: Any) -> None:
    """Personalize closes idle connections: the next call on the pooled handle connects afresh."""
    server = raw_server(lambda n, request: http_answer())
    server.close_after_answer = True
    session = CurlSession(server.url + "/recommendations", 1.0, 1.0, 2, None)
    assert session.post(HEADERS, b"{}").status_code == 200
    assert server.wait_for(lambda: server.closed_after_answer == 1)

    assert session.post(HEADERS, b"{}").status_code == 200

    assert server.accepted == 2 and len(server.requests) == 2


def test_a_server_that_does_not_answer_is_read_timeout_error(raw_server: Any) -> None:
    server = raw_server(lambda n, request: http_answer() if n == 0 else server.stopping.wait(WAIT) and None)
    session = CurlSession(server.url + "/recommendations", 0.3, 0.2, 2, None)
    assert session.post(HEADERS, b"{}").status_code == 200  # a kept connection: the read timeout alone

    with pytest.raises(ReadTimeoutError):
        session.post(HEADERS, b"{}")
    with pytest.raises(ReadTimeoutError):  # a new connection: connected, then no answer
        session.post(HEADERS, b"{}")

    assert len(server.requests) == 3


def test_a_connection_that_cannot_be_made_in_time_is_connect_timeout_error() -> None:
    """A listener whose accept queue is full: Linux drops the SYN, so the connection is never made."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            session = CurlSession(f"http://127.0.0.1:{listener.getsockname()[1]}/recommendations", 0.2, 5.0, 2,
                                  None)
            started = time.monotonic()

            with pytest.raises(ConnectTimeoutError):
                session.post(HEADERS, b"{}")

            assert time.monotonic() - started < 2.5  # the connect timeout, well before connect + read
        finally:
            for filler in fillers:
                filler.close()


# -- what goes on the wire ---------------------------------------------------------------------------------------


def test_what_libcurl_sends_is_the_request_botocore_would_sign(raw_server: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The server re-signs the request it received with botocore (host, headers, body as they arrived)."""
    server = raw_server(lambda n, request: http_answer())
    params = {**PARAMS, "userId": "Ana María 🚀", "context": {"DEVICE": "x" * (1 << 20)}}  # past libcurl's Expect size
    runtime = make_runtime(server.url)

    runtime.get_recommendations(**params)

    (request,) = server.requests
    assert request.line == "POST /recommendations HTTP/1.1"
    assert json.loads(request.body) == params
    assert request.header("host") == f"127.0.0.1:{server.port}"
    assert request.header("content-length") == str(len(request.body))
    assert request.header("expect") is None and request.header("accept") is None  # not libcurl's defaults
    assert request.header("x-amz-security-token") == KEYS.token
    authorization = request.header("authorization")
    assert authorization is not None
    signed_names = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert signed_names == ["content-type", "host", "x-amz-date", "x-amz-security-token"]
    when = datetime.datetime.strptime(str(request.header("x-amz-date")), "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: when)
    resigned = AWSRequest("POST", server.url + "/recommendations", data=request.body,
                          headers={name: value for name, value in request.headers if name.lower() in signed_names})
    SigV4Auth(KEYS, "personalize", "us-east-1").add_auth(resigned)
    assert resigned.headers["Authorization"] == authorization


def test_an_error_answer_is_botocore_s_client_error(raw_server: Any) -> None:
    """The code comes from x-amzn-ErrorType (before the body's __type), found after an interim 100 Continue."""
    interim = b"HTTP/1.1 100 Continue\r\nx-amzn-ErrorType: NotThisOne\r\nX-Interim: yes\r\n\r\n"
    server = raw_server(lambda n, request: http_answer(
        400, {"__type": "com.amazonaws#Ignored", "message": "userId is required"},
        (("x-amzn-ErrorType", "InvalidInputException:http://internal.amazon.com/coral/com.amazon.personalize/"),
         ("x-amzn-RequestId", "req-42")), interim))
    runtime = make_runtime(server.url, attempts=2)

    with pytest.raises(ClientError) as caught:
        runtime.get_recommendations(**PARAMS)

    error = caught.value.response
    assert error["Error"] == {"Code": "InvalidInputException", "Message": "userId is required"}
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["ResponseMetadata"]["RequestId"] == "req-42"
    assert "x-interim" not in error["ResponseMetadata"]["HTTPHeaders"]  # the 100's headers were dropped
    assert caught.value.operation_name == "GetRecommendations"
    assert len(server.requests) == 1  # a 400 that is not throttling is not retried


def test_a_throttling_answer_from_the_standin_is_upstream_throttled(
    standin: tuple[StandinHandle, CountingStandin],
) -> None:
    handle, _ = standin
    handle.set_fault("throttle")
    runtime = make_runtime(handle.url, attempts=1)

    with pytest.raises(UpstreamError) as caught:
        recommender_on(runtime).recommend("u1", 2)

    assert caught.value.code == "upstream_throttled"
    assert isinstance(caught.value.__cause__, ClientError)
    assert caught.value.__cause__.response["Error"]["Code"] == "ThrottlingException"
    assert handle.calls()["total"] == 1


# -- HTTPS --------------------------------------------------------------------------------------------------------


def test_https_with_aws_ca_bundle_trusting_the_server(tls_standin: StandinHandle, tls: Tls,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls.ca_file))
    runtime = make_runtime(tls_standin.url)
    assert runtime.curl is not None and runtime.curl._ca_bundle == str(tls.ca_file)

    answer = runtime.get_recommendations(**PARAMS)

    assert [entry["itemId"] for entry in answer["itemList"]] == tls_standin.ranked("u1", 2)


def test_https_to_a_server_the_default_bundle_does_not_trust_is_ssl_error(tls_standin: StandinHandle) -> None:
    runtime = make_runtime(tls_standin.url)

    with pytest.raises(SSLError):
        runtime.get_recommendations(**PARAMS)
    with pytest.raises(UpstreamError) as caught:
        recommender_on(runtime).recommend("u1", 2)

    assert caught.value.code == "upstream_unavailable"
    assert isinstance(caught.value.__cause__, SSLError)
    assert tls_standin.calls()["total"] == 0


def test_https_with_verify_false_is_not_verified(tls_standin: StandinHandle) -> None:
    runtime = make_runtime(tls_standin.url, verify=False)

    answer = runtime.get_recommendations(**PARAMS)

    assert [entry["itemId"] for entry in answer["itemList"]] == tls_standin.ranked("u1", 2)


def test_https_to_a_plain_http_server_is_ssl_error(raw_server: Any) -> None:
    server = raw_server(lambda n, request: None)
    server.greeting = http_answer(400, {"message": "this is not TLS"})
    session = CurlSession(f"https://127.0.0.1:{server.port}/recommendations", 1.0, 1.0, 2, None)

    with pytest.raises(SSLError):
        session.post(HEADERS, b"{}")


def test_a_tls_handshake_that_never_ends_is_read_timeout_error_as_urllib3_says(raw_server: Any) -> None:
    """The TCP connection is made, the server never answers the ClientHello: urllib3 (so botocore) says read."""
    server = raw_server(lambda n, request: None)  # waits for a request line the ClientHello never has
    session = CurlSession(f"https://127.0.0.1:{server.port}/recommendations", 0.2, 0.1, 2, None)

    with pytest.raises(ReadTimeoutError):
        session.post(HEADERS, b"{}")

    assert server.accepted == 1


# -- connections --------------------------------------------------------------------------------------------------


def test_sequential_calls_share_one_connection(standin: tuple[StandinHandle, CountingStandin]) -> None:
    handle, server = standin
    runtime = make_runtime(handle.url, pool=4)

    for n in range(20):
        runtime.get_recommendations(**{**PARAMS, "userId": f"u{n}"})

    assert handle.calls()["total"] == 20
    assert server.accepted == 1
    assert runtime.curl is not None and len(runtime.curl._idle) == 1


def test_the_pool_keeps_at_most_pool_idle_handles_after_concurrent_calls(raw_server: Any) -> None:
    callers, pool = 6, 2
    together = threading.Barrier(callers, timeout=WAIT)

    def answer_when_all_are_in(n: int, request: Request) -> bytes:
        together.wait()  # every caller has a request in flight at once
        return http_answer()

    server = raw_server(answer_when_all_are_in)
    session = CurlSession(server.url + "/recommendations", 1.0, WAIT, pool, None)
    statuses: list[int] = []

    def call() -> None:
        statuses.append(session.post(HEADERS, b"{}").status_code)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)

    assert statuses == [200] * callers
    assert server.accepted == callers
    assert len(session._idle) == pool
    assert server.wait_for(lambda: server.closed_by_client == callers - pool)  # the others closed theirs
    server.answer = lambda n, request: http_answer()
    for _ in range(3):
        assert session.post(HEADERS, b"{}").status_code == 200
    assert server.accepted == callers  # the kept connections are reused
    session.close()
    assert server.wait_for(lambda: server.closed_by_client == callers)
    assert not session._idle
