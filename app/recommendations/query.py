"""Request parameters of GET /recommendations, validated with marshmallow into a Query."""
from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from marshmallow import EXCLUDE, Schema, ValidationError, validate, validates_schema
from marshmallow import fields as ma
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request

from app.catalog.items import ITEM_FIELDS
from app.errors import InvalidParameterError
from app.settings import MAX_NUM_RESULTS
from app.sources.recommender import Options

# Personalize's own limits.
MAX_ID_LENGTH = 256
MAX_FILTER_VALUES = 25
MAX_CONTEXT_ENTRIES = 150
MAX_VALUE_LENGTH = 1000
FILTER_KEY = re.compile(r"[A-Za-z0-9_]{1,50}")
CONTEXT_KEY = re.compile(r"[A-Za-z0-9_]{1,150}")
MAX_LINK_VALUE_LENGTH = 200
# An id with a control character, or only spaces, is a template mistake, not a user: say so instead of
# asking Personalize (and caching an answer) for it. \Z, not $: $ would let one trailing newline (%0A) through.
ID_PATTERN = r"^(?=.*\S)[^\x00-\x1f\x7f]+\Z"
VALID_ID = re.compile(ID_PATTERN)
ID_ERROR = "Give a printable id (no control characters, not only spaces); check the template's url_param_escape."
FORMATS = ("array", "object", "attributes")
ASCII_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
# A percent-escape of a byte above 0x7f, or such a byte sent raw: only then can a parameter be invalid UTF-8.
NON_ASCII = re.compile(rb"%[89a-fA-F]|[\x80-\xff]")
UTF8_ERROR = "Not valid UTF-8 once percent-decoded; check the template's url_param_escape."
# The query of nearly every request of a send: ?user_id=U, perhaps with &num_results=N.
PLAIN_NAMES = frozenset({"user_id", "num_results"})


def whole_number(raw: str) -> int | None:
    """Return raw as an int when it is 1-9 ASCII digits, else None (int() also takes ' 2', '1_0' and '٣')."""
    return int(raw) if ASCII_WHOLE_NUMBER.fullmatch(raw) else None


