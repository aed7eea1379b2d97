"""Contract: Braze message bodies rendered by a real Liquid engine against the real service under gunicorn.

Each test renders a Connected Content body with tests/contract/liquid_braze.py (python-liquid plus Braze's
`connected_content`, `url_param_escape` and `abort_message`), which makes real HTTP calls to
`gunicorn wsgi:app` started from the repository root on the bundled sample data, the way tests/e2e starts it.
Expected items are read independently from sample/catalog.csv and sample/batch-output.json.out.

Braze's `{{${user_id}}}` personalization syntax is not valid Liquid: the bodies below use `{{ user_id }}`
(a render variable) instead, and `{{ campaign_name }}` for Braze's `{{campaign.${name}}}`.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from liquid.exceptions import LiquidSyntaxError

from app.settings import Settings
from tests.conftest import SAMPLE_BATCH, SAMPLE_CATALOG
from tests.contract.liquid_braze import (
    BRAZE_HEADERS,
    STATUS_KEY,
    BrazeEnvironment,
    ConnectedCall,
    MessageAborted,
    url_param_escape,
)
from tests.e2e.conftest import Gunicorn, free_port, service_env, start_gunicorn

WORKERS = 2
API_KEY = "contract-test-key-5f2b9c0e7a41d3"
WRONG_KEY = "not-the-key-0000000000000000"
LINK_QUERY = "utm_source=braze&utm_medium=email&utm_campaign={campaign}"
NO_CAMPAIGN_SUFFIX = "?utm_source=braze&utm_medium=email"  # an empty {campaign} drops its pair
DEFAULT_NUM_RESULTS = 10  # the service's default when the URL gives no num_results

AWKWARD_USERS = {  # user id -> how url_param_escape must write it in the URL
    "Ana María": "Ana%20Mar%C3%ADa",
    "vip+1@example.com": "vip%2B1%40example.com",
    "🚀rocket-fan": "%F0%9F%9A%80rocket-fan",
    "jane.doe@example.com": "jane.doe%40example.com",
}

# The seed page's Content Card body (braze-amazon-personalize), fixed to valid Liquid: `{{${user_id}}}` becomes
# `{{ user_id | url_param_escape }}`, the seed's `{% recommendations[0].name %}` becomes `{{ ... }}`, and the
# image and link the seed puts in the card's image and "Redirect to Web URL" fields are rendered in the body.
SEED_CARD = """\
{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }} :save recommendations %}
This seems like a great fit for you:
{{ recommendations[0].name }}
{{ recommendations[0].price }}
<a href="{{ recommendations[0].url }}"><img src="{{ recommendations[0].image }}"></a>
"""

ITEM_LOOP = """\
{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }}&num_results=3 \
:save recommendations %}
{%- for item in recommendations %}
{{ item.name }} | {{ item.price }} | {{ item.url }} | {{ item.image }}
{%- endfor %}"""

# Array answers carry no __http_status_code__, so the abort guard tests the first item instead.
GUARDED_LOOP = """\
{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }}&num_results=3 AUTH \
:save recommendations %}
{%- unless recommendations[0].name %}{% abort_message('recommendations unavailable') %}{% endunless %}
{%- for item in recommendations %}
{{ item.name }} | {{ item.price }} | {{ item.url }} | {{ item.image }}
{%- endfor %}"""

OBJECT_GUARD = """\
{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }}&num_results={{ n }}\
&format=object :save recs :cache_max_age 900 %}
{%- if recs.__http_status_code__ != 200 or recs.items.size == 0 %}{% abort_message('no recs') %}{% endif %}
{%- for item in recs.items %}
{{ item.name }} | {{ item.price }} | {{ item.url }} | {{ item.image }}
{%- endfor %}"""

TRACKED_LINKS = """\
{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }}&num_results=3\
&campaign={{ campaign_name | url_param_escape }} :headers {"X-API-Key": "API_KEY"} :save recommendations %}
{%- for item in recommendations %}
{{ item.url }} {{ item.image }}
{%- endfor %}"""


# -- the sample data, read with csv and json (independently of app/) -----------------------------------------


def read_catalog() -> dict[str, dict[str, str]]:
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8-sig") as fh:
        return {row["ITEM_ID"].strip(): row for row in csv.DictReader(fh)}


def read_batch() -> dict[str, list[str]]:
    with SAMPLE_BATCH.open(encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    return {line["input"]["userId"]: line["output"]["recommendedItems"] for line in lines}


CATALOG = read_catalog()
BATCH = read_batch()


def expected_rows(user_id: str, count: int) -> list[dict[str, str]]:
    """The user's batch items the catalog knows, in order."""
    return [CATALOG[i] for i in BATCH[user_id] if i in CATALOG][:count]


