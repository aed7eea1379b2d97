"""GET /recommendations through `gunicorn wsgi:app` (3 workers), Redis, and the Personalize stand-in."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.e2e.conftest import CAMPAIGN_ARN, Gunicorn, get
from tests.standin.personalize import StandinHandle


def recommendations(server: Gunicorn, user_id: str, request_id: str | None = None, **params: Any) -> requests.Response:
    return get(server.url + "/recommendations", {"user_id": user_id, **params}, request_id)


def expected_items(catalog: dict[str, dict[str, str]], ids: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": catalog[i]["NAME"], "price": float(catalog[i]["PRICE"]), "url": catalog[i]["URL"]}
        for i in ids
    ]


def shown(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields the test checks against the catalog, prices as floats (159.00 may come back as 159.0)."""
    return [{"id": i["id"], "name": i["name"], "price": float(i["price"]), "url": i["url"]} for i in items]


def test_fifty_identical_requests_across_workers_make_one_personalize_call(server: Gunicorn,
                                                                           standin: StandinHandle) -> None:
    first = recommendations(server, "same-user", "req-00", num_results=5)
    assert first.status_code == 200, first.text
    assert first.headers["X-Cache"] == "MISS"

    ids = [f"req-{n:02d}" for n in range(1, 50)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rest = list(pool.map(lambda rid: recommendations(server, "same-user", rid, num_results=5), ids))

    assert [r.status_code for r in rest] == [200] * 49
    assert all(r.json() == first.json() for r in rest)
    assert {r.headers["X-Cache"] for r in rest} == {"HIT"}
    assert standin.calls()["total"] == 1
    # The cache is shared: workers other than the one that called Personalize answered HITs from Redis.
    served = server.served_by({"req-00", *ids})
    assert served.keys() == {"req-00", *ids}, f"access log lines missing:\n{server.output()[-3000:]}"
    assert set(served.values()) <= server.worker_pids()
    workers = set(served.values())
    extra = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        # The kernel hands connections to whichever worker accepts first; rarely one worker takes all 50.
        # Then send more of the same request until another worker has answered one (still no new call).
        while len(workers) < 2 and extra < 200:
            batch = [f"extra-{extra + n:03d}" for n in range(8)]
            extra += len(batch)
            more = list(pool.map(lambda rid: recommendations(server, "same-user", rid, num_results=5), batch))
            assert all(r.status_code == 200 and r.json() == first.json() for r in more)
            workers |= set(server.served_by(set(batch)).values())
    assert len(workers) > 1, f"one worker served all {50 + extra} requests"
    assert standin.calls()["total"] == 1


def test_concurrent_identical_requests_on_a_cold_cache_make_one_personalize_call(
    server: Gunicorn, standin: StandinHandle
) -> None:
    standin.set_fault("latency", latency_ms=300)  # long enough that the requests overlap the first call
    ids = [f"cold-{n:02d}" for n in range(50)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda rid: recommendations(server, "cold-user", rid, num_results=5), ids))

    assert [r.status_code for r in responses] == [200] * 50
    assert len({r.text for r in responses}) == 1
    assert standin.calls()["total"] == 1
    assert "X-Fallback-Reason" not in {h for r in responses for h in r.headers}
    assert len(server.served_by(set(ids))) == 50


def test_two_users_get_different_lists_in_personalize_order(server: Gunicorn, standin: StandinHandle,
                                                            catalog: dict[str, dict[str, str]]) -> None:
    alice = recommendations(server, "alice", num_results=6)
    bob = recommendations(server, "bob", num_results=6)

    assert alice.status_code == bob.status_code == 200
    assert [i["id"] for i in alice.json()] != [i["id"] for i in bob.json()]
    for response, user in ((alice, "alice"), (bob, "bob")):
        items = response.json()
        assert shown(items) == expected_items(catalog, standin.ranked(user, 6))
        assert [i["image"] for i in items] == [catalog[i["id"]]["IMAGE_URL"] for i in items]
        assert response.headers["X-Recommendations-Source"] == "personalize"
        assert response.headers["Content-Type"] == "application/json"
    assert standin.calls()["by_user"] == {"alice": 1, "bob": 1}
    assert standin.calls()["requests"][0] == {"campaignArn": CAMPAIGN_ARN, "userId": "alice", "numResults": 6}


