"""AWS Signature Version 4 on /v1/recommenders, so the AWS SDKs and CLI call it unchanged with ADMIN_AWS_KEYS.

The signature is recomputed with botocore's own signer (its canonical request, string to sign and signing key)
from the request as it arrived, never with a SigV4 written here: what botocore signs, botocore checks the same
way. Only what the Authorization header names is signed, so only that is rebuilt.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from flask import Request

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "mobiletargeting"  # Amazon Pinpoint's signing name: boto3's "pinpoint" client signs for it
MAX_SKEW = timedelta(minutes=5)  # as AWS allows
# Headers a signature must cover: without host it could be replayed to another service, without the date at any time.
REQUIRED_SIGNED = ("host", "x-amz-date")


class SignatureError(Exception):
    """A signed request is refused; the message says why and never holds a secret."""


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` header."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @classmethod
    def parse(cls, header: str) -> Authorization:
        """Split the header; raise SignatureError when it is not SigV4's form."""
        algorithm, _, rest = header.strip().partition(" ")
        fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
        scope = fields.get("Credential", "").split("/")
        if algorithm != ALGORITHM or len(scope) != 5 or scope[4] != "aws4_request" or not all(scope) \
                or not fields.get("SignedHeaders") or not fields.get("Signature"):
            raise SignatureError(f"The Authorization header is not {ALGORITHM} Credential=KEY_ID/DATE/REGION/"
                                 "mobiletargeting/aws4_request, SignedHeaders=…, Signature=….")
        return cls(scope[0], scope[1], scope[2], scope[3], tuple(fields["SignedHeaders"].split(";")),
                   fields["Signature"])


def is_signed(request: Request) -> bool:
    """Say whether the request carries a SigV4 Authorization header (or a presigned URL's query)."""
    # The raw query, not request.args: a query string that is not UTF-8 is the route's 400, not a crash here.
    return request.headers.get("Authorization", "").startswith(ALGORITHM) or b"X-Amz-Signature=" in request.query_string


def verify(request: Request, read_body: Callable[[], bytes], keys: Mapping[str, str],
           now: datetime | None = None) -> str:
    """Check the request's SigV4 signature against ADMIN_AWS_KEYS and return its access key id.

    read_body is called only once the key id and the date have passed, so a stranger's body is never read.

    Raise SignatureError with a sentence on anything wrong: an unknown key id, another secret, a date more than
    five minutes off, a body other than the signed one, another service's scope, temporary credentials.
    """
    if not request.headers.get("Authorization", "").startswith(ALGORITHM):
        raise SignatureError("Presigned URLs (a signature in the query string) are not supported: sign the "
                             "Authorization header, as the AWS SDKs and CLI do.")
    if "X-Amz-Security-Token" in request.headers:
        raise SignatureError("Temporary credentials (a session token) are not supported: use a long-term access "
                             "key listed in ADMIN_AWS_KEYS.")
    auth = Authorization.parse(request.headers.get("Authorization", ""))
    if auth.service != SERVICE:
        raise SignatureError(f"The request is signed for the service {auth.service!r}; sign it for "
                             f"{SERVICE!r} (boto3's and the CLI's pinpoint client do).")
    secret = keys.get(auth.access_key_id)
    if secret is None:
        raise SignatureError("The access key id is not one of ADMIN_AWS_KEYS.")
    timestamp = request.headers.get("X-Amz-Date", "")
    _check_date(timestamp, auth.date, now or datetime.now(UTC))
    body = read_body()
    content_hash = request.headers.get("X-Amz-Content-SHA256")
    if content_hash is not None and not _same(content_hash, hashlib.sha256(body).hexdigest()):
        raise SignatureError("The body's SHA-256 is not X-Amz-Content-SHA256: sign the body that is sent.")
    missing = [name for name in (*REQUIRED_SIGNED, *auth.signed_headers) if name not in request.headers]
    if missing or not set(REQUIRED_SIGNED) <= set(auth.signed_headers):
        raise SignatureError(f"The signature must cover the {', '.join(REQUIRED_SIGNED)} headers, and every header "
                             "it names must be sent.")
    if not _same(_signature(request, body, auth, secret, timestamp), auth.signature):
        raise SignatureError("The signature does not match: sign the request with the secret that ADMIN_AWS_KEYS "
                             "lists for this access key id.")
    return auth.access_key_id


def _same(expected: str, presented: str) -> bool:
    """Compare in constant time; as bytes, since compare_digest refuses a str with a non-ASCII character."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def _check_date(timestamp: str, scope_date: str, now: datetime) -> None:
    try:
        signed_at = datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("X-Amz-Date must be the signing time as YYYYMMDDTHHMMSSZ.") from None
    if timestamp[:8] != scope_date:
        raise SignatureError("X-Amz-Date is not on the date of the Credential scope.")
    if abs(now - signed_at) > MAX_SKEW:
        raise SignatureError("X-Amz-Date is more than 5 minutes from the server's clock: sign the request anew "
                             "(and check the client's clock).")


def _signature(request: Request, body: bytes, auth: Authorization, secret: str, timestamp: str) -> str:
    """Recompute the signature with botocore from the request as the client sent it, at its signing time."""
    # The path as sent (RAW_URI: gunicorn, werkzeug), which the client signed before anyone decoded it.
    raw_path = urlsplit(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path).path
    query = request.query_string.decode("latin-1")
    url = f"{request.scheme}://{request.headers['Host']}{raw_path}" + (f"?{query}" if query else "")
    headers = {name: ",".join(request.headers.getlist(name)) for name in auth.signed_headers}
    signer = SigV4Auth(Credentials(auth.access_key_id, secret), auth.service, auth.region)
    rebuilt = AWSRequest(method=request.method, url=url, headers=headers, data=body)
    rebuilt.context["timestamp"] = timestamp  # add_auth would take the clock's time; the client's is the one signed
    try:
        canonical = signer.canonical_request(rebuilt)
        return signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    except (ValueError, UnicodeError):
        raise SignatureError("The request cannot be put in SigV4's canonical form.") from None
