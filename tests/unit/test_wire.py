"""app/wire.py without the network: Signer against botocore's SigV4Auth, Answer's headers, CurlSession.for_client.

The signer must write, header for header, what botocore's SigV4Auth.add_auth writes for the same URL, headers,
body, credentials and instant; for_client must hand a client to libcurl only when botocore's own HTTP session
would send straight to the endpoint, and with the CA bundle botocore would verify against.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import boto3
import certifi
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from app.aws import Timeouts
from app.wire import Answer, CurlSession, Signer

DAY_ONE = datetime.datetime(2026, 3, 4, 23, 59, 59)
DAY_TWO = datetime.datetime(2026, 3, 5, 0, 0, 1)
TEMPLATE = (("Content-Type", "application/json"),
            ("User-Agent", "Boto3/1.40.0 md/Botocore#1.44.5 ua/2.1 os/linux  lang/python#3.11  "
                           "cfg/retry-mode#standard"))
BODY = b'{"campaignArn": "arn:aws:personalize:eu-west-1:123456789012:campaign/x", "userId": "u1", "numResults": 7}'
WITH_TOKEN = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "  session  token  value ")
WITHOUT_TOKEN = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set the instant both signers read (botocore.auth.get_current_datetime)."""
    def set_clock(when: datetime.datetime) -> None:
        monkeypatch.setattr("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: when)

    set_clock(DAY_ONE)
    return set_clock


def botocore_signs(url: str, headers: tuple[tuple[str, str], ...], body: bytes, credentials: Credentials,
                   service: str = "personalize", region: str = "eu-west-1") -> list[tuple[str, str]]:
    """The headers, in order, of the request botocore's SigV4Auth leaves after add_auth."""
    request = AWSRequest("POST", url, headers=dict(headers), data=body)
    SigV4Auth(credentials.get_frozen_credentials(), service, region).add_auth(request)
    return list(request.headers.items())


def ours(url: str, headers: tuple[tuple[str, str], ...], body: bytes, credentials: Credentials,
         service: str = "personalize", region: str = "eu-west-1") -> list[tuple[str, str]]:
    return Signer(url, headers, service, region).sign(body, credentials.get_frozen_credentials())


URLS = [
    "https://personalize-runtime.eu-west-1.amazonaws.com/recommendations",
    "https://personalize-runtime.eu-west-1.amazonaws.com:443/recommendations",  # the default port is not signed
    "https://Personalize.Internal.Example:8443/recommendations",  # a port of its own is; the host in lower case
    "http://127.0.0.1:4566/recommendations",
    "http://localhost:80/recommendations",
    "https://vpce-0a1b.personalize-runtime.eu-west-1.vpce.amazonaws.com/prefix/../recommendations",
]


@pytest.mark.parametrize("url", URLS, ids=["https", "https-443", "https-own-port", "http-own-port", "http-80",
                                           "dot-segments"])
@pytest.mark.parametrize("credentials", [WITH_TOKEN, WITHOUT_TOKEN], ids=["token", "no-token"])
def test_the_signature_is_botocore_s(clock: Any, url: str, credentials: Credentials) -> None:
    signed = ours(url, TEMPLATE, BODY, credentials)

    assert signed == botocore_signs(url, TEMPLATE, BODY, credentials)
    names = [name for name, _ in signed]
    assert names[-1] == "Authorization" and "X-Amz-Date" in names
    assert ("X-Amz-Security-Token" in names) == bool(credentials.token)


@pytest.mark.parametrize("body", [b"", "{\"userId\": \"Ana María 🚀\"}".encode(), bytes(range(256))],
                         ids=["empty", "unicode", "every-byte"])
def test_any_body_is_signed_by_its_bytes(clock: Any, body: bytes) -> None:
    assert ours(URLS[0], TEMPLATE, body, WITH_TOKEN) == botocore_signs(URLS[0], TEMPLATE, body, WITH_TOKEN)


def test_header_values_are_trimmed_for_signing_and_sent_as_they_are(clock: Any) -> None:
    headers = (("Content-Type", "  application/json  "), ("X-Amz-Target", "a   b \t c"),
               ("X-Custom-Thing", " one  two   three "), TEMPLATE[1])

    signed = ours(URLS[2], headers, BODY, WITH_TOKEN)

    assert signed == botocore_signs(URLS[2], headers, BODY, WITH_TOKEN)
    assert signed[:4] == list(headers)  # sent untrimmed, in botocore's order


def test_the_user_agent_is_sent_but_not_signed(clock: Any) -> None:
    signed = dict(ours(URLS[0], TEMPLATE, BODY, WITH_TOKEN))
    other_agent = dict(ours(URLS[0], (TEMPLATE[0], ("User-Agent", "something else")), BODY, WITH_TOKEN))

    assert signed["User-Agent"] == TEMPLATE[1][1]
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in signed["Authorization"]
    assert other_agent["Authorization"] == signed["Authorization"]


def test_headers_botocore_sets_when_signing_are_not_taken_from_the_template(clock: Any) -> None:
    """A template that caught a signed request still signs afresh (no second date, token or Authorization)."""
    stale = (*TEMPLATE, ("X-Amz-Date", "20200101T000000Z"), ("X-Amz-Security-Token", "old"),
             ("Authorization", "AWS4-HMAC-SHA256 stale"))

    signed = ours(URLS[0], stale, BODY, WITH_TOKEN)

    assert signed == botocore_signs(URLS[0], TEMPLATE, BODY, WITH_TOKEN)


def test_the_kept_signing_key_follows_the_day_and_the_secret(clock: Any) -> None:
    """One signer, as in production, across midnight and a key rotation, and back: each signature is botocore's."""
    signer = Signer(URLS[0], TEMPLATE, "personalize", "eu-west-1")
    rotated = Credentials("AKIDROTATED", "another-secret-0123456789", "token-2")
    steps = [(DAY_ONE, WITH_TOKEN), (DAY_ONE, WITH_TOKEN), (DAY_TWO, WITH_TOKEN), (DAY_TWO, rotated),
             (DAY_ONE, rotated), (DAY_ONE, WITH_TOKEN)]
    signatures = []

    for when, credentials in steps:
        clock(when)
        signed = signer.sign(BODY, credentials.get_frozen_credentials())
        assert signed == botocore_signs(URLS[0], TEMPLATE, BODY, credentials), (when, credentials.access_key)
        signatures.append(dict(signed)["Authorization"])

    assert signatures[0] == signatures[1] == signatures[5]
    assert len(set(signatures)) == 4
    assert "Credential=AKIDEXAMPLE/20260305/eu-west-1/personalize/aws4_request" in signatures[2]


def test_the_signing_name_and_region_are_the_scope(clock: Any) -> None:
    signed = ours(URLS[0], TEMPLATE, BODY, WITHOUT_TOKEN, service="personalize", region="ap-southeast-2")

    assert signed == botocore_signs(URLS[0], TEMPLATE, BODY, WITHOUT_TOKEN, region="ap-southeast-2")
    assert "/20260304/ap-southeast-2/personalize/aws4_request," in dict(signed)["Authorization"]


def test_a_url_with_a_query_string_is_refused() -> None:
    with pytest.raises(ValueError, match="query string"):
        Signer(URLS[0] + "?x=1", TEMPLATE, "personalize", "eu-west-1")


# -- Answer.headers ---------------------------------------------------------------------------------------------


def test_answer_headers_are_case_insensitive() -> None:
    answer = Answer(400, b"{}", [b"HTTP/1.1 400 Bad Request\r\n", b"Content-Type: application/json\r\n",
                                 b"x-amzn-ErrorType: InvalidInputException:http://internal.amazon.com/coral/\r\n",
                                 b"X-Amzn-RequestId:   4f1c  \r\n", b"\r\n"])

    headers = answer.headers

    assert headers["X-AMZN-ERRORTYPE"] == "InvalidInputException:http://internal.amazon.com/coral/"
    assert headers["x-amzn-requestid"] == "4f1c"
    assert "content-type" in headers and "x-amzn-errortype" in headers
    assert answer.headers is headers  # parsed once


def test_an_interim_100_continue_leaves_only_the_final_headers() -> None:
    answer = Answer(200, b"{}", [b"HTTP/1.1 100 Continue\r\n", b"X-Interim: yes\r\n", b"Content-Type: text/plain\r\n",
                                 b"\r\n", b"HTTP/1.1 200 OK\r\n", b"Content-Type: application/json\r\n",
                                 b"x-amzn-RequestId: final\r\n", b"\r\n"])

    assert dict(answer.headers) == {"Content-Type": "application/json", "x-amzn-RequestId": "final"}
    assert "x-interim" not in answer.headers


# -- CurlSession.for_client -------------------------------------------------------------------------------------


ENDPOINT = "https://personalize-runtime.us-east-1.amazonaws.com"
URL = ENDPOINT + "/recommendations"


def client(config: Config | None = None, **kwargs: Any) -> Any:
    base = Timeouts(connect=0.25, read=0.75, attempts=2, pool=3).config()
    return boto3.session.Session().client("personalize-runtime", region_name="us-east-1",
                                          config=base.merge(config) if config else base, **kwargs)


def test_a_client_straight_to_the_endpoint_gets_a_session_with_its_settings(isolated_aws: None) -> None:
    session = CurlSession.for_client(client(), URL)

    assert session is not None
    assert session.url == URL and session.pool == 3
    assert (session._connect_ms, session._attempt_ms) == (250, 1000)
    assert session._ca_bundle == certifi.where()  # botocore's verify=True
    assert session._tcp_keepalive is False
    keepalive = CurlSession.for_client(client(Config(tcp_keepalive=True)), URL)
    assert keepalive is not None and keepalive._tcp_keepalive is True


@pytest.mark.parametrize("proxy_env", ["HTTPS_PROXY", "https_proxy"])
def test_a_proxy_from_the_environment_keeps_botocore_s_session(isolated_aws: None, monkeypatch: pytest.MonkeyPatch,
                                                               proxy_env: str) -> None:
    monkeypatch.setenv(proxy_env, "http://proxy.internal.example:3128")

    assert CurlSession.for_client(client(), URL) is None


def test_an_http_proxy_applies_to_an_http_endpoint(isolated_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal.example:3128")
    plain = "http://personalize.internal.example"

    assert CurlSession.for_client(client(endpoint_url=plain), plain + "/recommendations") is None
    assert CurlSession.for_client(client(), URL) is not None  # not to an https one


@pytest.mark.parametrize(("proxy_env", "value"), [("NO_PROXY", ".amazonaws.com"), ("no_proxy", "*")])
def test_a_proxy_the_endpoint_bypasses_gets_a_session(isolated_aws: None, monkeypatch: pytest.MonkeyPatch,
                                                      proxy_env: str, value: str) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal.example:3128")
    monkeypatch.setenv(proxy_env, value)

    assert CurlSession.for_client(client(), URL) is not None


def test_all_proxy_which_botocore_does_not_read_gets_a_session(isolated_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore takes a URL's proxy by its scheme only; libcurl, which would read ALL_PROXY, is told no proxy."""
    monkeypatch.setenv("ALL_PROXY", "http://proxy.internal.example:3128")

    assert CurlSession.for_client(client(), URL) is not None


def test_a_configured_proxy_keeps_botocore_s_session(isolated_aws: None) -> None:
    assert CurlSession.for_client(client(Config(proxies={"https": "proxy.internal.example:3128"})), URL) is None
    # botocore sends an https endpoint through the https proxy only: an http-only proxy is not used.
    assert CurlSession.for_client(client(Config(proxies={"http": "proxy.internal.example:3128"})), URL) is not None


@pytest.mark.parametrize("cert", ["client.pem", ("client.crt", "client.key")], ids=["one-file", "cert-and-key"])
def test_a_client_certificate_keeps_botocore_s_session(isolated_aws: None, tmp_path: Path, cert: Any) -> None:
    client_cert = str(tmp_path / cert) if isinstance(cert, str) else tuple(str(tmp_path / c) for c in cert)

    assert CurlSession.for_client(client(Config(client_cert=client_cert)), URL) is None


@pytest.mark.parametrize("variable", ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"])
def test_a_ca_bundle_botocore_reads_is_the_session_s(isolated_aws: None, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path, variable: str) -> None:
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text("not read here\n")
    monkeypatch.setenv(variable, str(bundle))

    session = CurlSession.for_client(client(), URL)

    assert session is not None and session._ca_bundle == str(bundle)
    explicit = CurlSession.for_client(client(verify=str(tmp_path / "other.pem")), URL)
    assert explicit is not None and explicit._ca_bundle == str(tmp_path / "other.pem")


def test_verify_false_and_plain_http_verify_nothing(isolated_aws: None, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "ignored.pem"))

    unverified = CurlSession.for_client(client(verify=False), URL)
    plain = CurlSession.for_client(client(endpoint_url="http://127.0.0.1:4566"),
                                   "http://127.0.0.1:4566/recommendations")

    assert unverified is not None and unverified._ca_bundle is None
    assert plain is not None and plain._ca_bundle is None
