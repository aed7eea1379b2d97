"""Signed AWS calls on the wire, for the request path: SigV4 as botocore signs it, sent with libcurl.

A boto3 call spends most of its CPU in machinery a fixed, repeated POST does not need: header objects, a
canonical request rebuilt from scratch, urllib3 and http.client (whose header parsing goes through the email
package). Here the parts of a request that never change are worked out once, from the request botocore
itself built (app/sources/personalize.py, request_template):

- Signer: the SigV4 signature of such a request, with botocore's rules (the headers it signs, how it trims
  them, the host without a default port, the body's SHA-256) and botocore's clock. The signing key is kept
  for the day. tests/unit/test_personalize_wire.py checks it byte for byte against botocore's client.
- CurlSession: the request sent with libcurl (pycurl), from a pool of handles as big as botocore's connection
  pool, each keeping its connection alive, under the client's timeouts and CA bundle. libcurl's failures are
  raised as the botocore exceptions urllib3's would have become, so retries and error mapping are botocore's.
  A client whose HTTP session needs what this does not do (a proxy, a client certificate) keeps botocore's
  own session: CurlSession.for_client answers None.
"""
from __future__ import annotations

import hashlib
import hmac
import socket
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
import pycurl
from botocore.awsrequest import HeadersDict
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import get_cert_path

ALGORITHM = "AWS4-HMAC-SHA256"
Header = tuple[str, str]


def _trim(value: str) -> str:
    """SigV4's Trimall, as botocore's SigV4Auth._header_value: no outer spaces, inner runs made one space."""
    return " ".join(value.split())


