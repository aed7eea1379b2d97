"""The plain query (?user_id=U[&num_results=N]) is parsed without the schema, to the very Query the schema gives;
anything else, valid or not, still goes through the schema and its error messages."""
from __future__ import annotations

from unittest import mock

import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from app.errors import InvalidParameterError
from app.recommendations.query import QueryParser
from app.settings import MAX_NUM_RESULTS


def args(query_string: str) -> MultiDict[str, str]:
    return Request(EnvironBuilder(path="/recommendations", query_string=query_string).get_environ()).args


def by_schema(parser: QueryParser, values: MultiDict[str, str]) -> object:
    """What the schema path makes of the query: its Query, or its error's message and details."""
    try:
        return parser._parse(values)
    except InvalidParameterError as exc:
        return ("error", exc.message, exc.errors)


def by_parse(parser: QueryParser, values: MultiDict[str, str]) -> object:
    try:
        return parser.parse(values)
    except InvalidParameterError as exc:
        return ("error", exc.message, exc.errors)


QUERIES = [
    "user_id=u1", "user_id=u1&num_results=3", "num_results=3&user_id=u1", f"user_id=u1&num_results={MAX_NUM_RESULTS}",
    "user_id=user%2042%2F%C3%A9", "user_id=%20x%20", "user_id=" + "a" * 256,
    # each of these is not plain, or not valid: the schema answers
    "user_id=" + "a" * 257, "user_id=", "user_id=%20%20", "user_id=a%0A", "user_id=a%0Ab", "user_id=%7F",
    "user_id=u1&num_results=0", f"user_id=u1&num_results={MAX_NUM_RESULTS + 1}", "user_id=u1&num_results=+3",
    "user_id=u1&num_results=%D9%A3", "user_id=u1&num_results=", "user_id=u1&user_id=u2",
    "user_id=u1&num_results=3&num_results=4", "user_id=u1&utm_source=braze", "user_id=u1&format=object",
    "num_results=3", "", "user_id=u1&fields=id,name", "user_id=u1&item_id=1000",
]


@pytest.mark.parametrize("query_string", QUERIES)
@pytest.mark.parametrize("link_query", [None, "utm_campaign={campaign}&uid={user_id}"])
def test_every_query_gets_what_the_schema_gives(query_string: str, link_query: str | None) -> None:
    parser = QueryParser(default_num_results=7, link_query=link_query)
    values = args(query_string)
    assert by_parse(parser, values) == by_schema(parser, values)


@pytest.mark.parametrize("query_string", ["user_id=u1", "user_id=u1&num_results=3", "user_id=caf%C3%A9"])
def test_the_plain_query_skips_the_schema(query_string: str) -> None:
    parser = QueryParser()
    with mock.patch.object(parser.schema, "load", side_effect=AssertionError("the schema was asked")):
        query = parser.parse(args(query_string))
    assert query.user_id in ("u1", "café")


@pytest.mark.parametrize("query_string", ["user_id=a%0A", "user_id=u1&num_results=0", "user_id=u1&utm_source=x"])
def test_anything_else_goes_through_the_schema(query_string: str) -> None:
    parser = QueryParser()
    with mock.patch.object(parser.schema, "load", wraps=parser.schema.load) as load:
        by_parse(parser, args(query_string))
    assert load.call_count == 1


def test_a_trailing_newline_is_a_control_character() -> None:
    """$ in the id pattern let one trailing newline through; it is refused like any control character."""
    with pytest.raises(InvalidParameterError) as caught:
        QueryParser().parse(args("user_id=a%0A"))
    assert "user_id" in caught.value.errors
