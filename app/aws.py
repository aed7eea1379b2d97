"""Every boto3 session and client the service uses, made in one place with the project's timeouts and retries.

Clients are made on first use, in the process that uses them (after gunicorn forks, never at import), and
kept: one per (service, role, region). Credentials and `AWS_ENDPOINT_URL_*` come from boto3's usual chain;
a stored configuration's role is assumed with STS and refreshed by botocore itself (`assumed_role_session`).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import NoCredentialsError, NoRegionError
from botocore.hooks import HierarchicalEmitter
from botocore.retries import standard

from app.sources.recommender import CALL_DEADLINE

log = logging.getLogger(__name__)

SESSION_NAME = "braze-recommendations"
ROLE_DURATION_SECONDS = 3600
# botocore registers a client's retry handler under this id (botocore/client.py, _register_retries); a test
# (tests/unit/test_aws.py) fails loudly if an upgrade renames it, since refuse_late_retries would then add a
# second handler instead of replacing botocore's.
RETRY_HANDLER_ID = "retry-config-{service}"
NO_CREDENTIALS = ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or "
                  "give the instance or task a role; until then Personalize and transformer Lambdas are not asked "
                  "and every answer is a fallback")
_UNSET: Any = object()


@dataclass(frozen=True)
class Timeouts:
    """botocore's per-attempt timeouts (seconds), attempts (the first included) and connection pool size."""

    connect: float
    read: float
    attempts: int
    pool: int

    def config(self) -> Config:
        """Return a botocore Config for a request budget of seconds, not botocore's default minutes."""
        return Config(
            connect_timeout=self.connect,
            read_timeout=self.read,
            # total_max_attempts counts the first call too; botocore's max_attempts would count retries only.
            retries={"mode": "standard", "total_max_attempts": self.attempts},
            max_pool_connections=self.pool,
        )


# Files (catalog, batch output) are read in the background: generous. A configuration's first read waits
# for DynamoDB inside a Braze request, and AssumeRole inside a Personalize call: short.
FILES = Timeouts(connect=5, read=30, attempts=3, pool=2)
CONFIGURATIONS = Timeouts(connect=0.3, read=0.5, attempts=2, pool=4)
ROLES = Timeouts(connect=1, read=2, attempts=2, pool=2)
# PutEvents: a caller of POST /events waits for it (or for the queue), so short; failures are queued and retried.
EVENTS = Timeouts(connect=0.5, read=1, attempts=2, pool=10)


def region_of(arn: str) -> str | None:
    """Return the region an ARN names (arn:PARTITION:SERVICE:REGION:...), or None for a bare name."""
    parts = arn.split(":")
    return (parts[3] or None) if arn.startswith("arn:") and len(parts) > 3 else None