def price_text(row: dict[str, str]) -> str:
    """How Liquid renders the JSON number the service sends for a catalog price (159.00 -> 159.0)."""
    return str(float(row["PRICE"]))


def item_lines(user_id: str, count: int, url_suffix: str = "") -> list[str]:
    return [f"{r['NAME']} | {price_text(r)} | {r['URL']}{url_suffix} | {r['IMAGE_URL']}"
            for r in expected_rows(user_id, count)]


def body(template: str, server: Gunicorn, **replacements: str) -> str:
    source = template.replace("SERVICE", server.url)
    for name, value in replacements.items():
        source = source.replace(name, value)
    return source


def last_call(braze: BrazeEnvironment) -> ConnectedCall:
    assert braze.calls, "the body made no Connected Content call"
    return braze.calls[-1]


# -- fixtures -------------------------------------------------------------------------------------------------


def run_service(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: str) -> Iterator[Gunicorn]:
    """`gunicorn wsgi:app` on the sample batch output and catalog, file cache in tmp, no Personalize campaign."""
    tmp = tmp_path_factory.mktemp(name)
    settings: dict[str, str | None] = {f.name.upper(): None for f in fields(Settings)}  # nothing leaks in
    settings.update(
        AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME=None,
        CATALOG_URI="sample/catalog.csv",
        RECOMMENDATIONS_URI="sample/batch-output.json.out",
        CACHE_DIR=str(tmp / "cache"),
        DATA_DIR=str(tmp / "data"),
        WEB_CONCURRENCY=str(WORKERS),
        **overrides,
    )
    server = start_gunicorn(service_env("http://127.0.0.1:9", free_port(), **settings), tmp / "gunicorn.log")
    try:
        server.wait_ready(workers=WORKERS)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """The service as `make run` starts it: no API keys, no link tracking."""
    yield from run_service(tmp_path_factory, "open")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """The service with one API key and Braze link tracking (LINK_QUERY)."""
    yield from run_service(tmp_path_factory, "keyed", API_KEYS=API_KEY, LINK_QUERY=LINK_QUERY)


@pytest.fixture
def braze() -> BrazeEnvironment:
    """Braze's renderer with two stored Connected Content credentials."""
    return BrazeEnvironment(credentials={"recs_api": ("braze", API_KEY), "old_recs_api": ("braze", WRONG_KEY)})


# -- 1. the seed's Content Card --------------------------------------------------------------------------------


def test_seed_content_card_renders_the_users_first_recommendation(open_server: Gunicorn,
                                                                  braze: BrazeEnvironment) -> None:
    rendered = braze.render_message(body(SEED_CARD, open_server), user_id="user123")

    first = expected_rows("user123", 1)[0]
    assert rendered == (
        "\nThis seems like a great fit for you:\n"
        f"{first['NAME']}\n"
        f"{price_text(first)}\n"
        f"<a href=\"{first['URL']}\"><img src=\"{first['IMAGE_URL']}\"></a>\n"
    )
    call = last_call(braze)
    assert call.url == f"{open_server.url}/recommendations?user_id=user123"
    assert call.status == 200
    assert call.response_headers["X-Recommendations-Source"] == "batch"
    assert [item["id"] for item in call.value] == [r["ITEM_ID"] for r in expected_rows("user123", DEFAULT_NUM_RESULTS)]
    for name, value in BRAZE_HEADERS.items():
        assert call.sent_headers[name] == value


def test_array_answers_get_no_http_status_code(open_server: Gunicorn, braze: BrazeEnvironment) -> None:
    """Braze adds __http_status_code__ to JSON objects only: the default array contract cannot be guarded by it."""
    source = body(SEED_CARD, open_server) + "[{{ recommendations.__http_status_code__ }}]"

    rendered = braze.render_message(source, user_id="user123")

    assert rendered.endswith("[]")
    assert isinstance(last_call(braze).value, list)


# -- 2. a loop over three items, for users whose ids need escaping ---------------------------------------------


