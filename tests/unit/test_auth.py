"""Who may call GET /recommendations: API_KEYS (X-API-Key or the Basic auth password) and ALLOWED_CIDRS.

Every test goes through the Flask test client on make_app() with the FakeRecommender, so what is
checked is the HTTP behaviour Braze sees: 200 with items, or the JSON error shape with 401/403.
"""
from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.settings import ConfigError, Settings
from tests.conftest import FakeRecommender

# Long random-looking keys: no 8-character slice of them can appear in a log line by chance.
KEY_A = "9f2c7e41b0d35a86e1c4f70b2d9a3e58"
KEY_B = "4d81a0f6c93e27b5d0a1f8c6e3b47925"
KEY_C = "e07b3c5a9d1f48260c7e5b3a1d9f6842"
KEYS = (KEY_A, KEY_B, KEY_C)
ALLOWED_IP = "52.4.160.214"
OTHER_IP = "52.4.160.215"
PROXY_IP = "10.1.2.3"
PROXY_CIDRS = "10.0.0.0/8,fd00::/8"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def get(client: FlaskClient, headers: dict[str, str] | None = None, **environ: Any) -> TestResponse:
    return client.get("/recommendations?user_id=u1", headers=headers or {}, environ_base=environ)


def assert_error(resp: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The one JSON error shape: {"error": {"code", "status", "message"}}, never cached."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "status", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def assert_unauthorized(resp: TestResponse, fake: FakeRecommender) -> None:
    assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    body = resp.get_data(as_text=True)
    for key in KEYS:
        assert key not in body and key[:8] not in body and key[-8:] not in body
    assert fake.calls == [], "a rejected request must not reach the recommender"


def assert_ok(resp: TestResponse, fake: FakeRecommender) -> None:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [item["id"] for item in resp.get_json()[:3]] == ["1000", "1037", "1074"]
    assert fake.calls[-1] == ("u1", 10)


@pytest.fixture
def keyed(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> FlaskClient:
    return make_app({"recommender": fake_recommender}, api_keys=",".join(KEYS)).test_client()


@pytest.fixture
def allowlisted(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> FlaskClient:
    return make_app({"recommender": fake_recommender}, allowed_cidrs=f"{ALLOWED_IP}/32, 192.0.2.0/24").test_client()


# --------------------------------------------------------------------------------------------------
# API_KEYS


def test_no_api_keys_means_no_header_is_needed(client: FlaskClient, fake_recommender: FakeRecommender) -> None:
    resp = get(client)

    assert_ok(resp, fake_recommender)
    assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_is_accepted_in_x_api_key(
    keyed: FlaskClient, fake_recommender: FakeRecommender, key: str
) -> None:
    assert_ok(get(keyed, {"X-API-Key": key}), fake_recommender)


@pytest.mark.parametrize("username", ["braze", "", "anything at all", KEY_B])
@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_is_accepted_as_basic_password(
    keyed: FlaskClient, fake_recommender: FakeRecommender, key: str, username: str
) -> None:
    assert_ok(get(keyed, {"Authorization": basic(username, key)}), fake_recommender)


REJECTED_HEADERS = [
    pytest.param({}, id="missing"),
    pytest.param({"X-API-Key": "0123456789abcdef0123456789abcdef"}, id="wrong"),
    pytest.param({"X-API-Key": ""}, id="empty"),
    pytest.param({"X-API-Key": "   "}, id="blank"),
    pytest.param({"X-API-Key": KEY_A[:-1]}, id="prefix-minus-one"),
    pytest.param({"X-API-Key": KEY_A[:16]}, id="prefix-16"),
    pytest.param({"X-API-Key": KEY_A + "x"}, id="trailing-char"),
    pytest.param({"X-API-Key": KEY_A.upper()}, id="other-case"),
    pytest.param({"X-API-Key": f"{KEY_A},{KEY_B}"}, id="two-keys-in-one-header"),
    pytest.param({"Authorization": f"Bearer {KEY_A}"}, id="bearer-token"),
    pytest.param({"Authorization": KEY_A}, id="bare-authorization"),
    pytest.param({"Authorization": basic("braze", "wrong-password-0123456789")}, id="basic-wrong-password"),
    pytest.param({"Authorization": basic(KEY_A, "")}, id="basic-key-as-username-empty-password"),
    pytest.param({"Authorization": basic(KEY_A, "nope-nope-nope-nope")}, id="basic-key-as-username"),
    pytest.param({"Authorization": basic("braze", KEY_A + "x")}, id="basic-trailing-char"),
    pytest.param({"Authorization": "Basic " + base64.b64encode(KEY_A.encode()).decode()}, id="basic-without-colon"),
    pytest.param({"X-Api-Token": KEY_A}, id="other-header-name"),
]


@pytest.mark.parametrize("headers", REJECTED_HEADERS)
def test_request_without_a_valid_key_is_401(
    keyed: FlaskClient, fake_recommender: FakeRecommender, headers: dict[str, str]
) -> None:
    assert_unauthorized(get(keyed, headers), fake_recommender)


def test_key_in_the_query_string_is_not_accepted(keyed: FlaskClient, fake_recommender: FakeRecommender) -> None:
    # A key in the URL would land in every access log; only headers count.
    resp = keyed.get(f"/recommendations?user_id=u1&api_key={KEY_A}&X-API-Key={KEY_A}")

    assert_unauthorized(resp, fake_recommender)


def test_a_valid_key_in_either_place_is_enough(keyed: FlaskClient, fake_recommender: FakeRecommender) -> None:
    headers = {"X-API-Key": "0123456789abcdef-wrong", "Authorization": basic("braze", KEY_C)}

    assert_ok(get(keyed, headers), fake_recommender)


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_checks_stay_open(
    make_app: Callable[..., Flask], fake_recommender: FakeRecommender, path: str
) -> None:
    app = make_app({"recommender": fake_recommender}, api_keys=KEY_A, allowed_cidrs=f"{ALLOWED_IP}/32")

    resp = app.test_client().get(path, environ_base={"REMOTE_ADDR": OTHER_IP})

    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["status"] in ("ok", "ready")


GARBAGE_ENVIRON = [
    pytest.param({"HTTP_X_API_KEY": "\xff\xfe\x00\x01garbage"}, id="x-api-key-binary"),
    pytest.param({"HTTP_X_API_KEY": "\U0001F600".encode().decode("latin-1")}, id="x-api-key-utf8-as-latin1"),
    pytest.param({"HTTP_X_API_KEY": "\u043a\u043b\u044e\u0447\U0001F511\ud800"}, id="x-api-key-non-latin1-surrogate"),
    pytest.param({"HTTP_AUTHORIZATION": "Basic \xff\xfe\xfd"}, id="basic-non-ascii-base64"),
    pytest.param({"HTTP_AUTHORIZATION": "Basic \xe9"}, id="basic-e-acute"),
    pytest.param({"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"\xff\xfe:\xc3\x28").decode()},
                 id="basic-invalid-utf8"),
    pytest.param({"HTTP_AUTHORIZATION": "Basic !!!not-base64!!!"}, id="basic-not-base64"),
    pytest.param({"HTTP_AUTHORIZATION": "Basic"}, id="basic-no-credentials"),
    pytest.param({"HTTP_AUTHORIZATION": "\xe9\xe8 \xff"}, id="authorization-scheme-non-ascii"),
    pytest.param({"HTTP_AUTHORIZATION": "Digest username=\"\xff\", nonce=\"\""}, id="digest-non-ascii"),
    pytest.param({"HTTP_AUTHORIZATION": "Basic " + base64.b64encode("br\u00e4ze:\U0001F600".encode()).decode()},
                 id="basic-utf8-wrong"),
]


@pytest.mark.parametrize("environ", GARBAGE_ENVIRON)
def test_non_ascii_garbage_in_headers_is_401_never_500(
    keyed: FlaskClient, fake_recommender: FakeRecommender, environ: dict[str, str]
) -> None:
    resp = keyed.get("/recommendations?user_id=u1", environ_base=environ)

    assert_unauthorized(resp, fake_recommender)


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Replace hmac.compare_digest (as app.recommendations.auth sees it) with a spy that records and still compares."""
    real = hmac.compare_digest
    seen: list[tuple[Any, Any]] = []

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.recommendations.auth.hmac.compare_digest", spy)
    return seen


@pytest.mark.parametrize("presented", [KEY_A, KEY_C, "0123456789abcdef0123456789abcdef"], ids=["first", "last", "none"])
def test_every_configured_key_is_compared_in_constant_time(
    keyed: FlaskClient, fake_recommender: FakeRecommender, compare_spy: list[tuple[Any, Any]], presented: str
) -> None:
    resp = get(keyed, {"X-API-Key": presented})

    assert resp.status_code == (401 if presented not in KEYS else 200)
    # No early exit on the first match: each configured key is compared once, with the presented key.
    assert sorted(b for _, b in compare_spy) == sorted(k.encode() for k in KEYS)
    assert all(a == presented.encode() for a, _ in compare_spy)


def test_basic_password_is_compared_in_constant_time(
    keyed: FlaskClient, compare_spy: list[tuple[Any, Any]]
) -> None:
    resp = get(keyed, {"Authorization": basic("braze", KEY_A)})

    assert resp.status_code == 200
    assert sorted(b for _, b in compare_spy) == sorted(k.encode() for k in KEYS)


def test_keys_are_never_logged(
    keyed: FlaskClient, fake_recommender: FakeRecommender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    requests = [
        {"X-API-Key": KEY_A},
        {"Authorization": basic("braze", KEY_B)},
        {"X-API-Key": KEY_C + "x"},
        {"X-API-Key": KEY_A[:20]},
        {"Authorization": f"Bearer {KEY_B}"},
        {},
    ]
    statuses = [get(keyed, headers).status_code for headers in requests]
    fake_recommender.error = RuntimeError("crash to make the service log")  # a logged fallback path too
    statuses.append(keyed.get("/recommendations?user_id=u9", headers={"X-API-Key": KEY_A}).status_code)

    assert statuses == [200, 200, 401, 401, 401, 401, 200]
    assert any(record.levelno >= logging.WARNING for record in caplog.records)  # something was logged
    texts = [caplog.text] + [record.getMessage() for record in caplog.records]
    for key in KEYS:
        slices = {key[i:i + 8] for i in range(len(key) - 7)}
        for text in texts:
            assert not any(s in text for s in slices), f"part of an API key was logged: {text!r}"


def test_short_api_key_is_a_config_error_that_does_not_show_it(make_app: Callable[..., Flask]) -> None:
    short = "tooshort-x1y2z"  # 14 characters

    with pytest.raises(ConfigError) as excinfo:
        make_app(api_keys=f"{KEY_A},{short}")

    message = str(excinfo.value)
    assert "API_KEYS" in message
    assert short not in message and KEY_A not in message


def test_sixteen_character_key_is_long_enough(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> None:
    key = "0123456789abcdef"
    client = make_app({"recommender": fake_recommender}, api_keys=key).test_client()

    assert_ok(get(client, {"X-API-Key": key}), fake_recommender)
    resp = get(client, {"X-API-Key": key[:15]})
    assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


def test_non_ascii_api_key_either_works_in_x_api_key_or_is_refused_at_start(
    make_app: Callable[..., Flask], fake_recommender: FakeRecommender
) -> None:
    key = "cl\u00e9-secr\u00e8te-0123456789"
    try:
        app = make_app({"recommender": fake_recommender}, api_keys=key)
    except ConfigError:
        return  # refusing it at start-up is a fine answer too
    # What a real WSGI server puts in the environ: the header's UTF-8 bytes decoded as latin-1.
    resp = app.test_client().get("/recommendations?user_id=u1",
                                 environ_base={"HTTP_X_API_KEY": key.encode().decode("latin-1")})
    assert resp.status_code == 200


# --------------------------------------------------------------------------------------------------
# ALLOWED_CIDRS and TRUSTED_PROXIES


@pytest.mark.parametrize("address", [ALLOWED_IP, "192.0.2.1", "192.0.2.254"])
def test_allowed_address_passes(allowlisted: FlaskClient, fake_recommender: FakeRecommender, address: str) -> None:
    assert_ok(get(allowlisted, REMOTE_ADDR=address), fake_recommender)


@pytest.mark.parametrize("address", [OTHER_IP, "127.0.0.1", "192.0.3.1", "::1", "2001:db8::1", "not-an-ip", ""])
def test_other_address_is_403(allowlisted: FlaskClient, fake_recommender: FakeRecommender, address: str) -> None:
    resp = get(allowlisted, REMOTE_ADDR=address)

    assert_error(resp, 403, "forbidden")
    assert fake_recommender.calls == []


def test_ipv4_mapped_ipv6_address_matches_the_ipv4_block(
    allowlisted: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    assert_ok(get(allowlisted, REMOTE_ADDR=f"::ffff:{ALLOWED_IP}"), fake_recommender)
    assert_error(get(allowlisted, REMOTE_ADDR=f"::ffff:{OTHER_IP}"), 403, "forbidden")


@pytest.fixture
def behind_proxy(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> FlaskClient:
    return make_app({"recommender": fake_recommender}, allowed_cidrs=f"{ALLOWED_IP}/32",
                    trusted_proxies=PROXY_CIDRS).test_client()


def test_behind_one_proxy_the_forwarded_client_is_checked(
    behind_proxy: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    resp = get(behind_proxy, {"X-Forwarded-For": ALLOWED_IP}, REMOTE_ADDR=PROXY_IP)

    assert_ok(resp, fake_recommender)


def test_behind_one_proxy_the_proxy_itself_is_not_the_client(
    behind_proxy: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    assert_error(get(behind_proxy, {"X-Forwarded-For": OTHER_IP}, REMOTE_ADDR=PROXY_IP), 403, "forbidden")
    assert_error(get(behind_proxy, REMOTE_ADDR=PROXY_IP), 403, "forbidden")
    assert fake_recommender.calls == []


def test_behind_one_proxy_a_spoofed_leftmost_entry_does_not_help(
    behind_proxy: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    # The caller sent X-Forwarded-For: ALLOWED_IP; the load balancer appended the real address.
    spoofed = get(behind_proxy, {"X-Forwarded-For": f"{ALLOWED_IP}, {OTHER_IP}"}, REMOTE_ADDR=PROXY_IP)
    assert_error(spoofed, 403, "forbidden")
    assert fake_recommender.calls == []

    # And junk to the left of an allowed last hop does not hurt.
    resp = get(behind_proxy, {"X-Forwarded-For": f"6.6.6.6, {ALLOWED_IP}"}, REMOTE_ADDR=PROXY_IP)
    assert_ok(resp, fake_recommender)


def test_a_client_connecting_directly_cannot_forge_x_forwarded_for(
    behind_proxy: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    # The reproduction: with TRUSTED_PROXIES=1 this passed, whoever connected.
    assert_error(get(behind_proxy, {"X-Forwarded-For": ALLOWED_IP}, REMOTE_ADDR=OTHER_IP), 403, "forbidden")
    assert fake_recommender.calls == []
    # A direct caller in ALLOWED_CIDRS is itself the client, whatever it claims.
    assert_ok(get(behind_proxy, {"X-Forwarded-For": OTHER_IP}, REMOTE_ADDR=ALLOWED_IP), fake_recommender)


@pytest.mark.parametrize(("forwarded_for", "remote", "allowed"), [
    (f"{ALLOWED_IP}, 10.9.9.9", PROXY_IP, True),  # client → balancer 10.9.9.9 → proxy 10.1.2.3 → service
    (f"{OTHER_IP}, {ALLOWED_IP}, 10.9.9.9, 10.8.8.8", PROXY_IP, True),  # the left-most entry is the client's word
    (f"{ALLOWED_IP}, {OTHER_IP}, 10.9.9.9", PROXY_IP, False),  # the right-most untrusted address is the caller
    ("10.9.9.9, 10.8.8.8", PROXY_IP, False),  # only proxies: the farthest one, not in ALLOWED_CIDRS
    (f"{ALLOWED_IP}, fd00::7", "fd00::1", True),  # IPv6 proxies
    (f"{ALLOWED_IP}, 10.9.9.9", f"::ffff:{PROXY_IP}", True),  # an IPv6 socket's view of an IPv4 proxy
    (f"{ALLOWED_IP}, not-an-ip", PROXY_IP, False),  # junk written after the client is not skipped
])
def test_a_chain_of_proxies_is_walked_from_the_right(
    behind_proxy: FlaskClient, fake_recommender: FakeRecommender, forwarded_for: str, remote: str, allowed: bool
) -> None:
    resp = get(behind_proxy, {"X-Forwarded-For": forwarded_for}, REMOTE_ADDR=remote)
    if allowed:
        assert_ok(resp, fake_recommender)
    else:
        assert_error(resp, 403, "forbidden")


def test_x_forwarded_proto_is_believed_only_from_a_proxy(make_app: Callable[..., Flask]) -> None:
    app = make_app(trusted_proxies=PROXY_CIDRS)

    @app.get("/scheme")
    def scheme() -> str:
        return request.scheme

    client = app.test_client()
    headers = {"X-Forwarded-Proto": "https"}
    assert client.get("/scheme", headers=headers, environ_base={"REMOTE_ADDR": PROXY_IP}).text == "https"
    assert client.get("/scheme", headers=headers, environ_base={"REMOTE_ADDR": OTHER_IP}).text == "http"


@pytest.mark.parametrize("count", ["1", "2", "5"])
def test_a_count_of_trusted_proxies_is_refused_with_the_new_form(count: str) -> None:
    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES is now the load balancers' own addresses .*10\.0\.0\.0/8"):
        Settings.from_env({"CATALOG_URI": "sample/catalog.csv", "RECOMMENDATIONS_URI": "x.json.out",
                           "TRUSTED_PROXIES": count})


def test_trusted_proxies_zero_still_means_none(make_app: Callable[..., Flask]) -> None:
    assert make_app(trusted_proxies="0").config["SETTINGS"].trusted_proxies == ()
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES: 'ten' is not an IP address"):
        make_app(trusted_proxies="10.0.0.0/8,ten")


def test_without_trusted_proxies_x_forwarded_for_is_ignored(
    allowlisted: FlaskClient, fake_recommender: FakeRecommender
) -> None:
    resp = get(allowlisted, {"X-Forwarded-For": ALLOWED_IP}, REMOTE_ADDR=PROXY_IP)
    assert_error(resp, 403, "forbidden")
    assert fake_recommender.calls == []

    resp = get(allowlisted, {"X-Forwarded-For": OTHER_IP}, REMOTE_ADDR=ALLOWED_IP)
    assert_ok(resp, fake_recommender)


@pytest.mark.parametrize("cidrs", ["52.4.160.214/33", "not-an-ip", "52.4.160.214/32,300.1.1.1", "10.0.0.0/8;"])
def test_bad_cidr_is_a_config_error_naming_allowed_cidrs(make_app: Callable[..., Flask], cidrs: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_CIDRS"):
        make_app(allowed_cidrs=cidrs)


@pytest.fixture
def both(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> FlaskClient:
    return make_app({"recommender": fake_recommender}, api_keys=",".join(KEYS),
                    allowed_cidrs=f"{ALLOWED_IP}/32").test_client()


def test_both_checks_allowed_address_without_key_is_401(both: FlaskClient, fake_recommender: FakeRecommender) -> None:
    assert_unauthorized(get(both, REMOTE_ADDR=ALLOWED_IP), fake_recommender)


def test_both_checks_wrong_address_with_key_is_403(both: FlaskClient, fake_recommender: FakeRecommender) -> None:
    resp = get(both, {"X-API-Key": KEY_A}, REMOTE_ADDR=OTHER_IP)

    assert_error(resp, 403, "forbidden")
    assert KEY_A not in resp.get_data(as_text=True)
    assert fake_recommender.calls == []


def test_both_checks_allowed_address_with_key_passes(both: FlaskClient, fake_recommender: FakeRecommender) -> None:
    assert_ok(get(both, {"X-API-Key": KEY_B}, REMOTE_ADDR=ALLOWED_IP), fake_recommender)
