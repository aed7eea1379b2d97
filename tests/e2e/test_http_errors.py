"""Requests gunicorn itself refuses get the service's JSON error shape, and its log lines carry no user id.

Also: a bad PORT stops gunicorn with a sentence naming PORT, and the master's "Listening at" line names the
address (with reuse_port the master has no socket of its own).
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import free_port, run_gunicorn_to_exit, service_env
from tests.standin.personalize import StandinHandle

USER_KEY = "k" * 40
MARKER = "SECRETUSER"  # in every user id below: no log line may contain it


def raw_request(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as it is on a new connection; return the answer's status, headers and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> None:
    assert status == expected, body[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert (error["status"], error["code"]) == (expected, code)
    assert MARKER not in error["message"]


def test_refused_requests_answer_in_the_json_shape_and_log_no_user_id(gunicorn_factory: Any) -> None:
    server = gunicorn_factory(LOG_USER_ID_KEY=USER_KEY)
    long_id = MARKER + "x" * 4990  # about 5,000 characters: fits the request line limit (8190 bytes)

    fits = requests.get(server.url + "/recommendations", params={"user_id": long_id}, timeout=5)
    too_long = raw_request(server.url, f"GET /recommendations?user_id={MARKER}{'y' * 9000} HTTP/1.1\r\n"
                                       "Host: x\r\n\r\n".encode())
    big_header = raw_request(server.url, f"GET /recommendations?user_id={MARKER} HTTP/1.1\r\nHost: x\r\n"
                                         f"X-Big: {'z' * 9000}\r\n\r\n".encode())
    # Braze does not encode URL values: a user id with an accent arrives as raw UTF-8, which HTTP forbids.
    malformed = raw_request(server.url, f"GET /recommendations?user_id={MARKER}\u00e9 HTTP/1.1\r\n\r\n".encode())

    healthy = requests.get(server.url + "/healthz", timeout=5)
    server.stop()  # every line written, the request log's pending ones too
    output = server.output()

    assert MARKER not in output, [line for line in output.splitlines() if MARKER in line]
    assert output.count("Invalid request from ip=") == 3, output
    assert fits.status_code == 400 and fits.headers["content-type"] == "application/json"
    assert json.loads(fits.content)["error"]["errors"]["user_id"]  # the app's own answer: at most 256 characters
    assert_json_error(*too_long, 414, "uri_too_long")
    assert_json_error(*big_header, 431, "request_header_fields_too_large")
    assert_json_error(*malformed, 400, "bad_request")
    assert healthy.status_code == 200


def test_a_port_that_is_no_number_stops_gunicorn_naming_port(standin: StandinHandle, tmp_path: Path) -> None:
    env = service_env(standin.url, free_port(), PORT="abc")

    code, output, _ = run_gunicorn_to_exit(env, tmp_path / "gunicorn.log")

    assert code != 0
    assert "Cannot start: PORT must be a whole number of at least 1 and at most 65535, got 'abc'." in output
    assert "Traceback" not in output


def test_the_listening_line_names_the_address(gunicorn_factory: Any) -> None:
    server = gunicorn_factory()

    assert f"Listening at: {server.url}, on a socket per worker (reuse_port)" in server.output()
    assert "Listening at:  (" not in server.output()
