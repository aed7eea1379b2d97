"""The recommender configuration API, /v1/recommenders, as Amazon Pinpoint's (the seed) defines it.

Unlike the rest of the service, its errors have Pinpoint's MessageBody shape, {"Message", "RequestID"},
with Pinpoint's status codes, so scripts written against Pinpoint keep working. `message_body` is the one
place that shape is built. It needs one of ADMIN_API_KEYS (X-API-Key or the Basic auth password, as
API_KEYS for /recommendations) or a request signed with AWS Signature Version 4 by a key of ADMIN_AWS_KEYS
(app/pinpoint/sigv4.py), so the AWS SDKs and CLI work unchanged; with neither set, the API is off and every path
answers 404 saying so.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from flask import Blueprint, Response, g, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from app.components import components
from app.errors import with_http_headers
from app.json import json_response
from app.pinpoint import sigv4
from app.pinpoint.configs import (
    MAX_PAGE_SIZE,
    BadTokenError,
    RecommenderConfigurationSchema,
    RecommenderStore,
    StoreError,
    describe_problems,
    new_record,
    replaced_record,
)
from app.recommendations.auth import address_allowed, key_matches, presented_keys
from app.recommendations.query import whole_number

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/v1/recommenders")
schema = RecommenderConfigurationSchema()
MAX_BODY_BYTES = 64 * 1024


class AdminError(Exception):
    """An error answered in Pinpoint's MessageBody shape with Pinpoint's status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Pinpoint's modelled error for each status: SDKs read X-Amzn-ErrorType to raise client.exceptions.NotFoundException
# and the like, and the AWS CLI names it; without it their error code would be the bare status.
ERROR_TYPES = {400: "BadRequestException", 403: "ForbiddenException", 404: "NotFoundException",
               405: "MethodNotAllowedException", 409: "ConflictException", 413: "PayloadTooLargeException",
               429: "TooManyRequestsException", 500: "InternalServerErrorException"}


def error_type(status: int) -> str:
    """Name Pinpoint's modelled error for a status; one it does not model counts as a bad request or a failure."""
    return ERROR_TYPES.get(status) or ("BadRequestException" if status < 500 else "InternalServerErrorException")


def message_body(status: int, message: str) -> Response:
    """Build Pinpoint's error body, {"Message", "RequestID"}, with its type in X-Amzn-ErrorType and the
    request's id in X-Amzn-RequestId."""
    request_id = getattr(g, "request_id", None) or str(uuid.uuid4())
    response = json_response({"Message": message, "RequestID": request_id}, status)
    response.headers["X-Amzn-RequestId"] = request_id
    response.headers["X-Amzn-ErrorType"] = error_type(status)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(AdminError)
