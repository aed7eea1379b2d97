"""Credentials from STS AssumeRole, refreshed by botocore itself before they expire."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import boto3
import botocore.session
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)

log = logging.getLogger(__name__)

SESSION_NAME = "braze-recommendations"
DURATION_SECONDS = 3600


class _AssumedRoleProvider(CredentialProvider):
    """Hand botocore the one refreshable credentials object of a role (the resolver's only provider)."""

    METHOD = "assume-role"
    CANONICAL_NAME = "AssumeRole"

    def __init__(self, credentials: DeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> DeferredRefreshableCredentials:
        return self._credentials


def assumed_role_session(role_arn: str, sts_client_factory: Callable[[], Any]) -> boto3.session.Session:
    """Return a boto3 session whose credentials come from AssumeRole on role_arn.

    The first call assumes the role; botocore's RefreshableCredentials calls AssumeRole again when
    the credentials come within 15 minutes of expiry (and insists within 10), so no timer of ours runs.
    """

    def refresh() -> dict[str, str]:
        try:
            answer = sts_client_factory().assume_role(
                RoleArn=role_arn, RoleSessionName=SESSION_NAME, DurationSeconds=DURATION_SECONDS
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
