"""/openapi.json is a valid OpenAPI 3.1 document that lists everything the service accepts, and /docs works
without any other host."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from app.pinpoint.configs import RecommenderConfigurationSchema
from app.recommendations.query import RecommendationQuery
from tests.conftest import FakeRecommender

KEY = "openapi-test-key-0123456789"
FILTER_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/by-category"


@pytest.fixture
def configured(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> Flask:
    """An app using every option that adds parameters or responses to the document."""
    return make_app({"recommender": fake_recommender}, filters=f"by-category={FILTER_ARN}",
                    link_query="utm_source=braze&utm_campaign={campaign}", catalog_extra_fields="category",
                    api_keys=KEY, allowed_cidrs="127.0.0.1/32")


def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def recommendations_operation(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["paths"]["/recommendations"]["get"]


def test_the_document_is_valid_openapi(configured: Flask, client: FlaskClient) -> None:
    for app_client in (configured.test_client(), client):
        spec = document(app_client)
        validate(spec)
        assert spec["openapi"].startswith("3.1")


def test_every_parameter_the_service_accepts_is_listed(configured: Flask) -> None:
    operation = recommendations_operation(document(configured.test_client()))
    listed = {p["name"] for p in operation["parameters"]}
    schema_fields = {field.data_key or name for name, field in RecommendationQuery().fields.items()}
    assert schema_fields == {"user_id", "item_id", "num_results", "filter", "fields", "format", "recommender"}
    assert listed == schema_fields | {"filter.NAME", "context.NAME", "campaign"}


def test_limits_come_from_the_marshmallow_schema(client: FlaskClient) -> None:
    parameters = {p["name"]: p for p in recommendations_operation(document(client))["parameters"]}
    assert parameters["num_results"]["schema"].items() >= {"type": "integer", "minimum": 1, "maximum": 100}.items()
    assert parameters["user_id"]["schema"].items() >= {"minLength": 1, "maxLength": 256}.items()
    assert parameters["format"]["schema"]["enum"] == ["array", "object", "attributes"]
    # filter.CATEGORY=shoes: an object whose properties are sent as separate query parameters.
    pairs = parameters["filter.NAME"]
    assert (pairs["style"], pairs["explode"]) == ("form", True)
    [pattern] = pairs["schema"]["patternProperties"]
    assert re.match(pattern, "filter.CATEGORY") and not re.match(pattern, "CATEGORY")


def test_responses_headers_auth_and_errors_are_documented(configured: Flask) -> None:
    spec = document(configured.test_client())
    operation = recommendations_operation(spec)
    assert set(operation["responses"]) == {"200", "400", "401", "403", "404", "503"}
    for status in ("400", "401", "403", "503"):
        assert operation["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    assert set(operation["responses"]["200"]["headers"]) >= {
        "X-Cache", "X-Recommendations-Source", "X-Request-Id", "X-Fallback-Reason", "Cache-Control"}
    assert operation["security"] == [{"apiKey": []}, {"basic": []}]
    assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "category" in spec["components"]["schemas"]["Item"]["properties"]


def test_without_keys_or_allowlist_no_auth_responses_are_promised(client: FlaskClient) -> None:
    operation = recommendations_operation(document(client))
    assert set(operation["responses"]) == {"200", "400", "404", "503"}
    assert "security" not in operation


def test_docs_page_uses_only_this_service(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 2
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.data) > 100_000, asset
        response.close()
    assert '"/openapi.json"' in html


def test_docs_with_a_trailing_slash_leads_to_the_page(client: FlaskClient) -> None:
    response = client.get("/docs/")
    assert response.status_code == 308 and response.headers["Location"] == "/docs"
    assert client.get("/docs/", follow_redirects=True).mimetype == "text/html"


def test_the_ignored_parameters_header_is_described(client: FlaskClient) -> None:
    headers = recommendations_operation(document(client))["responses"]["200"]["headers"]
    assert headers["X-Ignored-Parameters"]["schema"]["enum"] == ["filter", "context", "filter,context"]


def test_this_deployments_filters_and_fields_are_spelled_out(configured: Flask) -> None:
    parameters = {p["name"]: p for p in recommendations_operation(document(configured.test_client()))["parameters"]}
    assert parameters["filter"]["schema"]["enum"] == ["by-category"]
    fields = re.compile(parameters["fields"]["schema"]["pattern"])
    assert fields.match("id,name,category") and not fields.match("id,colour")


def test_the_configuration_api_is_described_when_it_is_on(make_app: Callable[..., Flask],
                                                          fake_recommender: FakeRecommender) -> None:
    """With ADMIN_API_KEYS, /docs can try /v1/recommenders: every field of the marshmallow schema, Pinpoint's
    error shape, and the admin key; without it the paths are absent (they answer 404)."""
    on = make_app({"recommender": fake_recommender}, admin_api_keys="admin-key-0123456789abcdef")
    spec = document(on.test_client())
    validate(spec)
    assert set(spec["paths"]["/v1/recommenders"]) == {"get", "post"}
    assert set(spec["paths"]["/v1/recommenders/{id}"]) == {"get", "put", "delete"}
    fields = spec["components"]["schemas"]["RecommenderConfiguration"]["properties"]
    assert set(fields) == set(RecommenderConfigurationSchema().fields)
    assert fields["RecommendationsPerMessage"]["maximum"] == 5
    assert set(spec["components"]["schemas"]["RecommenderConfiguration"]["required"]) == {
        "RecommendationProviderUri", "RecommendationProviderRoleArn"}
    post = spec["paths"]["/v1/recommenders"]["post"]
    assert post["security"] == [{"adminKey": []}] and "201" in post["responses"]
    assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/MessageBody")

    off = document(make_app({"recommender": fake_recommender}).test_client())
    assert not any(path.startswith("/v1/") for path in off["paths"])