class WholeNumber(ma.Integer):
    """A query parameter holding a whole number in ASCII digits: no sign, space, _ or other scripts' digits."""

    default_error_messages = {"invalid": "Give a whole number in ASCII digits (0-9)."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        number = whole_number(value) if isinstance(value, str) else None
        if number is None:
            raise self.make_error("invalid")
        return number


def invalid_utf8(query_string: bytes) -> dict[str, list[str]]:
    """Name each parameter whose value (or name) is not UTF-8 once percent-decoded.

    werkzeug keeps such bytes percent-encoded (user_id=%ff and user_id=%25FF would share an answer) or,
    sent raw, fails to decode the query string at all.
    """
    errors: dict[str, list[str]] = {}
    if not NON_ASCII.search(query_string):
        return errors
    for pair in query_string.split(b"&"):
        name, _, value = (unquote_to_bytes(part) for part in pair.replace(b"+", b" ").partition(b"="))
        try:
            name.decode("utf-8")
            value.decode("utf-8")
        except UnicodeDecodeError:
            errors[name.decode("utf-8", "backslashreplace")] = [UTF8_ERROR]
    return errors


class RecommendationQuery(Schema):
    """GET /recommendations?user_id=U[&item_id=I][&num_results=N][&filter=F][&fields=..][&format=..]."""

    class Meta:
        unknown = EXCLUDE  # Braze URLs often carry extra tracking parameters

    user_id = ma.String(
        validate=[validate.Length(min=1, max=MAX_ID_LENGTH), validate.Regexp(ID_PATTERN, error=ID_ERROR)],
        metadata={"description": "The user id known to Personalize; URL-encode it (url_param_escape)."},
    )
    item_id = ma.String(
        validate=[validate.Length(min=1, max=MAX_ID_LENGTH), validate.Regexp(ID_PATTERN, error=ID_ERROR)],
        metadata={"description": "An item to find related items for (a related-items campaign or recommender)."},
    )
    num_results = WholeNumber(
        validate=validate.Range(min=1, max=MAX_NUM_RESULTS),
        metadata={"description": f"How many items to return, 1-{MAX_NUM_RESULTS}."},
    )
    filter = ma.String(metadata={"description": "A filter name from the FILTERS setting."})
    # "fields" is the query parameter; Schema.fields is marshmallow's own attribute.
    item_fields = ma.String(
        data_key="fields", metadata={"description": "Comma-separated item fields to return, e.g. id,name,price."}
    )
    format = ma.String(
        load_default="array",
        validate=validate.OneOf(FORMATS),
        metadata={"description": "array (default), object: {items, recommendation_id, source}, or attributes: "
                                 "{ATTRIBUTE: [...]} for a recommender configuration with Attributes."},
    )
    recommender = ma.String(
        validate=validate.Length(min=1, max=MAX_ID_LENGTH),
        metadata={"description": "The Id of a recommender configuration (/v1/recommenders) to serve."},
    )

    @validates_schema
    def _user_or_item(self, data: Mapping[str, Any], **_: Any) -> None:
        if "user_id" not in data and "item_id" not in data:
            raise ValidationError("Give user_id, item_id for related items, or both.", "user_id")

    @validates_schema
    def _attributes_need_recommender(self, data: Mapping[str, Any], **_: Any) -> None:
        if data.get("format") == "attributes" and "recommender" not in data:
            raise ValidationError("format=attributes needs recommender=ID, a configuration with Attributes.",
                                  "format")


@dataclass(frozen=True)
class Query:
    """A validated request: who, how many, what to ask Personalize, and how to shape the answer."""

    user_id: str | None
    num_results: int
    options: Options
    format: str = "array"
    fields: tuple[str, ...] | None = None  # None: every field
    link_values: dict[str, str] = field(default_factory=dict)
    recommender: str | None = None  # a recommender configuration's Id
    num_results_default: bool = False  # num_results was not given: a recommender configuration may set it


class QueryParser:
    """Validate request parameters against the schema and this deployment's settings.

    A Query depends on nothing but the query string, so the last `recent_size` valid ones are kept by
    query string: Braze asks for each recipient 2-3 times within seconds, and validation costs more
    than the rest of a cache hit. Invalid ones are not kept (each is rejected afresh).
    """

    def __init__(self, default_num_results: int = 10, filters: Mapping[str, str] | None = None,
                 extra_fields: tuple[str, ...] = (), link_query: str | None = None, recent_size: int = 0) -> None:
        self.recent_size = recent_size
        self._recent: dict[bytes, Query] = {}
        self.schema = RecommendationQuery()
        self.default_num_results = default_num_results
        self.filters = dict(filters or {})
        self.item_fields = ITEM_FIELDS + extra_fields
        self.link_names = tuple(name for _, name, _, _ in string.Formatter().parse(link_query or "") if name)
        self.names = (*(f.data_key or n for n, f in self.schema.fields.items()), *self.link_names)

    def parse_request(self, request: Request) -> Query:
        """Return the request's Query, from the recent ones when the same query string was seen."""
        key = request.query_string
        query = self._recent.get(key)
        if query is None:
            query = self.parse(self.request_args(request))
            if self.recent_size:
                if len(self._recent) >= self.recent_size:
                    self._recent.clear()  # cheaper than LRU bookkeeping, and thread-safe under the GIL
                self._recent[key] = query
        return query

    def recent_query(self, query_string: bytes) -> Query | None:
        """Return the valid Query of a query string seen lately, or None (nothing is validated here)."""
        return self._recent.get(query_string)

    def request_args(self, request: Request) -> MultiDict[str, str]:
        """Return the request's parameters; raise InvalidParameterError if one this service reads is not UTF-8."""
        try:
            args = request.args
            errors = {name: problem for name, problem in invalid_utf8(request.query_string).items()
                      if self._reads(name)}
        except UnicodeDecodeError:  # a byte above 0x7f sent raw, not percent-encoded: werkzeug parses nothing
            args, errors = MultiDict(), invalid_utf8(request.query_string)
        if errors:
            raise InvalidParameterError(f"Invalid request parameters. {_describe(errors)}", errors=errors)
        return args

    def _reads(self, name: str) -> bool:
        """Say whether a query parameter is one this service reads (others, e.g. tracking ones, are ignored)."""
        return name in self.names or name.startswith(("filter.", "context."))

    def parse(self, args: MultiDict[str, str]) -> Query:
        """Return the Query, or raise InvalidParameterError naming every bad parameter."""
        plain = self._plain(args)
        return plain if plain is not None else self._parse(args)

    def _plain(self, args: MultiDict[str, str]) -> Query | None:
        """The Query of a valid user_id with perhaps num_results, each given once, and no other parameter: what the
        schema would return, for a tenth of its CPU (tests/unit/test_query_plain.py compares the two). Anything
        else, valid or not, is None: the schema decides, and words its errors."""
        if not args.keys() <= PLAIN_NAMES:
            return None
        users, counts = args.getlist("user_id"), args.getlist("num_results")
        if len(users) != 1 or len(counts) > 1 or len(users[0]) > MAX_ID_LENGTH or not VALID_ID.match(users[0]):
            return None
        num_results = whole_number(counts[0]) if counts else self.default_num_results
        if num_results is None or not 1 <= num_results <= MAX_NUM_RESULTS:
            return None
        link_values = {name: args.get(name, "") for name in self.link_names}
        if any(len(value) > MAX_LINK_VALUE_LENGTH for value in link_values.values()):
            return None
        return Query(user_id=users[0], num_results=num_results, options=Options(), link_values=link_values,
                     num_results_default=not counts)

    def _parse(self, args: MultiDict[str, str]) -> Query:
        """Validate args with the schema and the settings."""
        errors: dict[str, Any] = {name: ["Give this parameter once."] for name in self.names
                                  if len(args.getlist(name)) > 1}
        values: dict[str, Any] = {}
        try:
            values = self.schema.load(args)
        except ValidationError as exc:
            errors.update(exc.normalized_messages())
            values = exc.valid_data if isinstance(exc.valid_data, dict) else {}  # check the rest too
        filter_arn = self._filter_arn(values.get("filter"), errors)
        filter_values = self._pairs(args, "filter.", FILTER_KEY, MAX_FILTER_VALUES, errors, quoted=True)
        if filter_values and filter_arn is None and "filter" not in errors:
            errors["filter"] = ["filter.* values need a filter: add filter=NAME."]
        context = self._pairs(args, "context.", CONTEXT_KEY, MAX_CONTEXT_ENTRIES, errors)
        selected = self._fields(values.get("item_fields"), errors)
        link_values = {name: args.get(name, "") for name in self.link_names}
        for name, value in link_values.items():
            if len(value) > MAX_LINK_VALUE_LENGTH:
                errors[name] = [f"At most {MAX_LINK_VALUE_LENGTH} characters."]
        if errors:
            raise InvalidParameterError(f"Invalid request parameters. {_describe(errors)}", errors=errors)
        return Query(
            user_id=values.get("user_id"),
            num_results=values.get("num_results", self.default_num_results),
            options=Options(values.get("item_id"), filter_arn, filter_values, context),
            format=values.get("format", "array"),
            fields=selected,
            link_values=link_values,
            recommender=values.get("recommender"),
            num_results_default="num_results" not in values,
        )

    def _filter_arn(self, name: str | None, errors: dict[str, Any]) -> str | None:
        if name is None:
            return None
        if name not in self.filters:
            known = ", ".join(sorted(self.filters)) or "none are configured (FILTERS)"
            errors["filter"] = [f"Unknown filter {name!r}; known filters: {known}."]
            return None
        return self.filters[name]

    @staticmethod
    def _pairs(
        args: MultiDict[str, str],
        prefix: str,
        key_pattern: re.Pattern[str],
        most: int,
        errors: dict[str, Any],
        quoted: bool = False,
    ) -> tuple[tuple[str, str], ...]:
        """Collect PREFIX.KEY=value parameters (e.g. filter.CATEGORY=shoes), checking Personalize's limits."""
        pairs = []
        for name in args:
            if not name.startswith(prefix):
                continue
            key, values = name[len(prefix):], args.getlist(name)
            if not key_pattern.fullmatch(key):
                errors[name] = [f"The name after {prefix!r} must be letters, digits or _ ({key_pattern.pattern})."]
            elif len(values) > 1:
                errors[name] = ["Give this parameter once; separate several values with commas."]
            elif not 1 <= len(values[0]) <= MAX_VALUE_LENGTH:
                errors[name] = [f"Give a value of 1-{MAX_VALUE_LENGTH} characters."]
            elif quoted and '"' in values[0]:
                errors[name] = ['A value may not contain a double quote (").']
            else:
                pairs.append((key, values[0]))
        if len(pairs) > most:
            errors[prefix.rstrip(".")] = [f"At most {most} {prefix}* parameters."]
        return tuple(sorted(pairs))

    def _fields(self, raw: str | None, errors: dict[str, Any]) -> tuple[str, ...] | None:
        if raw is None:
            return None
        wanted = tuple(dict.fromkeys(f.strip() for f in raw.split(",") if f.strip()))
        unknown = [f for f in wanted if f not in self.item_fields]
        if not wanted or unknown:
            errors["fields"] = [f"Choose among {', '.join(self.item_fields)}"
                                + (f"; unknown: {', '.join(unknown)}." if unknown else ".")]
            return None
        return wanted


def _describe(errors: Mapping[str, Any]) -> str:
    """Say what is wrong with each parameter, in name order."""
    return "; ".join(f"{name}: {' '.join(map(str, problems))}" for name, problems in sorted(errors.items()))
