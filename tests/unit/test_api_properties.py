"""Property-based: schemathesis generates requests from /openapi.json and checks every answer against it.

No 5xx, every status, header, content type and body as documented. The app has a fake recommender with
answers, the sample catalog and batch output, and every option that adds a parameter.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import FakeRecommender

FILTER_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/by-category"
KEY = "schemathesis-key-0123456789"
EXAMPLES = 60  # enough to reach every parameter; the whole file stays a few seconds
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture
def api_schema(make_app: Callable[..., Flask]) -> schemathesis.BaseSchema:
    fake = FakeRecommender({"user123": ["1000", "1037", "1074"], "item:1000": ["1111", "1148"]})
    app = make_app({"recommender": fake}, filters=f"by-category={FILTER_ARN}", api_keys=KEY,
                   link_query="utm_source=braze&utm_campaign={campaign}", catalog_extra_fields="category")
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


@pytest.mark.parametrize("path", ["/recommendations", "/healthz", "/readyz", "/metrics"])
def test_answers_match_the_document(api_schema: schemathesis.BaseSchema, path: str) -> None:
    operation = api_schema[path]["GET"]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES if path == "/recommendations" else 5, deadline=None, database=None,
              derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

    check()
