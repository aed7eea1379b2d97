"""Amazon Pinpoint's recommendation transformer contract, served from this project's catalog.

`lambda_handler` is a drop-in AWS Lambda for a Pinpoint recommender model (see the README's "Moving from
Amazon Pinpoint"): for each endpoint it adds a `Recommendations` object whose attributes hold one string
per item of `RecommendationItems`, in that order, and changes nothing else. The service uses the same
`recommendation_attributes` for `format=attributes`.

Lambda environment: CATALOG_URI (as for the service), RECOMMENDATION_ATTRIBUTES (the attribute names,
comma-separated, e.g. Title,Genre), optionally CATALOG_REFRESH_SECONDS and IMAGE_BASE_URL.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from app.aws import AwsClients
from app.catalog.files import Reloadable, open_file
from app.catalog.items import ALIASES, Catalog, parse_catalog
from app.pinpoint.configs import ATTRIBUTE_NAME, MAX_ATTRIBUTES
from app.settings import ConfigError

log = logging.getLogger(__name__)

MAX_ENDPOINTS = 50  # Pinpoint sends at most 50 endpoints per invocation

Attributes = dict[str, list[str]]


def catalog_field(attribute: str) -> str:
    """Return the item field an attribute reads: its own name in lower case, or the field it is an alias of."""
    name = attribute.lower()
    return next((field for field, aliases in ALIASES.items() if name == field or name in aliases), name)


def recommendation_attributes(item_ids: Sequence[str], catalog: Catalog, attributes: Iterable[str]) -> Attributes:
    """Return {attribute: [one string per item id, in order]} from the catalog.

    An item the catalog lacks, or a field it has no value for, gives "" so every list stays aligned
    with RecommendationItems (attribute[i] always describes item i).
    """
    items, known = catalog.items, catalog.encoded
    rows = [items[i] if i in known else {} for i in item_ids]
    result: Attributes = {}
    for attribute in attributes:
        field = catalog_field(attribute)
        result[attribute] = ["" if row.get(field) is None else str(row[field]) for row in rows]
    return result


def add_recommendations(event: Mapping[str, Any], catalog: Catalog, attributes: Sequence[str]) -> dict[str, Any]:
    """Return the event's endpoints, each with a Recommendations object added and nothing else changed.

    Pinpoint's contract is at most 50 endpoints, each an object with 1-5 string item ids. What breaks it is
    tolerated, with one WARNING line per invocation saying what and how many, rather than failing the whole
    invocation (every recipient of the batch): endpoints past the 50th and endpoints that are not objects are
    returned as they came, without Recommendations; an integer item id is read as its string; an item id of
    any other type keeps its place as empty strings, like an item the catalog lacks.
    """
    endpoints = event.get("Endpoints") if isinstance(event, Mapping) else None
    if not isinstance(endpoints, Mapping):
        raise ValueError('Not a Pinpoint recommender event: it needs "Endpoints", an object of endpoint id -> '
                         f'endpoint; got keys {sorted(event) if isinstance(event, Mapping) else type(event).__name__}.')
    if len(endpoints) > MAX_ENDPOINTS:
        log.warning("Pinpoint sends at most %d endpoints per invocation, got %d: the %d after the first %d are "
                    "returned without Recommendations.", MAX_ENDPOINTS, len(endpoints),
                    len(endpoints) - MAX_ENDPOINTS, MAX_ENDPOINTS)
    # A new dict per endpoint (the input is never modified); the other fields are the very same objects.
    result: dict[str, Any] = dict(endpoints)
    not_objects, odd_ids, missing = 0, 0, []
    for endpoint_id, endpoint in itertools.islice(endpoints.items(), MAX_ENDPOINTS):
        if not isinstance(endpoint, Mapping):
            not_objects += 1
            continue
        item_ids, odd = _item_ids(endpoint.get("RecommendationItems"))
        odd_ids += odd
        missing += [i for i in item_ids if i and i not in catalog.encoded]
        result[endpoint_id] = {**endpoint, "Recommendations": recommendation_attributes(item_ids, catalog,
                                                                                        attributes)}
    if not_objects:
        log.warning("%d endpoint(s) are not JSON objects: returned as they came, without Recommendations.",
                    not_objects)
    if odd_ids:
        log.warning("%d RecommendationItems value(s) are neither a string nor an integer item id (or not a list): "
                    "given as empty strings.", odd_ids)
    if missing:
        log.warning("%d recommended item(s) not in the catalog, given as empty strings: %s",
                    len(missing), ", ".join(missing[:20]))
    return result


def _item_ids(value: Any) -> tuple[list[str], int]:
    """Return RecommendationItems as strings (an integer id as its digits) and how many entries were unusable.

    An unusable entry becomes "", which no catalog has, so every attribute list stays aligned with the items.
    """
    if value is None:
        return [], 0
    if not isinstance(value, list):
        return [], 1
    ids, odd = [], 0
    for item in value:
        if isinstance(item, str):
            ids.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            ids.append(str(item))
        else:
            ids.append("")
            odd += 1
    return ids, odd


def attribute_names(raw: str | None) -> tuple[str, ...]:
    """Parse RECOMMENDATION_ATTRIBUTES, 1-10 names by Pinpoint's rules."""
    names = tuple(dict.fromkeys(n.strip() for n in (raw or "").split(",") if n.strip()))
    bad = [n for n in names if not ATTRIBUTE_NAME.fullmatch(n)]
    if not 1 <= len(names) <= MAX_ATTRIBUTES or bad:
        raise ConfigError("RECOMMENDATION_ATTRIBUTES must name 1-10 attributes, comma-separated, each starting with "
                          "a letter or number (letters, numbers, _ and -, up to 50), e.g. Title,Genre"
                          + (f"; not valid: {', '.join(bad)}." if bad else "."))
    return names


def handler_from_env(environ: Mapping[str, str]) -> Callable[[Mapping[str, Any], Any], dict[str, Any]]:
    """Build a Lambda handler from environment variables; the catalog loads on the first invocation."""
    attributes = attribute_names(environ.get("RECOMMENDATION_ATTRIBUTES"))
    uri = (environ.get("CATALOG_URI") or "").strip()
    if not uri:
        raise ConfigError("CATALOG_URI is not set: point it at the item catalog (a path, s3:// or https:// URL).")
    standard = {name for aliases in ALIASES.values() for name in aliases} | set(ALIASES)
    extra = tuple(dict.fromkeys(a.lower() for a in attributes if a.lower() not in standard))
    # Pinpoint asks for attributes, not links: an item without a url or a name still has the others.
    parse = functools.partial(parse_catalog, extra_fields=extra, image_base_url=environ.get("IMAGE_BASE_URL"),
                              required=())
    source = open_file(uri, _s3_client)
    catalog = Reloadable(source, parse, float(environ.get("CATALOG_REFRESH_SECONDS") or 300), "catalog")

    def handle(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        return add_recommendations(event, catalog.get(), attributes)

    return handle


@functools.cache
def _s3_client() -> Any:
    return AwsClients(os.environ.get("AWS_REGION") or None).s3()


@functools.cache
def _handler() -> Callable[[Mapping[str, Any], Any], dict[str, Any]]:
    # Built on the first invocation and kept while Lambda keeps the execution environment warm.
    return handler_from_env(os.environ)


def lambda_handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Add the configured Recommendations attributes to each endpoint of a Pinpoint event (at most 50)."""
    return _handler()(event, context)
