"""The service's errors and the one JSON shape every error response has."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.json import json_response
from app.telemetry.logs import Occasional, held_back

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        errors: dict[str, Any] | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.errors = errors
        self.retry_after = retry_after
        self.headers = headers or {}


class InvalidParameterError(ServiceError):
    """The request's parameters are wrong; `errors` maps each parameter to what is wrong with it."""

    status = 400
    code = "invalid_parameter"


class UpstreamError(ServiceError):
    """The recommendation source failed or could not be reached."""

    status = 502
    code = "upstream_error"


class UnavailableError(ServiceError):
    """The service cannot answer yet, e.g. no catalog has been loaded."""

    status = 503
    code = "unavailable"


class Unavailable:
    """Build 503s that tell the caller a sentence, never the detail (a file path, a URI, a table name); the
    detail is logged when it differs from the last one logged for the code, not once per request."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}  # code -> the detail last logged for it

    def __call__(self, code: str, sentence: str, detail: Exception) -> UnavailableError:
        text = str(detail)
        if self._last.get(code) != text:
            self._last[code] = text
            log.error("%s: %s", code, text)
        return UnavailableError(sentence, code=code)


def error_response(status: int, code: str, message: str, errors: dict[str, Any] | None = None) -> Response:
    """Build the JSON error body used for every error: {"error": {"code", "status", "message"[, "errors"]}}."""
    body: dict[str, Any] = {"code": code, "status": status, "message": message}
    if errors:
        body["errors"] = errors
    response = json_response({"error": body}, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def with_http_headers(response: Response, exc: HTTPException) -> Response:
    """Copy an HTTP error's own headers (e.g. Allow on a 405) onto its JSON response."""
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, including unknown routes and crashes, with the JSON error shape."""

    occasional = Occasional()

    @app.errorhandler(ServiceError)
    def handle_service_error(exc: ServiceError) -> Response:
        if exc.status >= 500 and (count := occasional.due(exc.code)) is not None:
            log.warning("%s: %s%s", exc.code, exc.message, held_back(count))
        response = error_response(exc.status, exc.code, exc.message, exc.errors)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return with_http_headers(error_response(status, code, exc.description or exc.name), exc)

    @app.errorhandler(Exception)
    def handle_crash(exc: Exception) -> Response:
        if (count := occasional.due(f"crash:{type(exc).__name__}")) is not None:
            log.exception("unhandled error%s", held_back(count))
        return error_response(500, "internal_error", "The service failed unexpectedly; the error is logged.")
