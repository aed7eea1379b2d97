"""Amazon Personalize Runtime GetRecommendations, behind a small class that raises the project's errors."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from app.aws import attempt_seconds
from app.errors import InvalidParameterError, ServiceError, UpstreamError
from app.sources.recommender import NO_OPTIONS, Options, Recommendation

log = logging.getLogger(__name__)


def request_for(
    arn: str,
    user_id: str | None,
    num_results: int,
    options: Options = NO_OPTIONS,
    promotion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build GetRecommendations parameters; a recommender ARN goes in recommenderArn, a campaign in campaignArn."""
    arn_field = "recommenderArn" if ":recommender/" in arn else "campaignArn"
    params: dict[str, Any] = {arn_field: arn, "numResults": num_results}
    if user_id:
        params["userId"] = user_id
    if options.item_id:
        params["itemId"] = options.item_id
    if options.filter_arn:
        params["filterArn"] = options.filter_arn
        if options.filter_values:
            # Personalize wants each value in double quotes, several values separated by commas.
            params["filterValues"] = {
                key: ",".join(f'"{v}"' for v in value.split(",")) for key, value in options.filter_values
            }
    if options.context:
        params["context"] = dict(options.context)
    if promotion:
        params["promotions"] = [dict(promotion)]
    return params


class PersonalizeRecommender:
    """Ask a Personalize campaign or recommender for a user's items."""

    name = "personalize"

    def __init__(
        self, arn: str, client_factory: Callable[[], Any], promotion: Mapping[str, Any] | None = None,
        observe: Callable[[float, str | None], None] | None = None,
        credentials: Callable[[], Any] | None = None,
        on_no_credentials: Callable[[], None] | None = None,
    ) -> None:
        self.arn = arn
        self._on_no_credentials = on_no_credentials  # says once per process that there are none (AwsClients.no_credentials)
        self._credentials = credentials  # the botocore credentials the client signs with, to see a refresh coming
        self._observe = observe  # told each call's seconds and error code (None on success), for the metrics
        self.promotion = promotion
        # A promotion changes every answer, so answers cached without it must not be served with it.
        self.key = arn
        if promotion:
            self.key += f"|promotion:{promotion['filterArn']}:{promotion['percentPromotedItems']}"
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """Build the boto3 client on first use, in the worker process that uses it."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._client_factory()
        return self._client

    def check_ready(self) -> None:
        """Build the client now (no network call), so a worker's first requests do not pay for it."""
        _ = self.client

    def ends_within(self, seconds: float) -> bool:
        """Whether a call is sure to end within seconds by botocore's own timeouts, so it needs no watchdog.

        True when one attempt's connect and read timeouts fit (refuse_late_retries stops retries that would
        not) and no credential refresh is due: a refresh waits on STS or instance metadata, under their
        own, longer timeouts. Within 15 minutes of the credentials' expiry (botocore's advisory window)
        calls are watched again, until a call has refreshed them.
        """
        try:
            config = self.client.meta.config
        except Exception:  # the client cannot be built: let the guarded call meet the same error
            return False
        if seconds < attempt_seconds(config):
            return False
        credentials = self._credentials() if self._credentials is not None else None
        refresh_needed = getattr(credentials, "refresh_needed", None)
        return refresh_needed is None or not refresh_needed()

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        """Return Personalize's item ids for the user (or the related item), in Personalize's order."""
        if self._observe is None:
            return self._call(user_id, num_results, options)
        started = time.perf_counter()
        try:
            recommendation = self._call(user_id, num_results, options)
        except ServiceError as exc:
            self._observe(time.perf_counter() - started, exc.code)
            raise
        self._observe(time.perf_counter() - started, None)
        return recommendation

    def _call(self, user_id: str | None, num_results: int, options: Options) -> Recommendation:
        try:
            answer = self.client.get_recommendations(
                **request_for(self.arn, user_id, num_results, options, self.promotion)
            )
        except ClientError as exc:
            raise _client_error(exc, self.arn) from exc
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise UpstreamError("Personalize did not answer in time.", code="upstream_timeout", status=504) from exc
        except NoCredentialsError as exc:
            if self._on_no_credentials is not None:
                self._on_no_credentials()
            raise UpstreamError(
                "No AWS credentials were found for Personalize (see the README's settings).",
                code="upstream_credentials",
                status=503,
            ) from exc
        except (BotoConnectionError, BotoCoreError) as exc:
            log.warning("personalize call for %s failed: %s", self.arn, exc)
            raise UpstreamError("Personalize could not be reached.", code="upstream_unavailable", status=502) from exc
        return Recommendation(
            item_ids=[entry["itemId"] for entry in answer.get("itemList", []) if entry.get("itemId")],
            recommendation_id=answer.get("recommendationId"),
        )


def _client_error(exc: ClientError, arn: str) -> Exception:
    """Translate Personalize's error codes into the service's errors."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    message = error.get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "InvalidInputException":
        return InvalidParameterError(
            f"Personalize rejected the request: {message}", code="rejected_by_personalize"
        )
    if code == "ResourceNotFoundException":
        # A setting is wrong, not a passing fault: say which, since every answer is now a fallback. The
        # circuit breaker stops the calls (and so these lines) after BREAKER_FAILURE_THRESHOLD of them.
        log.error("Personalize has no campaign or recommender %s (%s); check PERSONALIZE_CAMPAIGN_ARN or the "
                  "configuration's RecommendationProviderUri, and AWS_REGION.", arn, message)
        return UpstreamError(
            f"Personalize has no campaign or recommender {arn}; check PERSONALIZE_CAMPAIGN_ARN and AWS_REGION.",
            code="recommender_not_found",
        )
    if code in ("ThrottlingException", "TooManyRequestsException") or status == 429:
        return UpstreamError(
            "Personalize is throttling requests.", code="upstream_throttled", status=503, retry_after=1
        )
    if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                "ExpiredTokenException"):
        log.error("Personalize refused the credentials for %s: %s (%s).", arn, code, message)
        return UpstreamError(f"Personalize refused the credentials: {code}.", code="upstream_access_denied")
    log.warning("personalize error %s (HTTP %s): %s", code, status, message)
    return UpstreamError(f"Personalize failed ({code or status}).", code="upstream_error")
