"""When the worker's event loop holds a request as whole (app/server/worker.py), and the error answers it writes."""
from __future__ import annotations

import json

import pytest

from app.server.worker import MAX_BUFFERED, error_answer, request_ready

HEAD = b"GET /recommendations?user_id=u1 HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("data, ready", [
    (b"", False),
    (b"GET /recommendations?user_id=u1 HTTP/1.1\r\n", False),
    (HEAD, False),
    (HEAD + b"\r\n", True),
    (HEAD + b"\r\nGET /healthz HTTP/1.1\r\n", True),  # pipelined: the rest stays for the next request
    (b"GET / HTTP/1.1\nHost: x\n\n", True),  # bare LF: gunicorn's parser decides what it makes of it
    (b"POST /v1/recommenders HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", False),
    (b"POST /v1/recommenders HTTP/1.1\r\ncontent-length: 5\r\n\r\nabcde", True),
    (b"POST /v1/recommenders HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", True),
    (b"POST /v1/recommenders HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BUFFERED + 1), True),
    (b"GET /" + b"a" * MAX_BUFFERED, True),  # over the buffer: gunicorn's parser answers 414
])
def test_request_ready(data: bytes, ready: bool) -> None:
    assert request_ready(data) is ready


def test_error_answer_is_http_with_the_json_error_shape() -> None:
    answer = error_answer(414, "uri_too_long", "Too long.")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 414 URI Too Long"
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert json.loads(body) == {"error": {"code": "uri_too_long", "status": 414, "message": "Too long."}}
