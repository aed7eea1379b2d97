"""The caller's address behind load balancers: X-Forwarded-For, believed only from TRUSTED_PROXIES' addresses.

werkzeug's ProxyFix trusts a number of hops whoever connects, so a client reaching the service directly could
name any address in X-Forwarded-For; this middleware believes the header only when the connecting address is
one of the proxies' own.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from app.settings import IPNetwork

WSGIApp = Any  # (environ, start_response) -> iterable of bytes


class TrustedProxies:
    """WSGI middleware setting REMOTE_ADDR (and wsgi.url_scheme) from headers the trusted proxies added."""

    def __init__(self, app: WSGIApp, proxies: Sequence[IPNetwork]) -> None:
        self.app = app
        self.proxies = tuple(proxies)
        # The same few balancers and callers come back on every request: parsing an address costs more than
        # the rest of this middleware.
        self.is_proxy = functools.lru_cache(maxsize=4096)(self._is_proxy)  # type: ignore[method-assign]

    def _is_proxy(self, address: str) -> bool:
        """Say whether an address (as a header or the socket gives it) is one of the trusted proxies'."""
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.proxies)

    def client(self, remote_addr: str, forwarded_for: str) -> str:
        """Return the caller behind the proxy remote_addr: walking X-Forwarded-For from the right, the first
        address that is not a proxy.

        Each proxy appends the address that connected to it, so only the entries right of the first untrusted
        one were written by our proxies; anything left of it is whatever the client chose to send.
        """
        if not forwarded_for:
            return remote_addr
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            if not self.is_proxy(hop):
                return hop
        return hops[0] or remote_addr  # every hop is a proxy: the farthest one is the best guess

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        remote_addr = environ.get("REMOTE_ADDR", "")
        if self.is_proxy(remote_addr):
            environ["REMOTE_ADDR"] = self.client(remote_addr, environ.get("HTTP_X_FORWARDED_FOR", ""))
            # The nearest proxy's word on the scheme the caller used (it terminated TLS).
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").rsplit(",", 1)[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)
