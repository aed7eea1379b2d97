"""Answer a personalize-runtime client's GetRecommendations on the wire, where botocore's Stubber answered the call.

botocore's Stubber answers at the client's before-call, so nothing after it runs: no serialising, signing,
HTTP or error parsing. The service no longer calls the client (app/sources/personalize.py, PersonalizeRuntime
sends the requests itself), so its tests queue HTTP answers instead, with Stubber's own method names: each
signed request is checked (its JSON body against expected_params, a SigV4 Authorization header) and answered
with the rest-json bytes Personalize sends: a JSON body, or an error status with x-amzn-ErrorType and
{"__type", "message"}. Every request the service sends goes through botocore's before-send event, which this
handler answers, so nothing reaches the network.
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse

EVENT = "before-send.personalize-runtime.GetRecommendations"


class _Raw:
    """The raw body botocore's AWSResponse reads."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


class WireStub:
    """Queue GetRecommendations answers for one client; every request must match the next one queued."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._queue: deque[tuple[int, dict[str, str], bytes, dict[str, Any] | None]] = deque()
        self.requests: list[Any] = []  # the signed requests answered, in order

    def __enter__(self) -> WireStub:
        self.client.meta.events.register(EVENT, self._answer, unique_id="tests-wire-stub")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.meta.events.unregister(EVENT, unique_id="tests-wire-stub")

    def add_response(self, method: str, service_response: dict[str, Any],
                     expected_params: dict[str, Any] | None = None) -> None:
        assert method == "get_recommendations", method
        self._queue.append((200, {"Content-Type": "application/json"}, json.dumps(service_response).encode(),
                            expected_params))

    def add_client_error(self, method: str, service_error_code: str = "", service_message: str = "",
                         http_status_code: int = 400, expected_params: dict[str, Any] | None = None) -> None:
        assert method == "get_recommendations", method
        body = json.dumps({"__type": service_error_code, "message": service_message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": service_error_code}
        self._queue.append((http_status_code, headers, body, expected_params))

    def assert_no_pending_responses(self) -> None:
        assert not self._queue, f"{len(self._queue)} queued answers were not asked for"

    def _answer(self, request: Any, **kwargs: Any) -> AWSResponse:
        assert self._queue, f"unexpected GetRecommendations: {request.body!r}"
        status, headers, body, expected = self._queue.popleft()
        authorization = str(request.headers["Authorization"])
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=") and "/personalize/aws4_request" in \
            authorization, authorization
        if expected is not None:
            assert json.loads(request.body) == expected, (json.loads(request.body), expected)
        self.requests.append(request)
        return AWSResponse(request.url, status, headers, _Raw(body))
