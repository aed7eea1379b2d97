"""Amazon Personalize Runtime GetRecommendations, behind a small class that raises the project's errors."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, HeadersDict
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
from botocore.parsers import create_parser

from app.aws import StandardRetries, attempt_seconds
from app.errors import InvalidParameterError, ServiceError, UpstreamError
from app.wire import CurlSession, Signer
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


OPERATION = "GetRecommendations"


class _Built(Exception):
    """Ends request_template's call at botocore's before-sign: the request is built, nothing is signed or sent."""


@dataclass(frozen=True)
class RequestTemplate:
    """What botocore puts in every GetRecommendations request of a client: where, which headers, how signed."""

    url: str
    headers: tuple[tuple[str, str], ...]
    signing_name: str
    region: str


def request_template(client: Any) -> RequestTemplate:
    """Let the boto3 client build one GetRecommendations request, and keep it from the signing step on.

    botocore resolves the endpoint (its endpoint rules, the region, AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME),
    serialises the call and writes its headers (Content-Type, its User-Agent); a before-sign handler then
    records the request and ends the call, so no credentials are looked up and nothing is sent. The
    signing name and region are read as botocore's RequestSigner.sign reads them.
    """
    seen: dict[str, Any] = {}

    def record(request: AWSRequest, signing_name: str, region_name: str, signature_version: str,
               **kwargs: Any) -> None:
        signing = request.context.get("signing") or {}
        seen.update(url=request.url, headers=tuple((k, str(v)) for k, v in request.headers.items()),
                    signing_name=signing.get("signing_name") or signing_name,
                    region=signing.get("region") or region_name, version=signature_version)
        raise _Built

    service = client.meta.service_model.service_id.hyphenize()
    event, unique_id = f"before-sign.{service}.{OPERATION}", "braze-recommendations-template"
    client.meta.events.register(event, record, unique_id=unique_id)
    try:
        arn = f"arn:aws:personalize:{client.meta.region_name}:000000000000:campaign/template"
        client.get_recommendations(campaignArn=arn, userId="template")
    except _Built:
        pass
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)
    if seen.get("version") != "v4":
        raise ValueError(f"the personalize-runtime client signs with {seen.get('version')!r}, not SigV4")
    return RequestTemplate(seen["url"], seen["headers"], seen["signing_name"], seen["region"])


class PersonalizeRuntime:
    """GetRecommendations with botocore's pieces, without its per-call machinery (a fifth of a boto3 call's CPU).

    Built once per client (one per role and region, AwsClients): the request botocore would send
    (request_template), signed as botocore's SigV4Auth signs it (app/wire.py, Signer) with the credentials the
    client signs with (refreshed by botocore, AssumeRole and instance roles included), sent with libcurl under
    the client's timeouts, pool size and CA bundle (app/wire.py, CurlSession; the client's own HTTP session
    when it needs a proxy or a client certificate), retried by botocore's standard retry handler within the
    deadline (StandardRetries), errors parsed by botocore's rest-json parser into the ClientError a client
    raises. Each attempt is offered to the client's before-send handlers first, as botocore's endpoint does.
    The body is json.dumps of the parameters, as botocore's rest-json serialiser writes it; answers are
    parsed with orjson.
    """

    def __init__(self, client: Any, credentials: Any) -> None:
        self.template = template = request_template(client)
        self.credentials = credentials  # botocore's (refreshable) credentials object, or None when there are none
        self.attempt_seconds = attempt_seconds(client.meta.config)
        self._retries = StandardRetries(client, OPERATION)
        self.events = client.meta.events  # the client's: its before-send handlers see (and may answer) each attempt
        self._before_send = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{OPERATION}"
        self._signer = Signer(template.url, template.headers, template.signing_name, template.region)
        # botocore's own HTTP session of the client, for what libcurl is not given here (a proxy, a client
        # certificate). A test (tests/unit/test_personalize_wire.py) fails loudly if an upgrade moves it.
        self._http = client._endpoint.http_session
        self.curl = CurlSession.for_client(client, template.url)
        self._errors = create_parser(client.meta.service_model.resolved_protocol)

    def get_recommendations(self, **params: Any) -> dict[str, Any]:
        """Return Personalize's answer as a dict; raise what a boto3 client raises (ClientError, botocore's errors)."""
        body = json.dumps(params).encode()
        retries = {"attempt": 1, "invocation-id": str(uuid.uuid4()), "max": self._retries.max_attempts}
        context: dict[str, Any] = {"retries": retries}
        while True:
            http_response = parsed = error = None
            try:
                http_response = self._send(body, retries)
            except Exception as exc:  # botocore's endpoint hands every send failure to the retry handler
                error = exc
            else:
                if 200 <= http_response.status_code < 300:
                    answer = orjson.loads(http_response.content or b"{}")
                    self._retries.succeeded(context, http_response, answer)
                    return answer
                parsed = self._parse_error(http_response)
            delay = self._retries.delay(retries["attempt"], context,
                                        None if http_response is None else (http_response, parsed), error)
            if delay is None:
                break
            time.sleep(delay)
            retries["attempt"] += 1
        if error is not None:
            raise error
        raise ClientError(parsed, OPERATION)  # type: ignore[arg-type]

    def _send(self, body: bytes, retries: dict[str, Any]) -> Any:
        """Sign and send one attempt; return its answer (status_code, headers, content)."""
        if self.credentials is None:
            raise NoCredentialsError()
        headers = self._signer.sign(body, self.credentials.get_frozen_credentials())
        # botocore's add_retry_headers, then the length its request preparer adds.
        headers += [("amz-sdk-invocation-id", retries["invocation-id"]),
                    ("amz-sdk-request", f"attempt={retries['attempt']}; max={retries['max']}"),
                    ("Content-Length", str(len(body)))]
        prepared = AWSPreparedRequest("POST", self.template.url, HeadersDict(headers), body, False)
        for _, response in self.events.emit(self._before_send, request=prepared):
            if response is not None:
                return response
        if self.curl is None:
            return self._http.send(prepared)
        return self.curl.post(headers, body)

    def _parse_error(self, http_response: Any) -> dict[str, Any]:
        """Return botocore's parse of an error answer ({"Error": {"Code", "Message"}, "ResponseMetadata"})."""
        return self._errors.parse({"status_code": http_response.status_code, "headers": http_response.headers,
                                   "body": http_response.content}, None)


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
        # The botocore credentials the client signs with (AwsClients.credentials): the calls sign with them, and
        # ends_within looks at them to see a refresh coming. None: there are none, every call says so.
        self._credentials = credentials
        self._observe = observe  # told each call's seconds and error code (None on success), for the metrics
        self.promotion = promotion
        # A promotion changes every answer, so answers cached without it must not be served with it.
        self.key = arn
        if promotion:
            self.key += f"|promotion:{promotion['filterArn']}:{promotion['percentPromotedItems']}"
        self._client_factory = client_factory
        self._runtime: PersonalizeRuntime | None = None
        self._lock = threading.Lock()

    @property
    def runtime(self) -> PersonalizeRuntime:
        """Build the call (from the boto3 client) on first use, in the worker process that uses it."""
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    credentials = self._credentials() if self._credentials is not None else None
                    self._runtime = PersonalizeRuntime(self._client_factory(), credentials)
        return self._runtime

    def check_ready(self) -> None:
        """Build the call now (no network call), so a worker's first requests do not pay for it."""
        _ = self.runtime

    def ends_within(self, seconds: float) -> bool:
        """Whether a call is sure to end within seconds by botocore's own timeouts, so it needs no watchdog.

        True when one attempt's connect and read timeouts fit (refuse_late_retries stops retries that would
        not) and no credential refresh is due: a refresh waits on STS or instance metadata, under their
        own, longer timeouts. Within 15 minutes of the credentials' expiry (botocore's advisory window)
        calls are watched again, until a call has refreshed them.
        """
        try:
            runtime = self.runtime
        except Exception:  # the client cannot be built: let the guarded call meet the same error
            return False
        if seconds < runtime.attempt_seconds:
            return False
        refresh_needed = getattr(runtime.credentials, "refresh_needed", None)
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
            answer = self.runtime.get_recommendations(
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
