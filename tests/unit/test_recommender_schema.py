"""Every rule of the seed's CreateRecommenderConfiguration, accepted and rejected at its boundary."""
from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from app.pinpoint.configs import (
    RecommenderConfig,
    RecommenderConfigurationSchema,
    new_record,
    replaced_record,
)

CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/movies"
ROLE = "arn:aws:iam::123456789012:role/PinpointRecommendations"
REQUIRED = {"RecommendationProviderUri": CAMPAIGN, "RecommendationProviderRoleArn": ROLE}
BASE = {**REQUIRED, "RecommendationsDisplayName": "Top picks"}  # required without a transformer
WITH_TRANSFORMER = {"RecommendationTransformerUri": "my-transformer", "Attributes": {"Title": "Title"}}


def load(**fields: Any) -> dict[str, Any]:
    return RecommenderConfigurationSchema().load({**BASE, **fields})


def with_its_transformer(field: str, value: Any) -> dict[str, Any]:
    """Return the field, with a transformer when it is Attributes (which the reference allows only with one)."""
    return {"RecommendationTransformerUri": "my-transformer", field: value} if field == "Attributes" else {field: value}


ACCEPTED = [
    ("Name", "a"),
    ("Name", "7 Movies_for-you"),
    ("Name", "N" * 128),
    ("Name", "Película"),
    ("Description", ""),
    ("Description", "d" * 128),
    ("Description", "Top picks_; (email), weekly - v2 \u2010 final"),
    ("RecommendationProviderUri", "arn:aws:personalize:eu-west-1:123456789012:recommender/for-you"),
    ("RecommendationProviderRoleArn", "arn:aws:iam::123456789012:role/service-role/Pinpoint+Recs=1,a.b@c-d"),
    ("RecommendationProviderRoleArn", "arn:aws:iam::123456789012:role/" + "r" * 64),
    ("RecommendationsPerMessage", 1),
    ("RecommendationsPerMessage", 5),
    ("RecommendationProviderIdType", "PINPOINT_ENDPOINT_ID"),
    ("RecommendationProviderIdType", "PINPOINT_USER_ID"),
    ("RecommendationsDisplayName", "r"),
    ("RecommendationsDisplayName", "Top movies_for you-" + "x" * 6),
    ("Attributes", {"Title": "Title"}),
    ("Attributes", {f"A{i}": f"Attribute {i}" for i in range(10)}),
    ("Attributes", {"a" * 50: "d" * 25}),
    ("Attributes", {"1st_pick-title": "1st pick_title-x"}),
]

REJECTED = [
    ("Name", ""),
    ("Name", "N" * 129),
    ("Name", "_starts-with-underscore"),
    ("Name", "-starts-with-hyphen"),
    ("Name", " starts-with-space"),
    ("Name", "has.dot"),
    ("Name", "ok\n"),
    ("Description", "d" * 129),
    ("Description", "no dots."),
    ("Description", "no quotes 'x'"),
    ("RecommendationProviderUri", "arn:aws:personalize:us-east-1:123456789012:filter/movies"),
    ("RecommendationProviderUri", "arn:aws:personalize:us-east-1:123456789012:solution/movies"),
    ("RecommendationProviderUri", "arn:aws:personalize:us-east-1:12345678901:campaign/movies"),
    ("RecommendationProviderUri", CAMPAIGN + "\n"),
    ("RecommendationProviderUri", 42),
    ("RecommendationProviderRoleArn", "arn:aws:iam::123456789012:user/PinpointRecommendations"),
    ("RecommendationProviderRoleArn", "arn:aws:iam::12345678901:role/PinpointRecommendations"),
    ("RecommendationProviderRoleArn", "arn:aws:iam::123456789012:role/" + "r" * 65),
    ("RecommendationProviderRoleArn", "arn:aws:iam::123456789012:role/"),
    ("RecommendationsPerMessage", 0),
    ("RecommendationsPerMessage", 6),
    ("RecommendationsPerMessage", "3"),
    ("RecommendationsPerMessage", True),
    ("RecommendationsPerMessage", 2.0),
    ("RecommendationProviderIdType", "PINPOINT_EMAIL"),
    ("RecommendationProviderIdType", "pinpoint_user_id"),
    ("RecommendationsDisplayName", ""),
    ("RecommendationsDisplayName", "x" * 26),
    ("RecommendationsDisplayName", "no!"),
    ("Attributes", {}),
    ("Attributes", {f"A{i}": f"Attribute {i}" for i in range(11)}),
    ("Attributes", {"a" * 51: "Title"}),
    ("Attributes", {"_Title": "Title"}),
    ("Attributes", {"Recommendations.Title": "Title"}),
    ("Attributes", {"Title": "d" * 26}),
    ("Attributes", {"Title": " Title"}),
    ("Attributes", {"Title": ""}),
    ("Attributes", ["Title"]),
    ("RecommendationTransformerUri", "has space"),
    ("RecommendationTransformerUri", "f" * 65),
    ("RecommendationTransformerUri", "arn:aws:lambda:us-east-1:123456789012:layer:x"),
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED)
def test_accepted_at_the_boundary(field: str, value: Any) -> None:
    assert load(**with_its_transformer(field, value))[field] == value