class AwsClients:
    """Make and keep the service's boto3 clients: Personalize Runtime (per role and region), Personalize
    Events, S3, DynamoDB, STS and Lambda, each with the timeouts it needs."""

    def __init__(self, region: str | None, personalize: Timeouts = ROLES, lambda_timeout: float = 0.5,
                 session_factory: Callable[[], Any] = boto3.session.Session) -> None:
        self.region = region
        self.personalize_timeouts = personalize
        self.lambda_timeouts = Timeouts(connect=lambda_timeout, read=lambda_timeout, attempts=1,
                                        pool=personalize.pool)
        self._session_factory = session_factory
        self._sessions: dict[tuple[str | None, str | None], Any] = {}
        self._clients: dict[tuple[str, str | None, str | None], Any] = {}
        self._lock = threading.RLock()
        self._found_region: str | None = _UNSET  # the default session's region, once looked up
        self.credentials_missing = False  # check_credentials() found none: calls that need them fail at once
        self._said_missing = False

    def _client(self, service: str, config: Config, role_arn: str | None = None, region: str | None = None,
                prepare: Callable[[Any], None] | None = None) -> Any:
        """Return the one client of a service for a role and region, made on first use."""
        key = (service, role_arn, region or self.region)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self.session(role_arn, region).client(service, region_name=key[2], config=config)
                    if prepare is not None:
                        prepare(client)
                    self._clients[key] = client
        return client

    def session(self, role_arn: str | None = None, region: str | None = None) -> Any:
        """Return the boto3 session for a role (None: the default credentials), one per role and region."""
        with self._lock:
            session = self._sessions.get((role_arn, region))
            if session is None:
                session = (assumed_role_session(role_arn, lambda: self.sts(region)) if role_arn
                           else self._session_factory())
                self._sessions[(role_arn, region)] = session
            return session

    def credentials(self, role_arn: str | None = None, region: str | None = None) -> Any:
        """Return the credentials the role's clients sign with (to see when a refresh is due), or None."""
        return self.session(role_arn, region).get_credentials()

    def default_region(self) -> str | None:
        """Return AWS_REGION, else the default session's region (profile, instance metadata), looked up once."""
        if self.region:
            return self.region
        if self._found_region is _UNSET:
            self._found_region = self.session().region_name
        return self._found_region

    def check_credentials(self) -> bool:
        """Look the default credentials and region up now, before serving; log at ERROR when there are none.

        botocore looks them up lazily, through instance metadata with 1 s timeouts when nothing else has them,
        and does not remember finding none: done here, those seconds stay out of the first requests.
        """
        self.default_region()
        self.credentials_missing = self.credentials() is None
        if self.credentials_missing:
            log.error("%s (checked at start).", NO_CREDENTIALS)
        return not self.credentials_missing

    def no_credentials(self) -> None:
        """Say, once per process, that a call found no credentials (not per request, not with a traceback)."""
        with self._lock:
            if self._said_missing:
                return
            self._said_missing = True
        log.error("%s.", NO_CREDENTIALS)

    def personalize_runtime(self, role_arn: str | None = None, region: str | None = None) -> Any:
        """Return a personalize-runtime client for the role in region, configured for the request budget."""
        return self._client("personalize-runtime", self.personalize_timeouts.config(), role_arn, region,
                            prepare=refuse_late_retries)

    def personalize_events(self) -> Any:
        """Return the personalize-events client of PutEvents (AWS_ENDPOINT_URL_PERSONALIZE_EVENTS overrides it)."""
        return self._client("personalize-events", EVENTS.config())

    def s3(self) -> Any:
        """Return the S3 client that reads the catalog, batch and popular files."""
        return self._client("s3", FILES.config())

    def dynamodb(self) -> Any:
        """Return the DynamoDB client of the configuration store (RECOMMENDER_TABLE, in AWS_REGION)."""
        return self._client("dynamodb", CONFIGURATIONS.config())

    def sts(self, region: str | None = None) -> Any:
        """Return the STS client that assumes configurations' roles."""
        return self._client("sts", ROLES.config(), region=region)

    def lambda_(self, region: str | None = None) -> Any:
        """Return the Lambda client that invokes transformers (one attempt, TRANSFORMER_TIMEOUT_MS).

        Without a region (a bare function name and no AWS_REGION) or, as found at start, without credentials,
        raise botocore's error at once rather than let every request repeat botocore's look-ups.
        """
        region = region or self.default_region()
        if region is None:
            raise NoRegionError()
        if self.credentials_missing:
            raise NoCredentialsError()
        return self._client("lambda", self.lambda_timeouts.config(), region=region)


class _AssumedRoleProvider(CredentialProvider):
    """Hand botocore the one refreshable credentials object of a role (the resolver's only provider)."""

    METHOD = "assume-role"
    CANONICAL_NAME = "AssumeRole"

    def __init__(self, credentials: DeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> DeferredRefreshableCredentials:
        return self._credentials


def assumed_role_session(role_arn: str, sts_client: Callable[[], Any]) -> boto3.session.Session:
    """Return a boto3 session whose credentials come from AssumeRole on role_arn.

    The first call assumes the role; botocore's RefreshableCredentials calls AssumeRole again when
    the credentials come within 15 minutes of expiry (and insists within 10), so no timer of ours runs.
    """

    def refresh() -> dict[str, str]:
        try:
            answer = sts_client().assume_role(
                RoleArn=role_arn, RoleSessionName=SESSION_NAME, DurationSeconds=ROLE_DURATION_SECONDS
            )
        except Exception as exc:
            # Surfaces to the caller as a failed Personalize call; this line says it was the role.
            log.error("AssumeRole on %s failed (RecommendationProviderRoleArn): %s", role_arn, exc)
            raise
        credentials = answer["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }

    credentials = DeferredRefreshableCredentials(refresh_using=refresh, method="assume-role")
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_AssumedRoleProvider(credentials)]))
    return boto3.session.Session(botocore_session=core)


