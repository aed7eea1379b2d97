"""A Braze-flavoured Liquid environment (python-liquid 2.x) for contract tests.

It renders message bodies the way Braze does at send time, as far as the service can tell:

* ``{% connected_content URL [:save NAME] [:basic_auth CREDENTIAL] [:headers {JSON}] [:cache_max_age N] %}``
  renders the URL (it may hold Liquid, e.g. ``{{ user_id | url_param_escape }}``) and makes a real GET with
  ``requests``: 2 s timeout, redirects not followed, ``Accept: */*``, ``Content-Type: application/json`` and
  ``User-Agent: Braze Sender test``. A JSON answer is parsed into the ``:save`` variable (anything else is saved,
  or inserted, as raw text); ``__http_status_code__`` is added only to a JSON **object** answered with a 2xx
  status, never to an array (see /work/shared/FACTS.md). A connection error or timeout saves nothing, so the
  variable stays undefined and renders empty, as in Braze. ``:cache_max_age`` and ``:no_cache`` are accepted and
  ignored: every render calls the service (Braze's own cache is best-effort anyway).
* ``url_param_escape`` percent-encodes everything but RFC 3986's unreserved characters (``A-Za-z0-9-._~``),
  so ``+``, ``@``, spaces and non-ASCII reach the service intact.
* ``{% abort_message('reason') %}`` (or ``{{ 'reason' | abort_message }}``) stops rendering by raising
  ``MessageAborted(reason)``, which is deliberately not a ``LiquidError``.

Credentials for ``:basic_auth`` come from the ``credentials`` mapping given to the environment, name ->
(username, password), like the credentials stored in Braze's dashboard. Every Connected Content call is
recorded in ``BrazeEnvironment.calls`` so tests can check what was sent and what was saved.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import StringIO
from typing import Any, TextIO
from urllib.parse import quote

import requests
from liquid import Environment
from liquid.ast import Node
from liquid.context import RenderContext
from liquid.exceptions import LiquidSyntaxError
from liquid.filter import string_filter
from liquid.stream import TokenStream
from liquid.tag import Tag
from liquid.template import BoundTemplate
from liquid.token import TOKEN_EXPRESSION, TOKEN_TAG, Token

BRAZE_TIMEOUT_SECONDS = 2.0
BRAZE_MAX_BODY_BYTES = 1024 * 1024
BRAZE_HEADERS = {"Accept": "*/*", "Content-Type": "application/json", "User-Agent": "Braze Sender test"}
STATUS_KEY = "__http_status_code__"

_NAME = re.compile(r"[A-Za-z_][\w-]*")
_INTEGER = re.compile(r"\d+")
_OPTION = re.compile(r"\s*:([a-z_]+)\s*")
# Where the URL ends: the first " :option" that is not inside {{ ... }} or {% ... %}.
_URL_END = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|(?:^|\s+):(?=[a-z_]+\b)", re.DOTALL)
_ABORT_ARGUMENT = re.compile(r"""^(?:\(\s*(?:'(?P<s1>[^']*)'|"(?P<d1>[^"]*)")?\s*\)|'(?P<s2>[^']*)'|"(?P<d2>[^"]*)")?$""")


class MessageAborted(Exception):
    """``abort_message`` ran: Braze would not send this message and would log ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason or "(no reason given)")
        self.reason = reason


@dataclass
class ConnectedCall:
    """One Connected Content request, as the tag made it."""

    url: str
    sent_headers: dict[str, str]
    status: int | None = None  # None: the connection failed or timed out
    response_headers: dict[str, str] = field(default_factory=dict)
    value: Any = None  # what :save received (None when nothing was saved)
    error: str | None = None


@string_filter
def url_param_escape(value: str) -> str:
    """Percent-encode every character except the unreserved ones (UTF-8 for non-ASCII)."""
    return quote(value, safe="")


def abort_message_filter(value: object) -> None:
    """``{{ 'reason' | abort_message }}``: the filter form of the tag."""
    raise MessageAborted("" if value is None else str(value))


def _tag_and_expression(stream: TokenStream) -> tuple[Token, str]:
    """Return the tag token and the raw text after the tag name ("" when there is none).

    Like the built-in tags, leave the stream on the tag's last token: the parser steps past it.
    """
    token = stream.expect(TOKEN_TAG)
    if stream.peek.kind != TOKEN_EXPRESSION:
        return token, ""
    next(stream)
    return token, stream.current.value


class ConnectedContentNode(Node):
    """A parsed ``connected_content`` tag."""

    __slots__ = ("url", "save", "basic_auth", "headers", "cache_max_age")

    def __init__(
        self,
        token: Token,
        *,
        url: BoundTemplate,
        save: str | None,
        basic_auth: str | None,
        headers: dict[str, BoundTemplate],
        cache_max_age: int | None,
    ) -> None:
        super().__init__(token)
        self.url = url
        self.save = save
        self.basic_auth = basic_auth
        self.headers = headers
        self.cache_max_age = cache_max_age
        self.blank = save is not None

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        env = context.env
        assert isinstance(env, BrazeEnvironment)
        url = _render(self.url, context).strip()
        headers = dict(BRAZE_HEADERS)
        headers.update({name: _render(value, context) for name, value in self.headers.items()})
        auth = None
        if self.basic_auth is not None:
            if self.basic_auth not in env.credentials:
                raise LookupError(f"no Connected Content credential named {self.basic_auth!r}")
            auth = env.credentials[self.basic_auth]
        call = ConnectedCall(url=url, sent_headers={})
        env.calls.append(call)
        try:
            response = requests.get(url, headers=headers, auth=auth, timeout=env.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            call.error = repr(exc)
            return 0  # Braze renders nothing; a saved variable stays undefined
        call.sent_headers = dict(response.request.headers)
        call.status = response.status_code
        call.response_headers = dict(response.headers)
        if len(response.content) > BRAZE_MAX_BODY_BYTES:
            call.error = "response body over 1 MB"
            return 0
        value = _parse_body(response)
        call.value = value
        if self.save is None:
            return buffer.write(response.text)
        context.assign(self.save, value)
        return 0


def _render(template: BoundTemplate, context: RenderContext) -> str:
    """Render a sub-template (the URL, a header value) in the message's own render context."""
    buf = StringIO()
    template.render_with_context(context, buf)
    return buf.getvalue()