class Signer:
    """Sign POSTs to one URL whose headers, but for the date and the session token, are always the same.

    headers: the request's headers before signing, as botocore built them (name, value), in its order.
    sign() returns them followed by X-Amz-Date, X-Amz-Security-Token (with a session token) and
    Authorization, the order botocore's SigV4Auth.add_auth leaves them in.
    """

    def __init__(self, url: str, headers: Sequence[Header], signing_name: str, region: str) -> None:
        parts = urlsplit(url)
        if parts.query:
            raise ValueError("the signer signs requests without a query string")
        self.headers = tuple(h for h in headers if h[0].lower() not in ("authorization", "x-amz-date",
                                                                         "x-amz-security-token"))
        self._scope_tail = f"{region}/{signing_name}/aws4_request"
        self._signing_name, self._region = signing_name, region
        signed = {name.lower(): _trim(value) for name, value in self.headers
                  if name.lower() not in botocore.auth.SIGNED_HEADERS_BLACKLIST}
        signed.setdefault("host", botocore.auth._host_from_url(url))
        self._signed = signed
        self._names = {False: sorted([*signed, "x-amz-date"]),
                       True: sorted([*signed, "x-amz-date", "x-amz-security-token"])}
        self._signed_names = {token: ";".join(names) for token, names in self._names.items()}
        self._path = botocore.auth.SigV4Auth(None, signing_name, region)._normalize_url_path(parts.path)
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret key, date, signing key) of the last signature

    def sign(self, body: bytes, credentials: Any) -> list[Header]:
        """Return the request's headers with its signature by credentials (botocore's frozen credentials)."""
        timestamp = botocore.auth.get_current_datetime().strftime(botocore.auth.SIGV4_TIMESTAMP)
        token = credentials.token
        values = dict(self._signed)
        values["x-amz-date"] = timestamp
        if token:
            values["x-amz-security-token"] = _trim(token)
        names = self._names[bool(token)]
        signed_names = self._signed_names[bool(token)]
        canonical = "\n".join((
            "POST", self._path, "", "\n".join([f"{name}:{values[name]}" for name in names]) + "\n",
            signed_names, hashlib.sha256(body).hexdigest(),
        ))
        date = timestamp[:8]
        scope = f"{date}/{self._scope_tail}"
        to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(credentials.secret_key, date), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers = [*self.headers, ("X-Amz-Date", timestamp)]
        if token:
            headers.append(("X-Amz-Security-Token", token))
        headers.append(("Authorization", f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                                         f"SignedHeaders={signed_names}, Signature={signature}"))
        return headers

    def _signing_key(self, secret: str, date: str) -> bytes:
        """SigV4's derived key for the day, as botocore's SigV4Auth.signature derives it (kept while it holds)."""
        kept_secret, kept_date, key = self._key
        if kept_secret != secret or kept_date != date:
            key = f"AWS4{secret}".encode()
            for part in (date, self._region, self._signing_name, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (secret, date, key)
        return key


class Answer:
    """An HTTP answer, with what botocore's retry handler and error parser read of an AWSResponse."""

    __slots__ = ("status_code", "content", "_lines", "_headers")

    def __init__(self, status_code: int, content: bytes, header_lines: list[bytes]) -> None:
        self.status_code = status_code
        self.content = content
        self._lines = header_lines
        self._headers: HeadersDict | None = None

    @property
    def headers(self) -> HeadersDict:
        """The last answer's headers (after any 100 Continue), case-insensitive, parsed when first asked for."""
        if self._headers is None:
            headers = HeadersDict()
            for line in self._lines:
                text = line.decode("latin-1")
                if text.startswith("HTTP/"):
                    headers = HeadersDict()  # a new status line: the headers so far were an interim answer's
                elif ":" in text:
                    name, _, value = text.partition(":")
                    headers[name.strip()] = value.strip()
            self._headers = headers
        return self._headers


# libcurl's errors as the botocore exceptions urllib3's would have become (botocore/httpsession.py, send):
# a timeout, a refused or unresolvable endpoint, a connection dropped mid-answer, a TLS failure.
_CLOSED = {pycurl.E_GOT_NOTHING, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE}
_UNREACHABLE = {pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT}
_TLS = {pycurl.E_SSL_CONNECT_ERROR, pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE,
        pycurl.E_SSL_CERTPROBLEM, pycurl.E_SSL_CIPHER, pycurl.E_SSL_ISSUER_ERROR}


class CurlSession:
    """POST to one URL with libcurl: a pool of handles, each with its connection kept alive.

    pool: how many idle handles (so connections) are kept, as botocore's max_pool_connections; more callers
    at once each get a handle of their own, closed after use, as urllib3 does past its pool size.
    Timeouts: connecting may take connect_timeout seconds, and the whole attempt connect_timeout + read_timeout
    (botocore's longest attempt, attempt_seconds, which the deadline checks count on). libcurl has no timeout
    for one read, and its clock runs while the answer waits for the GIL: on a worker whose threads all queue
    for it, read_timeout alone would cut answers that have arrived.
    """

    def __init__(self, url: str, connect_timeout: float, read_timeout: float, pool: int,
                 ca_bundle: str | None, tcp_keepalive: bool = False) -> None:
        self.url = url
        self.pool = pool
        self._connect_ms = max(int(connect_timeout * 1000), 1)
        self._attempt_ms = max(int((connect_timeout + read_timeout) * 1000), 1)
        self._ca_bundle = ca_bundle  # None: not verified (botocore's verify=False, or plain http)
        self._tcp_keepalive = tcp_keepalive
        self._idle: deque[pycurl.Curl] = deque()  # each has answered once, so has its connection open
        self._lock = threading.Lock()

    @classmethod
    def for_client(cls, client: Any, url: str) -> CurlSession | None:
        """A session with the client's HTTP settings, or None when they need botocore's own session."""
        http = client._endpoint.http_session  # botocore's URLLib3Session (tests/unit/test_personalize_wire.py)
        if http._proxy_config.proxy_url_for(url) or http._cert_file or http._proxy_config.settings:
            return None
        config = client.meta.config
        verify = http._verify
        ca_bundle = get_cert_path(verify) if url.lower().startswith("https") and verify else None
        keepalive = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in (http._socket_options or [])
        return cls(url, config.connect_timeout, config.read_timeout, config.max_pool_connections, ca_bundle,
                   keepalive)

    def post(self, headers: Sequence[Header], body: bytes) -> Answer:
        """Send one POST; return its answer or raise the botocore exception of the failure."""
        try:
            handle = self._idle.pop()  # the most recently used: its connection is the likeliest to be alive
        except IndexError:
            handle = self._new_handle()
        chunks: list[bytes] = []
        header_lines: list[bytes] = []
        handle.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in headers]
                      + ["Expect:", "Accept:"])  # libcurl's own defaults, which botocore does not send
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.WRITEFUNCTION, chunks.append)
        handle.setopt(pycurl.HEADERFUNCTION, header_lines.append)
        try:
            handle.perform()
        except pycurl.error as exc:
            failure = self._failure(handle, exc)
            handle.close()  # its connection is in doubt: the next caller starts afresh
            raise failure from None
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        self._give_back(handle)
        return Answer(status, b"".join(chunks), header_lines)

    def _failure(self, handle: pycurl.Curl, exc: pycurl.error) -> Exception:
        code, message = exc.args[0], str(exc.args[1])
        if code == pycurl.E_OPERATION_TIMEDOUT:
            # Connected, as urllib3 counts it: this attempt made its TCP connection (a TLS handshake that times out
            # is a read timeout there too), or sent its request on a kept one. Not PRETRANSFER_TIME: libcurl sets
            # it when it gives up connecting as well.
            connected = handle.getinfo(pycurl.CONNECT_TIME) > 0 or handle.getinfo(pycurl.REQUEST_SIZE) > 0
            return (ReadTimeoutError if connected else ConnectTimeoutError)(endpoint_url=self.url, error=message)
        if code in _UNREACHABLE:
            return EndpointConnectionError(endpoint_url=self.url, error=message)
        if code in _CLOSED:
            return ConnectionClosedError(endpoint_url=self.url, error=message)
        if code in _TLS:
            return SSLError(endpoint_url=self.url, error=message)
        return HTTPClientError(error=message)

    def _give_back(self, handle: pycurl.Curl) -> None:
        with self._lock:
            if len(self._idle) < self.pool:
                self._idle.append(handle)
                return
        handle.close()

    def _new_handle(self) -> pycurl.Curl:
        handle = pycurl.Curl()
        handle.setopt(pycurl.URL, self.url)
        handle.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for name look-up timeouts
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_ms)
        handle.setopt(pycurl.TIMEOUT_MS, self._attempt_ms)
        handle.setopt(pycurl.PROXY, "")  # botocore's session had no proxy for this URL: ignore *_proxy here too
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        if self._tcp_keepalive:
            handle.setopt(pycurl.TCP_KEEPALIVE, 1)
        if self._ca_bundle is not None:
            handle.setopt(pycurl.CAINFO, self._ca_bundle)
            handle.setopt(pycurl.SSL_VERIFYPEER, 1)
            handle.setopt(pycurl.SSL_VERIFYHOST, 2)
        else:
            handle.setopt(pycurl.SSL_VERIFYPEER, 0)
            handle.setopt(pycurl.SSL_VERIFYHOST, 0)
        return handle

    def close(self) -> None:
        """Close the idle handles and their connections."""
        while self._idle:
            self._idle.pop().close()