def test_the_second_request_is_a_cache_hit(server: Gunicorn, standin: StandinHandle) -> None:
    first = recommendations(server, "carol", num_results=3)
    second = recommendations(server, "carol", num_results=3)

    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.json() == second.json()
    for response in (first, second):
        match = re.fullmatch(r"private, max-age=(\d+)", response.headers["Cache-Control"])
        assert match and 0 < int(match.group(1)) <= 300, response.headers["Cache-Control"]
    assert first.headers["X-Recommendation-Id"] == second.headers["X-Recommendation-Id"]
    assert first.headers["X-Recommendation-Id"].startswith("RID-")
    assert standin.calls()["total"] == 1


def test_a_different_num_results_is_a_different_cache_entry(server: Gunicorn, standin: StandinHandle) -> None:
    three = recommendations(server, "dave", num_results=3)
    five = recommendations(server, "dave", num_results=5)

    assert (three.headers["X-Cache"], five.headers["X-Cache"]) == ("MISS", "MISS")
    assert [i["id"] for i in five.json()] == standin.ranked("dave", 5)
    assert standin.calls()["total"] == 2


@pytest.mark.parametrize("user_id", ["Ana María", "vip+1@example.com", "🚀rocket-fan", "a b"])
def test_user_ids_reach_personalize_unchanged(server: Gunicorn, standin: StandinHandle, user_id: str) -> None:
    response = recommendations(server, user_id, num_results=4)

    assert response.status_code == 200, response.text
    assert standin.calls()["requests"][-1]["userId"] == user_id
    assert [i["id"] for i in response.json()] == standin.ranked(user_id, 4)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"user_id": "u1", "num_results": "0"}, "num_results"),
        ({"num_results": "3"}, "user_id"),
        ({"user_id": "u1", "num_results": "abc"}, "num_results"),
    ],
    ids=["num_results=0", "no-user_id", "num_results=abc"],
)
def test_bad_input_is_a_400_naming_the_parameter(server: Gunicorn, standin: StandinHandle,
                                                 params: dict[str, str], parameter: str) -> None:
    response = get(server.url + "/recommendations", params)

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and error["status"] == 400
    assert list(error["errors"]) == [parameter]
    assert parameter in error["message"]
    assert standin.calls()["total"] == 0


def popular_ids(catalog: dict[str, dict[str, str]]) -> list[str] | None:
    """The catalog's ids by POPULARITY_RANK (the service's fallback list), or None without that column."""
    ranked = [(float(row["POPULARITY_RANK"]), n, i) for n, (i, row) in enumerate(catalog.items())
              if (row.get("POPULARITY_RANK") or "").strip()]
    return [i for _, _, i in sorted(ranked)] or None


def assert_json_not_html(response: requests.Response) -> None:
    assert response.headers["Content-Type"] == "application/json"
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    response.json()


def test_personalize_not_found_serves_the_marked_fallback(server: Gunicorn, standin: StandinHandle,
                                                          catalog: dict[str, dict[str, str]]) -> None:
    """The campaign vanished: the sample catalog's popular items answer, marked so, and never kept."""
    popular = popular_ids(catalog)
    assert popular, "sample/catalog.csv has no POPULARITY_RANK column; the fallback test needs one"
    standin.set_fault("not_found")

    response = recommendations(server, "erin", num_results=4)

    assert_json_not_html(response)
    assert response.status_code == 200
    assert response.headers["X-Fallback-Reason"] == "recommender_not_found"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Recommendations-Source"] == "fallback"
    assert [i["id"] for i in response.json()] == popular[:4]
    assert standin.calls()["total"] == 1  # a 404 is not retried

    standin.reset()  # the fallback was not cached: Personalize is asked again once it is back
    again = recommendations(server, "erin", num_results=4)
    assert again.status_code == 200 and again.headers["X-Cache"] == "MISS"
    assert [i["id"] for i in again.json()] == standin.ranked("erin", 4)


def test_a_hanging_personalize_is_answered_within_brazes_two_seconds(server: Gunicorn, standin: StandinHandle,
                                                                     catalog: dict[str, dict[str, str]]) -> None:
    standin.set_fault("hang")

    response = recommendations(server, "frank", num_results=3)

    assert response.elapsed.total_seconds() < 2.0
    assert_json_not_html(response)
    assert response.status_code == 200
    assert response.headers["X-Fallback-Reason"] == "upstream_timeout"
    assert [i["id"] for i in response.json()] == (popular_ids(catalog) or [])[:3]


def test_unknown_routes_are_json_404s(server: Gunicorn) -> None:
    response = get(server.url + "/nope")

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["status"] == 404
