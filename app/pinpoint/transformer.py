"""Invoke a team's existing Pinpoint transformer Lambda (RecommendationTransformerUri) and read its attributes."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from app.aws import region_of
from app.errors import UpstreamError
from app.pinpoint.handler import Attributes

log = logging.getLogger(__name__)


class TransformerError(UpstreamError):
    """The transformer Lambda failed, timed out or answered something Pinpoint would not accept."""

    code = "transformer_failed"


def pinpoint_event(endpoint_id: str, item_ids: Sequence[str]) -> dict[str, Any]:
    """Return the event Pinpoint would send for one recipient: an endpoint with its RecommendationItems."""
    return {"Endpoints": {endpoint_id: {"User": {"UserId": endpoint_id}, "RecommendationItems": list(item_ids)}}}


class LambdaTransformer:
    """Call a transformer Lambda synchronously, within the client's timeouts, with no retry."""

    def __init__(self, client_factory: Callable[[str | None], Any],
                 on_no_credentials: Callable[[], None] | None = None) -> None:
        self._client_factory = client_factory  # region (None: the default) -> a boto3 lambda client
        self._on_no_credentials = on_no_credentials  # says once per process that there are none (AwsClients.no_credentials)

    def transform(self, function: str, endpoint_id: str, item_ids: Sequence[str],
                  attributes: Sequence[str]) -> Attributes:
        """Return the configured attributes the Lambda put in the endpoint's Recommendations object."""
        try:
            answer = self._client_factory(region_of(function)).invoke(
                FunctionName=function,
                InvocationType="RequestResponse",
                Payload=orjson.dumps(pinpoint_event(endpoint_id, item_ids)),
            )
            payload = answer["Payload"].read()
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise TransformerError(f"The transformer {function} did not answer in time.",
                                   code="transformer_timeout", status=504) from exc
        except NoCredentialsError as exc:
            if self._on_no_credentials is not None:
                self._on_no_credentials()
            raise TransformerError(f"The transformer {function} could not be invoked: no AWS credentials found.") \
                from exc
        except NoRegionError as exc:
            raise TransformerError(f"The transformer {function} is a bare function name and no region is set: set "
                                   "AWS_REGION, or give the function's ARN as RecommendationTransformerUri.") from exc
        except (ClientError, BotoCoreError) as exc:
            raise TransformerError(f"The transformer {function} could not be invoked: {exc}") from exc
        if answer.get("FunctionError"):
            raise TransformerError(f"The transformer {function} raised an error: {payload[:300]!r}")
        return _recommendations(payload, endpoint_id, attributes, function)


def _recommendations(payload: bytes, endpoint_id: str, attributes: Sequence[str], function: str) -> Attributes:
    """Read Recommendations from a Lambda answer: the endpoints map, bare (as Pinpoint's example) or in Endpoints."""
    try:
        answer = orjson.loads(payload)
        endpoints = answer.get("Endpoints", answer)
        recommendations = endpoints[endpoint_id]["Recommendations"]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        raise TransformerError(f"The transformer {function} returned no Recommendations for the endpoint.") from None
    result: Attributes = {}
    for name in attributes:
        value = recommendations.get(name) if isinstance(recommendations, dict) else None
        if isinstance(value, str):
            value = [value]  # Pinpoint accepts a single string as well as an array of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TransformerError(f"The transformer {function} gave no string or array of strings for {name}.")
        result[name] = value
    return result
