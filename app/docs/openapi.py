"""The OpenAPI 3.1 description at /openapi.json, generated from the query schema and this deployment's settings,
and a Swagger UI page at /docs served from the vendored files in app/static/swagger-ui (no CDN)."""
from __future__ import annotations

import re
import string
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, redirect, url_for
from marshmallow import Schema
from marshmallow import fields as ma

from app.catalog.items import ITEM_FIELDS
from app.components import components
from app.events.body import MAX_EVENTS_PER_REQUEST, EventsBodySchema
from app.events.views import MAX_BODY_BYTES as MAX_EVENTS_BODY_BYTES
from app.json import json_response
from app.pinpoint.configs import MAX_PAGE_SIZE, RecommenderConfigurationSchema
from app.preview.views import MAX_USERS as MAX_PREVIEW_USERS
from app.recommendations.query import (
    CONTEXT_KEY,
    FILTER_KEY,
    MAX_LINK_VALUE_LENGTH,
    MAX_VALUE_LENGTH,
    RecommendationQuery,
)
from app.settings import Settings

API_VERSION = "1"
FALLBACK_SOURCES = ("batch", "stale", "fallback")


class ErrorBody(Schema):
    """The body of every error."""

    code = ma.String(required=True, metadata={"description": "A stable code to match on, e.g. invalid_parameter."})
    status = ma.Integer(required=True, metadata={"description": "The HTTP status, repeated."})
    message = ma.String(required=True, metadata={"description": "What went wrong, for a person."})
    errors = ma.Dict(keys=ma.String(), values=ma.List(ma.String()),
                     metadata={"description": "For invalid_parameter: each bad parameter and what is wrong with it."})


class Error(Schema):
    """Every error response: {"error": {code, status, message[, errors]}}."""

    error = ma.Nested(ErrorBody, required=True)


def _item_schema(extra_fields: tuple[str, ...], link_tracking: bool = False) -> dict[str, Any]:
    """Return the JSON schema of an item; `fields` may narrow it, so no property is required."""
    text = {"type": ["string", "null"]}
    tracked = (" and recs_item (the item id) and recs_rid (the answer's id) for POST /events and ingest-currents"
               if link_tracking else "")
    properties: dict[str, Any] = {
        "id": {"type": "string", "description": "The item id Personalize and the catalog share."},
        "name": {"type": "string"},
        "url": {"type": "string", "description": f"The item's page, with LINK_QUERY added when set{tracked}."},
        "price": {"type": ["number", "null"]},
        "image": {"type": ["string", "null"]},
    }
    properties.update({name: {**text, "description": "A CATALOG_EXTRA_FIELDS column."} for name in extra_fields})
    if extra_fields:
        # With `fields`, a chosen field the item lacks comes back as null.
        for name in ITEM_FIELDS:
            properties[name] = {**properties[name], "type": _nullable(properties[name]["type"])}
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "description": "A catalog item, in the source's order; every field unless `fields` chooses some."}


def _nullable(kind: str | list[str]) -> list[str]:
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return kinds if "null" in kinds else [*kinds, "null"]


def _pairs_parameter(prefix: str, key: str, description: str) -> dict[str, Any]:
    """Describe PREFIX.KEY=value parameters: an object whose properties are sent as separate query parameters."""
    return {
        "name": f"{prefix}.NAME",
        "in": "query",
        "style": "form",
        "explode": True,
        "description": description,
        "schema": {
            "type": "object",
            "patternProperties": {
                f"^{prefix}\\.{key}$": {"type": "string", "minLength": 1, "maxLength": MAX_VALUE_LENGTH},
            },
            "additionalProperties": False,
        },
    }