def _admin_error(exc: AdminError) -> Response:
    return message_body(exc.status, exc.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return with_http_headers(message_body(exc.code or 500, exc.description or exc.name), exc)


@bp.errorhandler(StoreError)
def _store_error(exc: StoreError) -> Response:
    log.error("recommender store failed: %s", exc)
    return message_body(500, "The configuration store failed; the error is logged.")


@bp.errorhandler(Exception)
def _crash(exc: Exception) -> Response:
    log.exception("admin API error")
    return message_body(500, "The request failed unexpectedly; the error is logged.")


@bp.before_request
def _authorize() -> None:
    settings = components().settings
    if not settings.admin_api_on:
        raise AdminError(404, "The recommender configuration API is off: set ADMIN_API_KEYS (or ADMIN_AWS_KEYS) "
                              "to turn it on.")
    if not address_allowed(request, settings.admin_allowed_cidrs):
        raise AdminError(403, "This address may not call the recommender configuration API (see "
                              "ADMIN_ALLOWED_CIDRS, which defaults to ALLOWED_CIDRS).")
    if request.method == "OPTIONS":
        return  # what the resource allows is no secret (and a CORS preflight carries no key)
    keys = [key.encode("utf-8") for key in settings.admin_api_keys]
    if keys and any(key_matches(candidate, keys) for candidate in presented_keys(request)):
        return
    if sigv4.is_signed(request):
        if not settings.admin_aws_keys:
            raise AdminError(403, "Signed requests need ADMIN_AWS_KEYS, the access keys they may be signed with.")
        try:
            sigv4.verify(request, _raw_body, settings.admin_aws_keys)
        except sigv4.SignatureError as exc:
            raise AdminError(403, str(exc)) from None
        return
    raise AdminError(403, "A valid admin API key is required (ADMIN_API_KEYS): send it in the X-API-Key header "
                          "or as the Basic auth password, or sign the request with a key of ADMIN_AWS_KEYS "
                          "(AWS Signature Version 4, as the AWS SDKs and CLI do).")


@bp.after_request
def _request_id(response: Response) -> Response:
    response.headers.setdefault("X-Amzn-RequestId", g.get("request_id", ""))
    return response


def _store() -> RecommenderStore:
    return components().store


def _forget(config_id: str) -> None:
    components().configured.forget(config_id)


def _raw_body() -> bytes:
    """Return the request's body, read once; raise AdminError 413 when it is over MAX_BODY_BYTES."""
    # werkzeug refuses a larger Content-Length at once and stops reading a chunked body (no Content-Length) at
    # the limit without a word: a limit one byte over tells a body that is too large from one just at it.
    request.max_content_length = MAX_BODY_BYTES + 1
    try:
        raw = request.get_data(cache=True)  # a signed request's body is read for its hash, then parsed
    except RequestEntityTooLarge:
        raw = None
    if raw is None or len(raw) > MAX_BODY_BYTES:
        raise AdminError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    return raw


def _body() -> dict[str, Any]:
    """Return the request's configuration, validated; raise AdminError 400 (or 413) naming what is wrong."""
    raw = _raw_body()
    try:
        # orjson refuses nesting deeper than 1024 with a JSONDecodeError; the stdlib parser overflows the stack.
        data = orjson.loads(raw) if request.is_json else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise AdminError(400, "The request body must be a JSON object (Content-Type: application/json).")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise AdminError(400, f"Invalid recommender configuration. {describe_problems(exc)}") from None


@bp.get("")
def list_configurations() -> Response:
    """GetRecommenderConfigurations: one page of configurations, oldest first, and the next page's token."""
    try:
        args = request.args
    except UnicodeDecodeError:  # a byte above 0x7f sent raw: werkzeug cannot decode the query string
        raise AdminError(400, "The query string is not UTF-8: percent-encode it.") from None
    for name in ("page-size", "token"):
        if len(args.getlist(name)) > 1:  # as GET /recommendations: which one was meant is a guess
            raise AdminError(400, f"Give {name} once.")
    page_size = whole_number(args.get("page-size", str(MAX_PAGE_SIZE)))
    if page_size is None or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise AdminError(400, f"page-size must be a whole number from 1 to {MAX_PAGE_SIZE} (ASCII digits).")
    try:
        items, token = _store().list(page_size, args.get("token") or None)
    except BadTokenError as exc:
        raise AdminError(400, str(exc)) from None
    return json_response({"Item": items, "NextToken": token})


@bp.post("")
def create_configuration() -> Response:
    """CreateRecommenderConfiguration: store a new configuration and answer 201 with it."""
    record = new_record(_body())
    _store().create(record)
    _forget(record["Id"])  # an Id asked for before it existed may be cached as unknown
    return json_response(record, 201)


@bp.get("/<config_id>")
def get_configuration(config_id: str) -> Response:
    """GetRecommenderConfiguration."""
    record = _store().get(config_id)
    if record is None:
        raise AdminError(404, f"There is no recommender configuration {config_id!r}.")
    return json_response(record)


@bp.put("/<config_id>")
def update_configuration(config_id: str) -> Response:
    """UpdateRecommenderConfiguration: replace the configuration (Id and CreationDate stay)."""
    body = _body()
    old = _store().get(config_id)
    if old is None:
        raise AdminError(404, f"There is no recommender configuration {config_id!r}.")
    record = replaced_record(old, body)
    if not _store().replace(record):
        raise AdminError(404, f"There is no recommender configuration {config_id!r}.")
    _forget(config_id)
    return json_response(record)


@bp.delete("/<config_id>")
def delete_configuration(config_id: str) -> Response:
    """DeleteRecommenderConfiguration: remove it and answer with what was removed."""
    record = _store().delete(config_id)
    if record is None:
        raise AdminError(404, f"There is no recommender configuration {config_id!r}.")
    _forget(config_id)
    return json_response(record)


# What each resource answers (the reference's Recommender Models and Recommender Model resources), for Allow.
COLLECTION_METHODS = ("GET", "POST", "OPTIONS")
ITEM_METHODS = ("GET", "PUT", "DELETE", "OPTIONS")


def _allowed(config_id: str | None) -> list[str]:
    return list(ITEM_METHODS if config_id else COLLECTION_METHODS)


@bp.after_request
def _advertise(response: Response) -> Response:
    # Flask's automatic OPTIONS lists every method a route names, the 405 route's below too: say only what answers.
    if request.method == "OPTIONS" and response.status_code == 200:
        response.headers["Allow"] = ", ".join(_allowed((request.view_args or {}).get("config_id")))
    return response


@bp.route("", methods=["PUT", "PATCH", "DELETE"])
@bp.route("/<config_id>", methods=["POST", "PATCH"])
def method_not_allowed(config_id: str | None = None) -> Response:
    """Answer other methods here (not in Flask's router) so the 405 has the MessageBody shape too."""
    raise MethodNotAllowed(valid_methods=_allowed(config_id))