@pytest.mark.parametrize(("field", "value"), REJECTED)
def test_rejected_at_the_boundary(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        load(**with_its_transformer(field, value))
    assert field in info.value.normalized_messages()


@pytest.mark.parametrize("uri", [
    "my-transformer",
    "f" * 64,
    "my-transformer:$LATEST",
    "my-transformer:live",
    "arn:aws:lambda:us-east-1:123456789012:function:my-transformer",
    "arn:aws:lambda:us-east-1:123456789012:function:my-transformer:7",
])
def test_a_transformer_is_a_lambda_name_or_arn(uri: str) -> None:
    assert load(**{**WITH_TRANSFORMER, "RecommendationTransformerUri": uri})["RecommendationTransformerUri"] == uri


@pytest.mark.parametrize("field", ["RecommendationProviderUri", "RecommendationProviderRoleArn"])
def test_the_provider_and_its_role_are_required(field: str) -> None:
    body = dict(BASE)
    del body[field]
    with pytest.raises(ValidationError) as info:
        RecommenderConfigurationSchema().load(body)
    assert info.value.normalized_messages() == {field: ["Missing data for required field."]}


def test_attributes_are_required_with_a_transformer() -> None:
    with pytest.raises(ValidationError) as info:
        load(RecommendationTransformerUri="my-transformer")
    assert "Attributes" in info.value.normalized_messages()
    assert load(**WITH_TRANSFORMER)["Attributes"] == {"Title": "Title"}


def test_attributes_without_a_transformer_are_a_400_naming_attributes() -> None:
    """The reference: Attributes are "required if the configuration invokes an AWS Lambda function
    (RecommendationTransformerUri) ... Otherwise, don't include this object in your request"."""
    with pytest.raises(ValidationError) as info:
        load(Attributes={"Title": "Title"})
    assert list(info.value.normalized_messages()) == ["Attributes"]
    assert "RecommendationTransformerUri" in info.value.normalized_messages()["Attributes"][0]


def test_the_display_name_is_required_without_a_transformer() -> None:
    """The reference: RecommendationsDisplayName "is required if the configuration doesn't invoke an AWS Lambda
    function (RecommendationTransformerUri)"; with one it may be left out."""
    with pytest.raises(ValidationError) as info:
        RecommenderConfigurationSchema().load(REQUIRED)
    assert list(info.value.normalized_messages()) == ["RecommendationsDisplayName"]
    assert "RecommendationsDisplayName" not in RecommenderConfigurationSchema().load({**REQUIRED, **WITH_TRANSFORMER})
    with_both = {**REQUIRED, **WITH_TRANSFORMER, "RecommendationsDisplayName": "Picks"}
    assert RecommenderConfigurationSchema().load(with_both)["RecommendationsDisplayName"] == "Picks"


def test_a_record_stored_before_the_rules_still_serves() -> None:
    """Validation is on write: an older record without a display name and with catalog Attributes reads as before."""
    record = new_record(REQUIRED) | {"Attributes": {"Title": "Title"}}
    config = RecommenderConfig.from_record(record)
    assert (config.attributes, config.transformer) == (("Title",), None)


def test_an_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        load(RecommendationsPerMesage=3)
    assert "RecommendationsPerMesage" in info.value.normalized_messages()


def test_a_new_record_has_an_id_iso_dates_and_pinpoints_defaults() -> None:
    record = new_record(load(Name="movies"))
    assert len(record["Id"]) == 32
    assert record["CreationDate"] == record["LastModifiedDate"]
    assert record["CreationDate"].endswith("Z") and record["CreationDate"][10] == "T"
    assert record["RecommendationsPerMessage"] == 5
    assert record["RecommendationProviderIdType"] == "PINPOINT_ENDPOINT_ID"
    replaced = replaced_record(record, load(RecommendationsPerMessage=2))
    assert (replaced["Id"], replaced["CreationDate"]) == (record["Id"], record["CreationDate"])
    assert replaced["LastModifiedDate"] >= record["LastModifiedDate"]
    assert "Name" not in replaced and replaced["RecommendationsPerMessage"] == 2
