"""app.pinpoint.lambda_handler (app/pinpoint/handler.py): the seed's example event in, the seed's expected endpoints out."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.pinpoint import handler as pinpoint
from app.settings import ConfigError

# The seed's input event (pinpoint-lambda-transformer.txt), as Pinpoint sends it; note "LastName " with a space.
SEED_EVENT = json.loads("""{"Endpoints": { "endpointIDexample-1":{ "ChannelType":"EMAIL",
"Address":"sofiam@example.com", "EndpointStatus":"ACTIVE", "OptOut":"NONE",
"EffectiveDate":"2020-02-26T18:56:24.875Z", "Attributes":{ "AddressType":[ "primary" ] }, "User":{
"UserId":"SofiaMartínez", "UserAttributes":{ "LastName":[ "Martínez" ], "FirstName":[ "Sofia" ], "Neighborhood":[
"East Bay" ] } }, "RecommendationItems":[ "1815", "2009", "1527" ], "CreationDate":"2020-02-26T18:56:24.875Z" },
"endpointIDexample-2":{ "ChannelType":"EMAIL", "Address":"alejandror@example.com", "EndpointStatus":"ACTIVE",
"OptOut":"NONE", "EffectiveDate":"2020-02-26T18:56:24.897Z", "Attributes":{ "AddressType":[ "primary" ] }, "User":{
"UserId":"AlejandroRosalez", "UserAttributes":{ "LastName ":[ "Rosalez" ], "FirstName":[ "Alejandro" ],
"Neighborhood":[ "West Bay" ] } }, "RecommendationItems":[ "1210", "6542", "4582" ],
"CreationDate":"2020-02-26T18:56:24.897Z" } }}""")

# The seed's expected Recommendations for each endpoint.
SEED_EXPECTED = {
    "endpointIDexample-1": {"Title": ["Fleabag", "Late Night", "Catastrophe"], "Genre": ["Comedy", "Comedy", "Comedy"]},
    "endpointIDexample-2": {"Title": ["Hanna", "Hunters", "Agatha Christie's The ABC Murders"],
                            "Genre": ["Action", "Drama", "Crime"]},
}

# The seed's expected output gives "Late Night" (2009) the genre Comedy while its handler's table says Drama.
# The values come from the catalog, so this catalog follows the expected output; CATALOG_BY_TABLE follows
# the table, and test_values_come_from_the_catalog shows the difference lands where it should.
CATALOG = """ITEM_ID,TITLE,GENRE
1210,Hanna,Action
1527,Catastrophe,Comedy
1815,Fleabag,Comedy
2009,Late Night,Comedy
4582,Agatha Christie's The ABC Murders,Crime
6542,Hunters,Drama
9999,Not Recommended,Documentary
"""
CATALOG_BY_TABLE = CATALOG.replace("2009,Late Night,Comedy", "2009,Late Night,Drama")


@pytest.fixture
def handler_for(tmp_path: Path) -> Callable[..., Callable[[Any, Any], dict[str, Any]]]:
    def build(catalog: str = CATALOG, attributes: str = "Title,Genre") -> Callable[[Any, Any], dict[str, Any]]:
        path = tmp_path / "catalog.csv"
        path.write_text(catalog, encoding="utf-8")
        return pinpoint.handler_from_env({"CATALOG_URI": str(path), "RECOMMENDATION_ATTRIBUTES": attributes})

    return build


@pytest.fixture
def env_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG, encoding="utf-8")
    monkeypatch.setenv("CATALOG_URI", str(path))
    monkeypatch.setenv("RECOMMENDATION_ATTRIBUTES", "Title,Genre")
    pinpoint._handler.cache_clear()
    yield
    pinpoint._handler.cache_clear()


def without_recommendations(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in endpoint.items() if key != "Recommendations"}


def test_the_seed_event_gives_the_seed_output(env_handler: None) -> None:
    event = copy.deepcopy(SEED_EVENT)
    output = pinpoint.lambda_handler(event, None)

    assert list(output) == list(SEED_EVENT["Endpoints"])
    for endpoint_id, endpoint in output.items():
        assert endpoint["Recommendations"] == SEED_EXPECTED[endpoint_id]
        original = SEED_EVENT["Endpoints"][endpoint_id]
        # Every other field byte for byte, in the same order; Recommendations is the only addition, at the end.
        assert json.dumps(without_recommendations(endpoint), ensure_ascii=False) == \
            json.dumps(original, ensure_ascii=False)
        assert list(endpoint) == [*original, "Recommendations"]
    assert event == SEED_EVENT  # the input was not modified


def test_the_output_is_what_pinpoint_expects_back_as_json(env_handler: None) -> None:
    output = json.loads(json.dumps(pinpoint.lambda_handler(SEED_EVENT, None)))
    assert output["endpointIDexample-2"]["Recommendations"]["Title"][2] == "Agatha Christie's The ABC Murders"
    assert output["endpointIDexample-1"]["User"]["UserId"] == "SofiaMartínez"


def test_values_come_from_the_catalog(handler_for: Callable[..., Any]) -> None:
    output = handler_for(CATALOG_BY_TABLE)(SEED_EVENT, None)
    assert output["endpointIDexample-1"]["Recommendations"]["Genre"] == ["Comedy", "Drama", "Comedy"]


def test_attributes_are_the_configured_ones_in_their_order(handler_for: Callable[..., Any]) -> None:
    output = handler_for(attributes="Genre")(SEED_EVENT, None)
    assert output["endpointIDexample-2"]["Recommendations"] == {"Genre": ["Action", "Drama", "Crime"]}


def test_an_item_the_catalog_lacks_keeps_its_place_as_an_empty_string(handler_for: Callable[..., Any]) -> None:
    event = {"Endpoints": {"e1": {"RecommendationItems": ["1815", "404", "1527"]}, "e2": {"ChannelType": "SMS"}}}
    output = handler_for()(event, None)
    assert output["e1"]["Recommendations"] == {"Title": ["Fleabag", "", "Catastrophe"],
                                               "Genre": ["Comedy", "", "Comedy"]}
    assert output["e2"] == {"ChannelType": "SMS", "Recommendations": {"Title": [], "Genre": []}}


def test_past_fifty_endpoints_the_rest_come_back_as_they_came(handler_for: Callable[..., Any],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    handler = handler_for()
    event = {"Endpoints": {f"e{i}": {"RecommendationItems": ["1210"]} for i in range(51)}}
    output = handler(event, None)  # Pinpoint never sends 51; whoever did still gets the first 50 answered
    assert list(output) == [f"e{i}" for i in range(51)]
    assert all(output[f"e{i}"]["Recommendations"] == {"Title": ["Hanna"], "Genre": ["Action"]} for i in range(50))
    assert output["e50"] == {"RecommendationItems": ["1210"]}
    assert "got 51: the 1 after the first 50 are returned without Recommendations" in caplog.text


def test_an_endpoint_that_is_not_an_object_is_left_as_it_is(handler_for: Callable[..., Any],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    event = {"Endpoints": {"e1": "not an endpoint", "e2": None, "e3": {"RecommendationItems": ["1815"]}}}
    output = handler_for()(event, None)
    assert output == {"e1": "not an endpoint", "e2": None,
                      "e3": {"RecommendationItems": ["1815"], "Recommendations": {"Title": ["Fleabag"],
                                                                                  "Genre": ["Comedy"]}}}
    assert "2 endpoint(s) are not JSON objects" in caplog.text


def test_integer_item_ids_are_read_as_strings(handler_for: Callable[..., Any]) -> None:
    event = {"Endpoints": {"e1": {"RecommendationItems": [1815, "2009", 404]}}}
    output = handler_for()(event, None)
    assert output["e1"]["Recommendations"] == {"Title": ["Fleabag", "Late Night", ""], "Genre": ["Comedy", "Comedy", ""]}
    assert output["e1"]["RecommendationItems"] == [1815, "2009", 404]  # the event's own fields stay as they came


@pytest.mark.parametrize(("items", "titles"), [([None, "1815", 1.5, True, {"id": "1"}], ["", "Fleabag", "", "", ""]),
                                               ("1815", []), ({"1815": 1}, [])])
def test_other_item_ids_keep_their_place_as_empty_strings(handler_for: Callable[..., Any],
                                                          caplog: pytest.LogCaptureFixture, items: Any,
                                                          titles: list[str]) -> None:
    output = handler_for()({"Endpoints": {"e1": {"RecommendationItems": items}}}, None)
    assert output["e1"]["Recommendations"]["Title"] == titles
    assert "neither a string nor an integer item id" in caplog.text


@pytest.mark.parametrize("event", [{}, {"Endpoints": []}, {"Endpoints": None}, []])
def test_an_event_without_endpoints_is_refused_with_a_sentence(handler_for: Callable[..., Any], event: Any) -> None:
    with pytest.raises(ValueError, match='needs "Endpoints"'):
        handler_for()(event, None)


@pytest.mark.parametrize("attributes", ["", ",".join(f"A{i}" for i in range(11)), "Title,_bad"])
def test_recommendation_attributes_setting_is_checked(handler_for: Callable[..., Any], attributes: str) -> None:
    with pytest.raises(ConfigError, match="RECOMMENDATION_ATTRIBUTES"):
        handler_for(attributes=attributes)


def test_catalog_uri_is_required() -> None:
    with pytest.raises(ConfigError, match="CATALOG_URI"):
        pinpoint.handler_from_env({"RECOMMENDATION_ATTRIBUTES": "Title"})


def test_the_lambda_handler_keeps_its_documented_name() -> None:
    """Deployed functions name `app.pinpoint.lambda_handler` (README): the package layout must keep it."""
    import importlib

    assert importlib.import_module("app.pinpoint").lambda_handler is pinpoint.lambda_handler