@pytest.mark.parametrize("user_id", ["user123", *AWKWARD_USERS])
def test_item_loop_renders_that_users_items(open_server: Gunicorn, braze: BrazeEnvironment, user_id: str) -> None:
    rendered = braze.render_message(body(ITEM_LOOP, open_server), user_id=user_id)

    assert rendered.strip().splitlines() == item_lines(user_id, 3)
    call = last_call(braze)
    escaped = AWKWARD_USERS.get(user_id, user_id)
    assert call.url == f"{open_server.url}/recommendations?user_id={escaped}&num_results=3"
    assert call.status == 200
    assert "X-Backfilled" not in call.response_headers  # the user's own batch line, not popular items


def test_without_url_param_escape_a_plus_arrives_as_a_space(open_server: Gunicorn, braze: BrazeEnvironment) -> None:
    """Why the bodies escape: Braze does not encode URLs, so `vip+1@...` reaches the service as `vip 1@...`."""
    unescaped = ITEM_LOOP.replace("{{ user_id | url_param_escape }}", "{{ user_id }}")

    rendered = braze.render_message(body(unescaped, open_server), user_id="vip+1@example.com")

    assert rendered.strip().splitlines() != item_lines("vip+1@example.com", 3)
    assert last_call(braze).response_headers.get("X-Backfilled") == "3"  # an unknown user: popular items


# -- 3. API keys: :basic_auth and :headers ---------------------------------------------------------------------


@pytest.mark.parametrize("auth", [":basic_auth recs_api", f':headers {{"X-API-Key": "{API_KEY}"}}'],
                         ids=["basic_auth", "headers"])
def test_a_valid_key_renders_the_items(keyed_server: Gunicorn, braze: BrazeEnvironment, auth: str) -> None:
    rendered = braze.render_message(body(GUARDED_LOOP, keyed_server, AUTH=auth), user_id="Ana María")

    assert rendered.strip().splitlines() == item_lines("Ana María", 3, NO_CAMPAIGN_SUFFIX)
    assert last_call(braze).status == 200


@pytest.mark.parametrize("auth", [":basic_auth old_recs_api", f':headers {{"X-API-Key": "{WRONG_KEY}"}}', ""],
                         ids=["wrong_basic_auth", "wrong_header", "no_key"])
def test_a_refused_call_saves_the_401_object_and_the_guard_aborts(keyed_server: Gunicorn, braze: BrazeEnvironment,
                                                                  auth: str) -> None:
    with pytest.raises(MessageAborted) as aborted:
        braze.render_message(body(GUARDED_LOOP, keyed_server, AUTH=auth), user_id="user123")

    assert aborted.value.reason == "recommendations unavailable"
    call = last_call(braze)
    assert call.status == 401
    assert call.value["error"]["code"] == "unauthorized"
    assert call.value["error"]["status"] == 401
    assert STATUS_KEY not in call.value  # only 2xx JSON objects get it
    if auth.startswith(":basic_auth"):
        assert call.sent_headers["Authorization"].startswith("Basic ")


def test_without_the_guard_a_refused_call_renders_an_empty_block(keyed_server: Gunicorn,
                                                                 braze: BrazeEnvironment) -> None:
    """What the guard prevents: the loop walks the error object (one key), so the message goes out with blanks."""
    unguarded = body(ITEM_LOOP, keyed_server).replace(":save", ":basic_auth old_recs_api :save")
    source = unguarded + "\n[{{ recommendations[0].name }}]"

    rendered = braze.render_message(source, user_id="user123")

    assert rendered.split() == ["|", "|", "|", "[]"]


# -- 4. format=object and the __http_status_code__ abort pattern -----------------------------------------------


def test_object_format_renders_for_a_known_user(open_server: Gunicorn, braze: BrazeEnvironment) -> None:
    rendered = braze.render_message(body(OBJECT_GUARD, open_server), user_id="jane.doe@example.com", n=3)

    assert rendered.strip().splitlines() == item_lines("jane.doe@example.com", 3)
    value = last_call(braze).value
    assert value[STATUS_KEY] == 200
    assert value["source"] == "batch"


@pytest.mark.parametrize(("user_id", "n"), [("user123", "0"), ("user123", "101"), ("user123", "three"), ("", "3")],
                         ids=["num_results_0", "num_results_101", "num_results_text", "empty_user_id"])
