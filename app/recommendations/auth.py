"""Who may call GET /recommendations: API keys (X-API-Key or HTTP Basic) and an optional address allowlist."""
from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Sequence

from flask import Request

from app.errors import ServiceError
from app.settings import IPNetwork


class UnauthorizedError(ServiceError):
    """No valid API key came with the request."""

    status = 401
    code = "unauthorized"


class ForbiddenError(ServiceError):
    """The caller's address is not in ALLOWED_CIDRS."""

    status = 403
    code = "forbidden"


def key_matches(candidate: str, keys: Sequence[bytes]) -> bool:
    """Compare a presented key with every configured key in constant time (no early exit on a match)."""
    presented = candidate.encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def presented_keys(request: Request) -> list[str]:
    """Return the keys the request carries: the X-API-Key header and the password of HTTP Basic auth."""
    keys = []
    if header := request.headers.get("X-API-Key"):
        keys.append(header.strip())
    try:
        authorization = request.authorization
    except ValueError:  # werkzeug lets a malformed Basic credential's base64 error through
        authorization = None
    if authorization is not None and authorization.type == "basic" and authorization.password:
        keys.append(authorization.password)
    return keys


def address_allowed(request: Request, allowed: Sequence[IPNetwork]) -> bool:
    """Say whether the caller's address (after TRUSTED_PROXIES) is in one of the networks; any is when none."""
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:1.2.3.4 when listening on an IPv6 socket
    return any(address in network for network in allowed)


def build_guard(api_keys: Sequence[str], allowed: Sequence[IPNetwork]) -> Callable[[Request], None] | None:
    """Return a check that raises for a caller that may not ask, or None when neither setting is on."""
    if not api_keys and not allowed:
        return None
    keys = [key.encode("utf-8") for key in api_keys]

    def check(request: Request) -> None:
        if not address_allowed(request, allowed):
            raise ForbiddenError("This address may not call the service (see ALLOWED_CIDRS).")
        if keys and not any(key_matches(candidate, keys) for candidate in presented_keys(request)):
            raise UnauthorizedError(
                "A valid API key is required: send it in the X-API-Key header or as the Basic auth password.",
                headers={"WWW-Authenticate": 'Basic realm="recommendations"'},
            )

    return check
