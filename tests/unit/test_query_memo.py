"""QueryParser keeps recent valid Queries by query string: the same string gives the same Query without
validating again; a different string, or an invalid one, is validated; the memo stays within its size."""
from __future__ import annotations

from unittest import mock

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from app.errors import InvalidParameterError
from app.recommendations.query import QueryParser


def request(query_string: str) -> Request:
    return Request(EnvironBuilder(path="/recommendations", query_string=query_string).get_environ())


@pytest.fixture
def parser() -> QueryParser:
    return QueryParser(recent_size=3)


def test_same_query_string_is_validated_once(parser: QueryParser) -> None:
    with mock.patch.object(parser, "parse", wraps=parser.parse) as load:
        first = parser.parse_request(request("user_id=u1&num_results=3"))
        again = parser.parse_request(request("user_id=u1&num_results=3"))
    assert again is first
    assert (first.user_id, first.num_results) == ("u1", 3)
    assert load.call_count == 1


def test_another_query_string_gets_its_own_query(parser: QueryParser) -> None:
    one = parser.parse_request(request("user_id=u1&num_results=3"))
    two = parser.parse_request(request("user_id=u1&num_results=4"))
    assert (one.num_results, two.num_results) == (3, 4)


def test_invalid_query_is_rejected_every_time(parser: QueryParser) -> None:
    for _ in range(2):
        with pytest.raises(InvalidParameterError) as caught:
            parser.parse_request(request("user_id=u1&num_results=0"))
        assert "num_results" in caught.value.errors
    assert parser._recent == {}


def test_memo_never_holds_more_than_its_size(parser: QueryParser) -> None:
    for n in range(10):
        assert parser.parse_request(request(f"user_id=u{n}")).user_id == f"u{n}"
        assert len(parser._recent) <= 3
    assert parser.parse_request(request("user_id=u9")).user_id == "u9"


def test_memo_off_with_size_zero() -> None:
    parser = QueryParser()
    parser.parse_request(request("user_id=u1"))
    assert parser._recent == {}
