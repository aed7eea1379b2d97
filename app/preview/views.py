"""GET /preview: each user's items as cards, the response headers, the Braze Liquid for the call and its JSON.

Every answer comes from app.recommendations.views.answer, the code GET /recommendations runs, so the page
shows what Braze would get (and, like a real call, warms the answer cache).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from flask import Blueprint, Response, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from app.catalog.items import Item
from app.components import Components, components
from app.errors import ServiceError, error_response
from app.recommendations.query import FORMATS
from app.recommendations.service import Result
from app.recommendations.views import answer

bp = Blueprint("preview", __name__, template_folder="templates")

MAX_USERS = 20
CREDENTIAL = "recs"  # the Basic auth credential's name in Braze, as the README's examples call it
SAVE_AS = "recs"
LIQUID_USER_ID = "{{${user_id} | url_param_escape}}"
# The form's text areas, one NAME=value a line, sent to /recommendations as PREFIX.NAME=value.
LINES = {"context_lines": "context.", "filter_lines": "filter."}
PREFIXES = tuple(LINES.values())
BODY_HEADERS = ("Content-Type", "Content-Length")  # said by the raw JSON itself


@dataclass(frozen=True)
class Card:
    """One item as a recipient sees it; an image or link that is not http(s) is left out."""

    id: str
    name: str
    price: str
    image: str | None
    url: str | None


@dataclass(frozen=True)
class Preview:
    """What GET /recommendations answers for one user: the cards, the headers and the body, or the error."""

    user_id: str | None
    status: int
    message: str | None  # the JSON error's message, when the request would fail
    cards: list[Card]
    headers: list[tuple[str, str]]
    json: str
    ms: float


@bp.get("/preview")
def preview() -> Response:
    """Return the QA page: a form, and for each user id given (at most MAX_USERS) what the service answers."""
    parts = components()
    if (guard := parts.auth_guard) is not None:
        guard(request)  # the same keys and addresses as /recommendations; its 401 makes a browser prompt
    parser = parts.query_parser
    args = parser.request_args(request)
    user_ids = [line for value in args.getlist("user_id") for line in value.splitlines() if line.strip()]
    options = request_options(args, parser.names)
    problem, previews = None, []
    if len(user_ids) > MAX_USERS:
        problem = f"At most {MAX_USERS} user ids at a time; {len(user_ids)} were given."
    elif user_ids or "item_id" in options:
        previews = [preview_user(parts, user_id, options) for user_id in user_ids or [None]]
    nonce = secrets.token_urlsafe(16)
    page = render_template(
        "preview/page.html",
        nonce=nonce,
        problem=problem,
        previews=previews,
        user_ids="\n".join(user_ids),
        options=options,
        lines={field: _lines(options, prefix) for field, prefix in LINES.items()},
        filters=sorted(parts.settings.filters),
        formats=FORMATS,
        link_names=parser.link_names,
        liquid=liquid(url_for("recommendations.recommendations", _external=True), options,
                      with_user=bool(user_ids) or "item_id" not in options, basic_auth=bool(parts.settings.api_keys)),
        credential=CREDENTIAL if parts.settings.api_keys else None,
        max_users=MAX_USERS,
    )
    response = Response(page, status=400 if problem else 200, mimetype="text/html")
    response.headers.update(page_headers(nonce))
    return response


def page_headers(nonce: str) -> dict[str, str]:
    """Return the page's security headers: no script at all, only the page's own style, images from anywhere."""
    return {
        # Catalog images come from the catalog's CDN, so img-src allows any http(s) host; nothing else loads.
        "Content-Security-Policy": f"default-src 'none'; img-src https: http: data:; style-src 'nonce-{nonce}'; "
                                   "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # the page's URL holds user ids: item links must not pass it on
        "Cache-Control": "no-store",
    }


def request_options(args: MultiDict[str, str], names: tuple[str, ...]) -> MultiDict[str, str]:
    """Return the /recommendations parameters the page was given, in order, without user_id or empty fields."""
    pairs = [(name, value) for name, value in args.items(multi=True)
             if value and name != "user_id" and (name in names or name.startswith(PREFIXES))]
    for field, prefix in LINES.items():
        for line in args.get(field, "").splitlines():
            if line.strip():
                name, _, value = line.partition("=")
                pairs.append((prefix + name.strip(), value.strip()))
    return MultiDict(pairs)


def preview_user(parts: Components, user_id: str | None, options: MultiDict[str, str]) -> Preview:
    """Ask for one user's answer exactly as GET /recommendations?user_id=...&OPTIONS would."""
    args = MultiDict(options)
    if user_id is not None:
        args.add("user_id", user_id)
    started = time.monotonic()
    try:
        query = parts.query_parser.parse(args)
        result, response = answer(parts, query, started)
    except ServiceError as exc:
        error = error_response(exc.status, exc.code, exc.message, exc.errors)
        return Preview(user_id, exc.status, exc.message, [], [], pretty(error.get_data()), _ms(started))
    ms = _ms(started)
    body = response.get_data()
    headers = [(name, value) for name, value in response.headers.items() if name not in BODY_HEADERS]
    return Preview(user_id, response.status_code, None, [card(item) for item in _items(body, result)], headers,
                   pretty(body), ms)


def liquid(endpoint: str, options: MultiDict[str, str], with_user: bool, basic_auth: bool) -> str:
    """Return the connected_content tag for this call: Braze's user id, the options as literal parameters."""
    # Everything but the user id is URL-encoded, so no value can end the tag or open Liquid ({{, %}).
    parameters = [f"user_id={LIQUID_USER_ID}"] if with_user else []
    parameters += [f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in options.items(multi=True)]
    tag = f"{{% connected_content {endpoint}?{'&'.join(parameters)}"
    if basic_auth:
        tag += f" :basic_auth {CREDENTIAL}"
    return f"{tag} :save {SAVE_AS} %}}"


def card(item: Item) -> Card:
    """Return an item's card; a url that is not http(s) (javascript:, data:) is not made a link or image."""
    price = item.get("price")
    return Card(id=str(item.get("id") or ""), name=str(item.get("name") or item.get("id") or ""),
                price="" if price is None else orjson.dumps(price).decode(),
                image=web_url(item.get("image")), url=web_url(item.get("url")))


def web_url(value: Any) -> str | None:
    """Return value when it is an http(s) URL, else None."""
    if isinstance(value, str) and urlsplit(value).scheme.lower() in ("http", "https"):
        return value
    return None


def pretty(body: bytes) -> str:
    """Return a JSON body indented for reading."""
    return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()


def _items(body: bytes, result: Result) -> list[Item]:
    """Return the items the body holds (array, or format=object's items); format=attributes: the joined items."""
    data = orjson.loads(body)
    if isinstance(data, dict):
        data = data.get("items")
    return data if isinstance(data, list) else result.items


def _lines(options: MultiDict[str, str], prefix: str) -> str:
    """Return the options under prefix as the form's NAME=value lines."""
    return "\n".join(f"{name[len(prefix):]}={value}" for name, value in options.items(multi=True)
                     if name.startswith(prefix))


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
