"""Shape the joined items for the caller: tracking query on links, chosen fields, array or object."""
from __future__ import annotations

import hashlib
import dataclasses
import time
from typing import Any
from urllib.parse import quote

import orjson

from app.catalog.items import Catalog, Item
from app.events.body import MAX_RECOMMENDATION_ID  # PutEvents' limit on the id a click names
from app.recommendations.query import Query
from app.recommendations.service import Result
from app.settings import ANSWER_PARAMETER, ITEM_PARAMETER


def tracking_id(result: Result, user_id: str | None) -> str:
    """Return the id a tracked link names its answer by: Personalize's recommendationId (kept by the cache),
    else one derived from the answer, the same for every render of it, so a click on a batch or fallback answer
    is told from one on a live answer and two renders of one answer name it alike.

    batch-<hash of the user and the batch line's ids>: stable for one batch output; a new batch job's line
    gives a new id. fallback-<hash of the ids served>: the popular list, the same for every user shown it.
    """
    if result.recommendation_id:
        return result.recommendation_id
    if result.source == "fallback":
        prefix, material = "fallback-", "\x1f".join(result.item_ids)
    else:  # only a batch output answers without an id (a stale copy of one included)
        prefix, material = "batch-", "\x1f".join((user_id or "", *result.answered))
    digest = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()
    return prefix + digest[:MAX_RECOMMENDATION_ID - len(prefix)]


class Presenter:
    """Turn a Result into the response body a Braze template reads."""

    def __init__(self, link_query: str | None, link_tracking: bool = False) -> None:
        # LINK_QUERY as (name, value template) pairs, kept as written (already URL-encoded by its author).
        self.link_pairs = [pair.partition("=")[::2] for pair in (link_query or "").split("&") if pair]
        self.link_tracking = link_tracking

    def render(self, result: Result, query: Query) -> bytes:
        """Return the JSON body: the bare array (the default contract) or {items, recommendation_id, source}."""
        if self.link_pairs or self.link_tracking or query.fields is not None:
            items = self._shaped(result, query)
            if query.format == "object":
                return orjson.dumps({"items": items, "recommendation_id": result.recommendation_id,
                                     "source": result.source})
            return orjson.dumps(items)
        # The common case: the catalog's JSON for each item, joined; nothing is serialised per item.
        array = result.catalog.render(result.item_ids)
        if query.format == "object":
            return (b'{"items":' + array + b',"recommendation_id":' + orjson.dumps(result.recommendation_id)
                    + b',"source":' + orjson.dumps(result.source) + b"}")
        return array

    def _shaped(self, result: Result, query: Query) -> list[Item]:
        items = result.items
        if self.link_tracking:  # per item: the answer's own id, so the body is right for this answer only
            suffix = self.link_suffix(query.link_values)
            answer = f"{ANSWER_PARAMETER}={quote(tracking_id(result, query.user_id), safe='')}"
            items = [with_query(item, "&".join(filter(None, (
                suffix, f"{ITEM_PARAMETER}={quote(item['id'], safe='')}", answer)))) for item in items]
        elif self.link_pairs:
            suffix = self.link_suffix(query.link_values)
            items = [with_query(item, suffix) for item in items]
        if query.fields is not None:
            items = [{name: item.get(name) for name in query.fields} for item in items]
        return items

    def link_suffix(self, values: dict[str, str]) -> str:
        """Fill LINK_QUERY's placeholders with the request's values; a pair whose placeholders are empty is left out."""
        encoded = {name: quote(value, safe="") for name, value in values.items()}
        pairs = []
        for name, template in self.link_pairs:
            value = template.format(**encoded)
            if value or template == value:
                pairs.append(f"{name}={value}")
        return "&".join(pairs)


def with_query(item: Item, suffix: str) -> Item:
    """Return a copy of the item whose url carries the tracking query (before any #fragment)."""
    url = item.get("url") or ""
    if not url or not suffix:
        return item
    base, hash_mark, fragment = url.partition("#")
    separator = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        separator = ""
    return {**item, "url": f"{base}{separator}{suffix}{hash_mark}{fragment}"}


class RenderedAnswers:
    """The response bodies of the last few seconds, by normalised query, so a repeat is not rendered again.

    Braze renders one recipient's message several times within seconds (HTML, plain text, AMP, retries):
    the repeats are answered from the bytes the first one rendered, as cache hits. Kept: a source's fresh
    answer only (never a fallback, which is asked again), for at most `seconds` (CACHE_LOCAL_SECONDS) and
    never past the answer's freshness, and only while the catalog it was joined with is still the one served;
    at most `items` (CACHE_LOCAL_ITEMS) bodies, all dropped when full (cheaper than LRU bookkeeping, and
    thread-safe under the GIL, like QueryParser's recent queries). seconds or items 0: off.
    """

    def __init__(self, seconds: float, items: int) -> None:
        self.seconds = seconds if items > 0 else 0
        self.items = items
        self._bodies: dict[tuple[Any, ...], tuple[float, Result, bytes]] = {}

    def get(self, query: Query, catalog: Catalog) -> tuple[Result, bytes] | None:
        """Return the result (as a hit, its max-age counted down) and body rendered for this query, or None."""
        if not self.seconds:
            return None
        entry = self._bodies.get(_key(query))
        if entry is None:
            return None
        fresh_until, result, body = entry
        max_age = int(fresh_until - time.time())
        if max_age < 1 or result.catalog is not catalog:
            return None
        return dataclasses.replace(result, cache="HIT", max_age=max_age), body

    def put(self, query: Query, result: Result, body: bytes) -> None:
        """Keep the body of a source's fresh answer (anything else is not kept)."""
        if not self.seconds or result.fallback_reason is not None or result.max_age < 1:
            return
        if len(self._bodies) >= self.items:
            self._bodies.clear()
        now = time.time()
        self._bodies[_key(query)] = (min(now + self.seconds, now + result.max_age), result, body)


def _key(query: Query) -> tuple[Any, ...]:
    """Return what makes a default-source body differ: the query's fields (a Query holds a dict, so no hash)."""
    return (query.user_id, query.num_results, query.options, query.format, query.fields,
            tuple(query.link_values.items()))