def build_spec(settings: Settings, source: str) -> dict[str, Any]:
    """Return the OpenAPI document for this deployment (its filters, extra fields, link placeholders, auth).

    source is the primary recommendation source's name (personalize or batch), as X-Recommendations-Source says.
    """
    # A stored configuration (?recommender=ID) always asks Personalize, whatever the default source is.
    sources = list(dict.fromkeys((source, "personalize", *FALLBACK_SOURCES)))
    spec = APISpec(
        title="Braze recommendations from Amazon Personalize",
        version=API_VERSION,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "Called by Braze Connected Content at send time: a user's recommended catalog items."},
    )
    spec.components.schema("Error", schema=Error)
    spec.components.schema("Item", _item_schema(settings.catalog_extra_fields, settings.link_tracking))
    item_list = {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}
    spec.components.schema("RecommendationAttributes", {
        "type": "object",
        "description": "format=attributes: each configured attribute name with one string per item, in rank order.",
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    })
    spec.components.schema("RecommendationsObject", {
        "type": "object",
        "required": ["items", "recommendation_id", "source"],
        "properties": {
            "items": item_list,
            "recommendation_id": {"type": ["string", "null"], "description": "Personalize's recommendationId."},
            "source": {"type": "string", "enum": sources},
        },
        "additionalProperties": False,
    })
    security: list[dict[str, list[str]]] = []
    if settings.api_keys:
        spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
        spec.components.security_scheme("basic", {"type": "http", "scheme": "basic",
                                                  "description": "Any username; an API key as the password."})
        security = [{"apiKey": []}, {"basic": []}]

    spec.path("/recommendations",
              operations={"get": _recommendations_operation(settings, sources, item_list, security)})
    spec.path("/healthz", operations={"get": _health_operation("Say the process is alive", ["ok"])})
    spec.path("/readyz", operations={"get": {
        **_health_operation("Say whether the catalog and the recommendation source are loaded", ["ready"]),
        "responses": {
            "200": _json("Ready (also while the source fails: the fallbacks answer).", _status_object(["ready"], {
                "source": {"type": "string"},
                "catalog_items": {"type": "integer"},
                "breaker": {"type": "string", "enum": ["closed", "half_open", "open"],
                            "description": "The source's circuit breaker."},
                "last_error": {"type": ["string", "null"],
                               "description": "The error code of the source's last call, e.g. upstream_credentials; "
                                              "null once a call succeeds."},
            })),
            "503": _json("Not ready: the reason says why.",
                         _status_object(["unavailable"], {"reason": {"type": "string"}})),
        },
    }})
    metrics: dict[str, Any] = {
        "summary": "Prometheus metrics of every worker",
        "tags": ["operations"],
        "responses": {"200": {"description": "Prometheus text format.", "headers": {"X-Request-Id": REQUEST_ID_HEADER},
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }
    if security:
        metrics["security"] = security
        metrics["responses"]["401"] = _error("No valid API key came with the request.")
    spec.path("/metrics", operations={"get": metrics})
    spec.path("/preview", operations={"get": _preview_operation(settings, security)})
    spec.components.schema("EventsBody", schema=EventsBodySchema)
    spec.path("/events", operations={"post": _events_operation(settings, security)})
    if settings.admin_api_on:  # documented when it is on, as it answers only then
        _admin_paths(spec)
    document = spec.to_dict()
    _narrow(document["paths"]["/recommendations"]["get"]["parameters"], settings)
    return document


def _narrow(parameters: list[dict[str, Any]], settings: Settings) -> None:
    """Add what this deployment's settings allow to the schema's parameters: filter names, item fields."""
    names = "|".join(re.escape(name) for name in ITEM_FIELDS + settings.catalog_extra_fields)
    for parameter in parameters:
        if parameter["name"] == "filter" and settings.filters:
            parameter["schema"]["enum"] = sorted(settings.filters)
        elif parameter["name"] == "fields":
            parameter["schema"]["pattern"] = f"^({names})(,({names}))*$"


def _recommendations_operation(settings: Settings, sources: list[str], item_list: dict[str, Any],
                               security: list[dict[str, list[str]]]) -> dict[str, Any]:
    link_names = [name for _, name, _, _ in string.Formatter().parse(settings.link_query or "") if name]
    parameters: list[dict[str, Any]] = [
        {"in": "query", "schema": RecommendationQuery},
        _pairs_parameter("filter", FILTER_KEY.pattern,
                         "Values for the filter's $NAME placeholders, e.g. filter.CATEGORY=shoes,boots "
                         "(several values separated by commas; each is sent quoted). Needs `filter`."),
        _pairs_parameter("context", CONTEXT_KEY.pattern, "Personalize context values, e.g. context.DEVICE=mobile."),
        *({"name": name, "in": "query", "description": "A LINK_QUERY placeholder, filled into every item url.",
           "schema": {"type": "string", "maxLength": MAX_LINK_VALUE_LENGTH}} for name in link_names),
    ]
    headers = {
        "X-Cache": _header("HIT (fresh cached answer), MISS (asked the source) or STALE (expired, source failed).",
                           {"type": "string", "enum": ["HIT", "MISS", "STALE"]}, required=True),
        "X-Recommendations-Source": _header("Where the answer came from.",
                                            {"type": "string", "enum": sources}, required=True),
        "X-Request-Id": REQUEST_ID_HEADER,
        "X-Recommendation-Id": _header("Personalize's recommendationId, when there is one.", {"type": "string"}),
        "X-Fallback-Reason": _header("Why the fallback answered, e.g. upstream_timeout.", {"type": "string"}),
        "X-Backfilled": _header("How many popular items filled up a short list.", {"type": "string",
                                                                                  "pattern": "^[0-9]+$"}),
        "X-Ignored-Parameters": _header(
            "The request's filter and/or context, comma-separated, when the source that answered (a batch file or "
            "the popular-items fallback) cannot apply them: the list is unfiltered.",
            {"type": "string", "enum": ["filter", "context", "filter,context"]}),
        "Cache-Control": _header("private, max-age=N (seconds left of the cache TTL), or no-store for fallbacks.",
                                 {"type": "string"}, required=True),
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "The items in the source's order: a bare array, with format=object an object, with "
                           "format=attributes (a configuration with Attributes) one array of strings per attribute.",
            "headers": headers,
            "content": {"application/json": {"schema": {"anyOf": [
                item_list, {"$ref": "#/components/schemas/RecommendationsObject"},
                {"$ref": "#/components/schemas/RecommendationAttributes"}]}}},
        },
        "400": _error("A parameter is wrong (invalid_parameter; `errors` names each), or Personalize rejected the "
                      "request (rejected_by_personalize)."),
        "404": _error("`recommender` names no stored configuration, or configurations are off "
                      "(unknown_recommender)."),
        "503": _error("The catalog is not loaded (catalog_unavailable), the source failed and the catalog has no "
                      "item in stock to fall back on (no_recommendations), or the configurations cannot be read "
                      "(recommender_store_unavailable)."),
    }
    operation: dict[str, Any] = {
        "summary": "Recommend catalog items for a user",
        "description": "Give user_id, item_id (related items), or both. Unknown parameters are ignored.",
        "operationId": "getRecommendations",
        "tags": ["recommendations"],
        "parameters": parameters,
        "responses": responses,
    }
    if settings.filters:
        operation["description"] += f" Filters: {', '.join(sorted(settings.filters))}."
    return _guarded(operation, settings, security)


def _guarded(operation: dict[str, Any], settings: Settings, security: list[dict[str, list[str]]]
             ) -> dict[str, Any]:
    """Add what API_KEYS and ALLOWED_CIDRS guard (app/recommendations/auth.py build_guard): the key, its 401,
    and the 403 of an address outside the list."""
    if security:
        operation["security"] = security
        operation["responses"]["401"] = _error("No valid API key came with the request (unauthorized).")
    if settings.allowed_cidrs:
        operation["responses"]["403"] = _error("The caller's address is not in ALLOWED_CIDRS (forbidden).")
    return operation


def _preview_operation(settings: Settings, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """Describe the QA page (app/preview): HTML, behind the same keys and addresses as /recommendations."""
    page = {"headers": {"X-Request-Id": REQUEST_ID_HEADER},
            "content": {"text/html": {"schema": {"type": "string"}}}}
    operation: dict[str, Any] = {
        "summary": "Show what recipients will get",
        "description": f"An HTML page for QA: for each user_id (repeat it, at most {MAX_PREVIEW_USERS}) the items "
                       "GET /recommendations answers with the other parameters given (the same ones), its headers, "
                       "the Braze Liquid for the call and the JSON.",
        "tags": ["recommendations"],
        "parameters": [{"name": "user_id", "in": "query", "style": "form", "explode": True,
                        "schema": {"type": "array", "items": {"type": "string"}}}],
        "responses": {"200": {"description": "The page.", **page},
                      "400": {"description": f"More than {MAX_PREVIEW_USERS} user ids: the page says so.", **page}},
    }
    return _guarded(operation, settings, security)


def _events_operation(settings: Settings, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """Describe POST /events (app/events): a user's interactions, queued for Personalize's PutEvents."""
    off = "" if settings.personalize_tracking_id else " Off on this deployment: PERSONALIZE_TRACKING_ID is not set."
    operation: dict[str, Any] = {
        "summary": "Tell Personalize what a user did",
        "description": f"One user's events (1-{MAX_EVENTS_PER_REQUEST}, a body of at most {MAX_EVENTS_BODY_BYTES} "
                       "bytes), checked against PutEvents' limits and queued durably; a background sender forwards "
                       "them with PutEvents. Ids left out are derived from the event, so a retried request is not "
                       "counted twice." + off,
        "tags": ["events"],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/EventsBody"}}}},
        "responses": {
            "202": _json("Sent or queued: nothing more to do.", {
                "type": "object", "required": ["received", "queued", "deduplicated"], "properties": {
                    "received": {"type": "integer"}, "queued": {"type": "integer"},
                    "deduplicated": {"type": "integer", "description": "Events seen within the hour (a retry)."}}}),
            "400": _error("A field is wrong: errors names each one, e.g. events[2].impression (invalid_parameter)."),
            "413": _error("The body is too large (payload_too_large): send fewer events a request."),
            "429": _error("This worker is taking its most event requests at once (too_many_requests): retry."),
            "503": _error("events_off: PERSONALIZE_TRACKING_ID is not set; events_queue_unavailable: the queue's "
                          "store cannot be written, nothing was kept: retry."),
        },
    }
    return _guarded(operation, settings, security)


def _admin_paths(spec: APISpec) -> None:
    """The recommender configurations API (/v1/recommenders), in Pinpoint's shapes and with ADMIN_API_KEYS."""
    spec.components.security_scheme("adminKey", {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                                 "description": "One of ADMIN_API_KEYS (API_KEYS do not open it)."})
    spec.components.schema("RecommenderConfiguration", schema=RecommenderConfigurationSchema)
    spec.components.schema("RecommenderConfigurationResponse", {"allOf": [
        {"$ref": "#/components/schemas/RecommenderConfiguration"},
        {"type": "object", "required": ["Id", "CreationDate", "LastModifiedDate"], "properties": {
            "Id": {"type": "string"}, "CreationDate": {"type": "string", "format": "date-time"},
            "LastModifiedDate": {"type": "string", "format": "date-time"}}}]})
    spec.components.schema("MessageBody", {"type": "object", "required": ["Message", "RequestID"], "properties": {
        "Message": {"type": "string"}, "RequestID": {"type": "string"}}})
    one = {"$ref": "#/components/schemas/RecommenderConfigurationResponse"}
    body = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/RecommenderConfiguration"}}}}

    def operation(summary: str, ok: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
        message = {"description": "Pinpoint's error shape.",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageBody"}}}}
        return {"summary": summary, "tags": ["recommender configurations"], "security": [{"adminKey": []}],
                "responses": {ok: {"description": summary, "content": {"application/json": {"schema": schema}}},
                              "400": message, "403": message, "404": message, "413": message}, **more}

    config_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    spec.path("/v1/recommenders", operations={
        "get": operation("List the configurations, a page at a time", "200", {
            "type": "object", "required": ["Item"], "properties": {
                "Item": {"type": "array", "items": one}, "NextToken": {"type": ["string", "null"]}}},
            parameters=[{"name": "page-size", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                         "maximum": MAX_PAGE_SIZE}},
                        {"name": "token", "in": "query", "schema": {"type": "string"},
                         "description": "The NextToken of the page before."}]),
        "post": operation("Create a configuration", "201", one, requestBody=body),
    })
    spec.path("/v1/recommenders/{id}", operations={
        "get": operation("Get a configuration", "200", one, parameters=config_id),
        "put": operation("Replace a configuration", "200", one, parameters=config_id, requestBody=body),
        "delete": operation("Delete a configuration", "200", one, parameters=config_id),
    })


def _health_operation(summary: str, statuses: list[str]) -> dict[str, Any]:
    return {"summary": summary, "tags": ["operations"],
            "responses": {"200": _json("Alive.", _status_object(statuses, {}))}}


def _status_object(statuses: list[str], more: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["status", *more],
            "properties": {"status": {"type": "string", "enum": statuses}, **more}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "headers": {"X-Request-Id": REQUEST_ID_HEADER},
            "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, {"$ref": "#/components/schemas/Error"})


def _header(description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"description": description, "schema": schema, "required": required}


REQUEST_ID_HEADER = _header("The caller's X-Request-Id when printable ASCII of at most 128 characters, "
                            "else a generated one; on every response.", {"type": "string", "maxLength": 128},
                            required=True)


bp = Blueprint("docs", __name__, static_folder="static/swagger-ui", static_url_path="/docs/assets")

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Recommendations API</title>
<link rel="stylesheet" href="{css}"></head>
<body><div id="swagger-ui"></div>
<script src="{js}"></script>
<script>window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true}});</script>
</body></html>
"""


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """Return the OpenAPI document (built once per process)."""
    parts = components()
    if parts.openapi is None:
        parts.openapi = build_spec(parts.settings, parts.service.recommender.name)
    return json_response(parts.openapi)


@bp.get("/docs")
def docs() -> Response:
    """Return the Swagger UI page for trying requests."""
    page = DOCS_PAGE.format(css=url_for("docs.static", filename="swagger-ui.css"),
                            js=url_for("docs.static", filename="swagger-ui-bundle.js"),
                            spec=url_for("docs.openapi_json"))
    return Response(page, mimetype="text/html")


@bp.get("/docs/")
def docs_slash() -> Response:
    """Send /docs/ (as people type it) to the page."""
    return redirect(url_for("docs.docs"), 308)
