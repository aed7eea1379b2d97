"""Braze Currents files, and the Personalize events their records become.

Braze writes one Avro file per event type and hour under
`<prefix>/dataexport.<cluster>.S3.integration.<id>/event_type=<type>/date=<YYYY-MM-DD-HH>/…avro`, delivers at
least once, and gives every event a unique `id` (its eventId here) and `time` in epoch seconds (its sentAt).
Records are read by field name, one at a time (fastavro), so a file's size never decides memory.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import fastavro
import orjson

from app.events.putevents import Event

TRACKED_ITEM, TRACKED_RID = "recs_item", "recs_rid"  # the query parameters LINK_TRACKING adds to item urls
MAX_ID = 256  # PutEvents' limit on user, session, item and event ids
MAX_RECOMMENDATION_ID = 40  # and on recommendationId: a longer recs_rid is not Personalize's, so it is left out
EVENT_TYPE_IN_PATH = re.compile(r"(?:^|/)event_type=([^/]+)/")
SCHEMA_NAME = re.compile(r"(users\..+)$")  # dataexport.S3.inner.users.messages.email.Click
# Why a record is not sent, as the summary names it.
BOT, NO_ITEM, NO_USER, INVALID = "suspected bot click", "no item", "no user id", "too long for PutEvents"


class CurrentsError(Exception):
    """A Currents folder or file cannot be listed or read; the message says which and why."""


@dataclass(frozen=True)
class CurrentsFile:
    """One Avro file: where it is, its size, and the event type its folder names (None: read from its schema)."""

    uri: str
    size: int
    event_type: str | None

    @property
    def key(self) -> str:
        """Return what the ledger remembers it by: a file written again with other content is read again."""
        return f"{self.uri} {self.size}"


def list_files(uri: str, s3: Callable[[], Any]) -> list[CurrentsFile]:
    """Return every .avro file under a folder or an s3://bucket/prefix/, recursively, in path order."""
    if uri.startswith("s3://"):
        return _s3_files(uri, s3)
    path = unquote(urlsplit(uri).path) if uri.startswith("file://") else uri
    if os.path.isfile(path):
        found = [path]
    elif os.path.isdir(path):
        found = [os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                 if name.endswith(".avro")]
    else:
        raise CurrentsError(f"{uri}: no such folder or file.")
    return sorted((CurrentsFile(p, os.path.getsize(p), _type_in_path(p)) for p in found), key=lambda f: f.uri)


def _s3_files(uri: str, s3: Callable[[], Any]) -> list[CurrentsFile]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise CurrentsError(f"{uri}: an S3 location names a bucket, s3://bucket/prefix/.")
    files = []
    try:
        for page in s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                if entry["Key"].endswith(".avro"):
                    files.append(CurrentsFile(f"s3://{bucket}/{entry['Key']}", int(entry["Size"]),
                                              _type_in_path(entry["Key"])))
    except (BotoCoreError, ClientError) as exc:
        raise CurrentsError(f"{uri}: S3 could not list it ({exc}).") from exc
    return sorted(files, key=lambda f: f.uri)


def _type_in_path(path: str) -> str | None:
    match = EVENT_TYPE_IN_PATH.search(path.replace(os.sep, "/"))
    return match.group(1) if match else None


@contextmanager
def opened(file: CurrentsFile, s3: Callable[[], Any]) -> Iterator[IO[bytes]]:
    """Open a Currents file for streaming: a local file, or the body of an S3 GET."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if file.uri.startswith("s3://"):
            bucket, _, key = file.uri[len("s3://"):].partition("/")
            body = s3().get_object(Bucket=bucket, Key=key)["Body"]
            try:
                yield body
            finally:
                body.close()
        else:
            with open(file.uri, "rb") as handle:
                yield handle
    except (OSError, BotoCoreError, ClientError) as exc:
        raise CurrentsError(f"{file.uri}: cannot be read ({exc}).") from exc


def count_records(file: CurrentsFile, s3: Callable[[], Any]) -> int:
    """Return how many records the file holds, from its blocks' headers (no record is decoded)."""
    with opened(file, s3) as handle:
        try:
            return sum(block.num_records for block in fastavro.block_reader(handle))
        except (ValueError, EOFError, StopIteration) as exc:  # fastavro's errors for a file that is not Avro
            raise CurrentsError(f"{file.uri}: not an Avro file ({exc}).") from exc