def _parse_body(response: requests.Response) -> Any:
    """JSON becomes Liquid data; a JSON object with a 2xx status gets ``__http_status_code__``; else raw text."""
    try:
        value = json.loads(response.text)
    except ValueError:
        return response.text
    if isinstance(value, dict) and 200 <= response.status_code < 300:
        value[STATUS_KEY] = response.status_code
    return value


class ConnectedContentTag(Tag):
    """``{% connected_content URL :save NAME :basic_auth CRED :headers {...} :cache_max_age N %}``."""

    name = "connected_content"
    block = False

    def parse(self, stream: TokenStream) -> ConnectedContentNode:
        token, text = _tag_and_expression(stream)
        text = text.strip()
        url_end = len(text)
        for match in _URL_END.finditer(text):
            if match.group().lstrip().startswith(":"):  # an option, not Liquid inside the URL
                url_end = match.start()
                break
        url_source, rest = text[:url_end].strip(), text[url_end:].strip()
        if not url_source:
            raise LiquidSyntaxError("connected_content needs a URL", token=token)
        options: dict[str, Any] = {"save": None, "basic_auth": None, "headers": {}, "cache_max_age": None}
        position = 0
        while position < len(rest):
            match = _OPTION.match(rest, position)
            if match is None:
                raise LiquidSyntaxError(f"connected_content: unexpected {rest[position:]!r}", token=token)
            option, position = match.group(1), match.end()
            if option in ("save", "basic_auth"):
                name = _NAME.match(rest, position)
                if name is None:
                    raise LiquidSyntaxError(f"connected_content: :{option} needs a name", token=token)
                options[option], position = name.group(), name.end()
            elif option == "cache_max_age":
                number = _INTEGER.match(rest, position)
                if number is None:
                    raise LiquidSyntaxError("connected_content: :cache_max_age needs seconds", token=token)
                options[option], position = int(number.group()), number.end()
            elif option == "headers":
                try:
                    headers, position = json.JSONDecoder().raw_decode(rest, position)
                except ValueError as exc:
                    raise LiquidSyntaxError(f"connected_content: :headers needs a JSON object ({exc})",
                                            token=token) from None
                if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
                    raise LiquidSyntaxError("connected_content: :headers needs a JSON object of strings", token=token)
                options["headers"] = {str(k): self.env.from_string(v) for k, v in headers.items()}
            elif option == "no_cache":
                pass
            else:
                raise LiquidSyntaxError(f"connected_content: unsupported option :{option}", token=token)
        return ConnectedContentNode(token, url=self.env.from_string(url_source), **options)


class AbortMessageNode(Node):
    """A parsed ``abort_message`` tag."""

    __slots__ = ("reason",)

    def __init__(self, token: Token, reason: str) -> None:
        super().__init__(token)
        self.reason = reason

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        raise MessageAborted(self.reason)


class AbortMessageTag(Tag):
    """``{% abort_message('reason') %}`` or ``{% abort_message() %}``; the reason is a literal string (no Liquid)."""

    name = "abort_message"
    block = False

    def parse(self, stream: TokenStream) -> AbortMessageNode:
        token, text = _tag_and_expression(stream)
        text = text.strip()
        match = _ABORT_ARGUMENT.match(text)
        if match is None:
            raise LiquidSyntaxError(f"abort_message takes one quoted string, got {text!r}", token=token)
        reason = next((g for g in match.groups() if g is not None), "")
        return AbortMessageNode(token, reason)


class BrazeEnvironment(Environment):
    """A Liquid environment with Braze's ``connected_content``, ``abort_message`` and ``url_param_escape``."""

    def __init__(
        self,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        timeout: float = BRAZE_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> None:
        self.credentials = dict(credentials or {})
        self.timeout = timeout
        self.calls: list[ConnectedCall] = []
        super().__init__(**kwargs)
        self.add_tag(ConnectedContentTag)
        self.add_tag(AbortMessageTag)
        self.add_filter("url_param_escape", url_param_escape)
        self.add_filter("abort_message", abort_message_filter)

    def render_message(self, source: str, **data: Any) -> str:
        """Render a message body; raises MessageAborted when the body aborts."""
        return self.from_string(source).render(**data)