def test_object_format_error_aborts_the_message(open_server: Gunicorn, braze: BrazeEnvironment,
                                                user_id: str, n: str) -> None:
    with pytest.raises(MessageAborted) as aborted:
        braze.render_message(body(OBJECT_GUARD, open_server), user_id=user_id, n=n)

    assert aborted.value.reason == "no recs"
    call = last_call(braze)
    assert call.status == 400
    assert call.value["error"]["code"] == "invalid_parameter"
    assert STATUS_KEY not in call.value


def test_object_format_refused_call_aborts(keyed_server: Gunicorn, braze: BrazeEnvironment) -> None:
    with pytest.raises(MessageAborted, match="no recs"):
        braze.render_message(body(OBJECT_GUARD, keyed_server), user_id="user123", n=3)
    assert last_call(braze).status == 401


# -- 5. link tracking -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("campaign", ["spring_sale", "Spring Sale & More", "Été 2025 🚀 #1", "a+b=c?d/e"])
def test_campaign_name_puts_utm_parameters_on_every_url(keyed_server: Gunicorn, braze: BrazeEnvironment,
                                                        campaign: str) -> None:
    source = body(TRACKED_LINKS, keyed_server, API_KEY=API_KEY)

    rendered = braze.render_message(source, user_id="🚀rocket-fan", campaign_name=campaign)

    lines = rendered.strip().splitlines()
    rows = expected_rows("🚀rocket-fan", 3)
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        url, image = line.split(" ")
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == row["URL"]
        assert not parts.fragment
        assert parse_qs(parts.query, strict_parsing=True) == {
            "utm_source": ["braze"], "utm_medium": ["email"], "utm_campaign": [campaign],
        }
        assert image == row["IMAGE_URL"]  # only links are tracked


# -- 6. fields= ------------------------------------------------------------------------------------------------


def test_fields_returns_only_the_chosen_keys(open_server: Gunicorn, braze: BrazeEnvironment) -> None:
    source = body(
        "{% connected_content SERVICE/recommendations?user_id={{ user_id | url_param_escape }}&num_results=3"
        "&fields=name,price :save recommendations %}"
        "{{ recommendations[0].name }}|{{ recommendations[0].price }}|{{ recommendations[0].url }}|"
        "{{ recommendations[0].image }}|{{ recommendations[0].id }}",
        open_server,
    )

    rendered = braze.render_message(source, user_id="vip+1@example.com")

    first = expected_rows("vip+1@example.com", 1)[0]
    assert rendered == f"{first['NAME']}|{price_text(first)}|||"
    value: list[dict[str, Any]] = last_call(braze).value
    assert [sorted(item) for item in value] == [["name", "price"]] * 3


# -- the Braze environment itself (no service) -----------------------------------------------------------------


def test_url_param_escape_encodes_all_but_unreserved_characters() -> None:
    assert url_param_escape("aZ09-._~ +@/?&=#%é🚀") == "aZ09-._~%20%2B%40%2F%3F%26%3D%23%25%C3%A9%F0%9F%9A%80"
    assert BrazeEnvironment().render_message("{{ missing | url_param_escape }}") == ""


@pytest.mark.parametrize(("source", "reason"), [
    ("before{% abort_message('stop here') %}after", "stop here"),
    ('{% abort_message("double") %}', "double"),
    ("{% abort_message() %}", ""),
    ("{% if true %}{% abort_message %}{% endif %}", ""),
    ("{{ 'as a filter' | abort_message }}", "as a filter"),
])
def test_abort_message_raises_message_aborted(source: str, reason: str) -> None:
    with pytest.raises(MessageAborted) as aborted:
        BrazeEnvironment().render_message(source)
    assert aborted.value.reason == reason


@pytest.mark.parametrize("source", [
    "{% connected_content http://127.0.0.1/x :save %}",
    "{% connected_content http://127.0.0.1/x :method post %}",
    "{% connected_content http://127.0.0.1/x :headers [1] %}",
    "{% connected_content :save x %}",
    "{% abort_message(reason) %}",
])
def test_malformed_tags_are_syntax_errors(source: str) -> None:
    with pytest.raises(LiquidSyntaxError):
        BrazeEnvironment().from_string(source)


def test_a_connection_error_saves_nothing() -> None:
    braze = BrazeEnvironment(timeout=0.5)
    source = f"{{% connected_content http://127.0.0.1:{free_port()}/x :save data %}}[{{{{ data }}}}]"

    assert braze.render_message(source) == "[]"
    assert braze.calls[-1].status is None and braze.calls[-1].error