def records(file: CurrentsFile, s3: Callable[[], Any]) -> Iterator[tuple[str | None, Mapping[str, Any]]]:
    """Yield (event type, record) for each record, the type from the folder name or else the file's schema."""
    with opened(file, s3) as handle:
        try:
            reader = fastavro.reader(handle)
            event_type = file.event_type
            if event_type is None and (match := SCHEMA_NAME.search(str(reader.writer_schema.get("name", "")))):
                event_type = match.group(1)
            for record in reader:
                yield event_type, record
        except (ValueError, EOFError, StopIteration) as exc:
            raise CurrentsError(f"{file.uri}: not an Avro file, or cut short ({exc}).") from exc


def page_of(url: str) -> str:
    """Return the url as a catalog page is compared: scheme and host lower case, no query, no fragment."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/') or '/'}"


def pages_of(encoded_items: Mapping[str, bytes]) -> dict[str, str]:
    """Return {page url: item id} for a catalog's items (the first item wins when two share a page)."""
    pages: dict[str, str] = {}
    for item_id, encoded in encoded_items.items():
        url = orjson.loads(encoded).get("url")
        if isinstance(url, str) and url:
            pages.setdefault(page_of(url), item_id)
    return pages


class Translator:
    """Turn a Currents record into a Personalize Event, or say why it is not sent.

    event_types: Currents type -> Personalize eventType (CURRENTS_EVENT_TYPES); a type not in it is unmapped.
    catalog_pages: returns {page url: item id}, asked only the first time a clicked url carries no recs_item.
    """

    def __init__(self, event_types: Mapping[str, str], catalog_pages: Callable[[], Mapping[str, str]]) -> None:
        self.event_types = event_types
        self._catalog_pages = catalog_pages
        self._pages: Mapping[str, str] | None = None

    def event(self, event_type: str, record: Mapping[str, Any]) -> Event | str:
        """Return the record's Event, or the reason it is skipped (BOT, NO_ITEM, NO_USER, INVALID)."""
        user_id = record.get("external_user_id") or record.get("user_id")
        if not user_id:
            return NO_USER
        if record.get("is_suspected_bot_click"):
            return BOT
        item_id, recommendation_id = None, None
        if "url" in record:  # a click on a link: the item is the link's
            item_id, recommendation_id = self.item_of(record.get("url") or "")
            if item_id is None:
                return NO_ITEM
        elif record.get("product_id"):
            item_id = str(record["product_id"])
        if recommendation_id is not None and len(recommendation_id) > MAX_RECOMMENDATION_ID:
            recommendation_id = None
        price = record.get("price")
        # One email send (dispatch_id), else one message (send_id), else the user: what Personalize groups.
        session_id = record.get("dispatch_id") or record.get("send_id") or user_id
        event_id = str(record["id"])
        if any(value is not None and len(value) > MAX_ID
               for value in (user_id, session_id, item_id, event_id)):
            return INVALID
        return Event(user_id=user_id, session_id=session_id, event_type=self.event_types[event_type],
                     sent_at=record["time"], event_id=event_id, item_id=item_id,
                     # Avro's float has 7 significant digits: 19.99, not 19.989999771118164
                     event_value=None if price is None else float(f"{price:.7g}"), recommendation_id=recommendation_id)

    def item_of(self, url: str) -> tuple[str | None, str | None]:
        """Return (item id, recommendationId) of a clicked url: its recs_item, else the catalog page it is."""
        query = dict(parse_qsl(url.partition("?")[2].partition("#")[0])) if TRACKED_ITEM in url else {}
        if query.get(TRACKED_ITEM):
            return query[TRACKED_ITEM], query.get(TRACKED_RID) or None
        if not url:
            return None, None
        if self._pages is None:
            self._pages = self._catalog_pages()
        return self._pages.get(page_of(url)), None
