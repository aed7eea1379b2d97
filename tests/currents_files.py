"""Write Braze Currents Avro files the way Braze lays them out, with Braze's own v10 writer schemas.

The schemas (tests/data/braze-currents/) are Braze's, from its public currents-examples sample files; a record
gets every required field a value here, so a test names only what it is about.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMAS = Path(__file__).resolve().parent / "data" / "braze-currents"
EMAIL_CLICK, PURCHASE, CARD_CLICK = ("users.messages.email.Click", "users.behaviors.Purchase",
                                     "users.messages.contentcard.Click")
INTEGRATION = "dataexport.prod-01.S3.integration.5a1b2c3d4e5f"
# Values for the fields a schema requires (not a union with null), when a test does not give one.
REQUIRED = {"email_address": "someone@example.com", "currency": "USD", "properties": "{}", "content_card_id": "card-1",
            "app_id": "app-1", "price": 1.0, "product_id": "p1"}


@cache
def schema(event_type: str) -> Any:
    return fastavro.parse_schema(json.loads((SCHEMAS / f"{event_type}.avsc").read_text()))


@cache
def _blank(event_type: str) -> dict[str, Any]:
    names = [f["name"] for f in json.loads((SCHEMAS / f"{event_type}.avsc").read_text())["fields"]]
    return {name: REQUIRED.get(name) for name in names}


def record(event_type: str, **fields: Any) -> dict[str, Any]:
    """Return a record of the type: the given fields, and a value for every other required one."""
    blank = _blank(event_type)
    unknown = set(fields) - set(blank)
    assert not unknown, f"{event_type} has no field(s) {unknown}"
    return {**blank, **fields}


def write_currents(root: Path, event_type: str, records: Iterable[Mapping[str, Any]], hour: str = "2026-12-01-10",
                   name: str = "part-0.avro", codec: str = "deflate") -> Path:
    """Write records into root/<integration>/event_type=<type>/date=<hour>/<name>; return the file."""
    folder = root / INTEGRATION / f"event_type={event_type}" / f"date={hour}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("wb") as out:
        fastavro.writer(out, schema(event_type), list(records), codec=codec)
    return path