def refuse_late_retries(client: Any) -> None:
    """Keep botocore's standard retries, but skip a retry that could not end before CALL_DEADLINE.

    botocore registered its retry handler when it built the client. This puts the same handler (botocore's
    `standard.register_retry_handler`, with the client's attempts) in its place behind a check: a retry is made
    only when its back-off plus one attempt's connect and read timeouts end by the deadline. A retry that
    cannot be waited for would only spend Personalize's TPS and, in the request's thread, the request's time.
    """
    config = client.meta.config
    if config.retries.get("mode") != "standard":  # Timeouts.config always asks for it; another mode is left alone
        return
    events = client.meta.events
    service = client.meta.service_model.service_id.hyphenize()
    event, unique_id = f"needs-retry.{service}", RETRY_HANDLER_ID.format(service=service)
    events.unregister(event, unique_id=unique_id)
    handler = standard.register_retry_handler(client, max_attempts=config.retries.get("total_max_attempts"))
    events.unregister(event, unique_id=unique_id)
    events.register(event, functools.partial(_retry_in_time, handler.needs_retry, attempt_seconds(config)),
                    unique_id=unique_id)


def attempt_seconds(config: Config) -> float:
    """The longest one attempt can take by botocore's own timeouts: connecting, then waiting for the answer."""
    return config.connect_timeout + config.read_timeout


def _retry_in_time(needs_retry: Callable[..., Any], attempt: float, **kwargs: Any) -> Any:
    """botocore's needs-retry answer (seconds to wait before retrying, or None/False), or False past the deadline."""
    deadline = CALL_DEADLINE.get()
    if deadline is not None and time.monotonic() + attempt > deadline:
        return False  # not even an immediate retry would end in time (False: botocore asks no later handler)
    delay = needs_retry(**kwargs)
    if deadline is not None and delay and time.monotonic() + delay + attempt > deadline:
        return False
    return delay


class StandardRetries:
    """botocore's standard retries for one client's settings, asked directly instead of through the client's events.

    The handlers are botocore's own, made by `standard.register_retry_handler` for the client's attempts (the
    same retry conditions, back-off and retry quota a client gets) and kept behind refuse_late_retries'
    deadline check, on an event emitter of their own: a caller that sends requests itself (the Personalize
    fast path) emits botocore's needs-retry and after-call events there, with botocore's arguments.
    """

    def __init__(self, client: Any, operation: str) -> None:
        self._events = HierarchicalEmitter()
        meta = client.meta
        refuse_late_retries(SimpleNamespace(meta=SimpleNamespace(
            events=self._events, service_model=meta.service_model, config=meta.config)))
        service = meta.service_model.service_id.hyphenize()
        self.operation = meta.service_model.operation_model(operation)
        self.max_attempts: int = (meta.config.retries or {}).get("total_max_attempts") or 1
        self._needs_retry = f"needs-retry.{service}.{operation}"
        self._after_call = f"after-call.{service}.{operation}"

    def delay(self, attempts: int, context: dict[str, Any], response: tuple[Any, dict[str, Any]] | None,
              exception: Exception | None) -> float | None:
        """Return the seconds to wait before another attempt, or None for no retry (as botocore's endpoint asks)."""
        for _, answer in self._events.emit(self._needs_retry, response=response, endpoint=None,
                                           operation=self.operation, attempts=attempts,
                                           caught_exception=exception, request_dict={"context": context}):
            if answer is not None:
                return None if answer is False else answer
        return None

    def succeeded(self, context: dict[str, Any], http_response: Any, parsed: dict[str, Any]) -> None:
        """Give the retry quota back for a successful call, as botocore's after-call handler does."""
        self._events.emit(self._after_call, http_response=http_response, parsed=parsed, model=self.operation,
                          context=context)
