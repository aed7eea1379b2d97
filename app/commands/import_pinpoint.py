"""`flask --app wsgi import-pinpoint FILE`: recreate the configurations `aws pinpoint get-recommender-configurations`
printed, each with its original Id, so templates and scripts that name it keep working.

Rerunning it changes nothing: a stored record identical to the file's is "unchanged"; one that differs is a
conflict, reported and left alone unless --replace. Exit status: 0 everything is stored as the file says,
1 a configuration conflicted or was invalid (the others were imported), or the listing has a NextToken (more pages
to import), 2 the file is not such a listing
(nothing was imported), 3 the store failed.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import click
import orjson
from flask.cli import with_appcontext
from marshmallow import ValidationError

from app.components import components
from app.pinpoint.configs import (
    RecommenderConfigurationSchema,
    RecommenderStore,
    StoreError,
    describe_problems,
    now_iso,
    with_defaults,
)

EXIT_INCOMPLETE, EXIT_NOT_A_LISTING, EXIT_STORE_FAILED = 1, 2, 3
# Pinpoint's Ids are 32 hex digits; anything that is one path segment of /v1/recommenders/{Id} is kept.
CONFIG_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
KEPT = ("Id", "CreationDate", "LastModifiedDate")  # the response's own fields, kept as Pinpoint wrote them
OUTCOMES = ("created", "unchanged", "replaced", "conflict", "invalid")


class NotAListingError(ValueError):
    """The file is not a ListRecommenderConfigurationsResponse."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one configuration of the file."""

    config_id: str
    status: str  # one of OUTCOMES
    detail: str = ""


def configurations(listing: Any) -> tuple[list[Any], str | None]:
    """Return the Item list of a ListRecommenderConfigurationsResponse (with or without its outer key) and its
    NextToken: the CLI does not page through get-recommender-configurations, so a listing may be one page."""
    if isinstance(listing, Mapping) and "ListRecommenderConfigurationsResponse" in listing:
        listing = listing["ListRecommenderConfigurationsResponse"]
    if not isinstance(listing, Mapping) or not isinstance(listing.get("Item"), list):
        raise NotAListingError('Not what "aws pinpoint get-recommender-configurations" prints: give its JSON, '
                               '{"ListRecommenderConfigurationsResponse": {"Item": [...]}} or {"Item": [...]}.')
    token = listing.get("NextToken")
    return listing["Item"], (token if isinstance(token, str) and token else None)


def imported_record(item: Any, schema: RecommenderConfigurationSchema) -> dict[str, Any]:
    """Return the record to store for one listed configuration: its Id and dates kept, its body checked by
    the same rules as POST; raise ValueError saying what is wrong."""
    if not isinstance(item, Mapping):
        raise ValueError("not a JSON object")
    config_id = item.get("Id")
    if not isinstance(config_id, str) or not CONFIG_ID.fullmatch(config_id):
        raise ValueError("Id: give 1-128 letters, digits, _ or - (Pinpoint's Ids are 32 hex digits).")
    dates = {name: item.get(name) or now_iso() for name in KEPT[1:]}
    if not all(isinstance(date, str) for date in dates.values()):
        raise ValueError("CreationDate and LastModifiedDate must be strings (ISO 8601).")
    # The CLI leaves out empty fields; a null one (another tool's output) means the same.
    body = {name: value for name, value in item.items() if name not in KEPT and value is not None}
    try:
        checked = schema.load(body)
    except ValidationError as exc:
        raise ValueError(describe_problems(exc)) from None
    return {"Id": config_id, **dates, **with_defaults(checked)}


def import_configurations(store: RecommenderStore, items: list[Any], replace: bool = False) -> list[Outcome]:
    """Store each listed configuration under its own Id; never overwrite a different one unless replace."""
    schema = RecommenderConfigurationSchema()
    outcomes = []
    for position, item in enumerate(items):
        try:
            record = imported_record(item, schema)
        except ValueError as exc:
            given = item.get("Id") if isinstance(item, Mapping) else None
            label = given if isinstance(given, str) and given else f"#{position + 1}"
            outcomes.append(Outcome(label, "invalid", str(exc)))
            continue
        outcomes.append(_store(store, record, replace))
    return outcomes


def _store(store: RecommenderStore, record: dict[str, Any], replace: bool) -> Outcome:
    config_id = record["Id"]
    existing = store.get(config_id)
    if existing is None:
        store.create(record)
        return Outcome(config_id, "created")
    if existing == record:
        return Outcome(config_id, "unchanged")
    if not replace:
        differing = sorted(k for k in existing.keys() | record.keys() if existing.get(k) != record.get(k))
        return Outcome(config_id, "conflict", f"a different configuration has this Id ({', '.join(differing)} "
                                              "differ); left as it is (--replace overwrites it)")
    store.replace(record)
    return Outcome(config_id, "replaced")


def summary(outcomes: list[Outcome]) -> str:
    """Return the one-line count of each outcome."""
    counts = Counter(o.status for o in outcomes)
    return ", ".join(f"{name} {counts[name]}" for name in OUTCOMES)


@click.command("import-pinpoint")
@click.argument("file", type=click.File("rb"))
@click.option("--replace", is_flag=True,
              help="Overwrite a stored configuration whose Id is in the file but whose settings differ.")
@with_appcontext
def import_pinpoint(file: IO[bytes], replace: bool) -> None:
    """Recreate the configurations `aws pinpoint get-recommender-configurations` printed (FILE, - for stdin)
    in RECOMMENDER_STORE, each with its original Id."""
    try:
        items, next_token = configurations(orjson.loads(file.read()))
    except (orjson.JSONDecodeError, NotAListingError) as exc:
        click.echo(f"{file.name}: {exc}", err=True)
        raise SystemExit(EXIT_NOT_A_LISTING) from None
    try:
        outcomes = import_configurations(components().store, items, replace)
    except StoreError as exc:
        click.echo(f"The configuration store failed: {exc}", err=True)
        raise SystemExit(EXIT_STORE_FAILED) from None
    for outcome in outcomes:
        click.echo(f"{outcome.status} {outcome.config_id}" + (f": {outcome.detail}" if outcome.detail else ""))
    click.echo(summary(outcomes))
    if next_token is not None:
        click.echo("This listing is one page: Pinpoint has more configurations. Save the next page with "
                   f"aws pinpoint get-recommender-configurations --token '{next_token}' > next.json, import it too, "
                   "and repeat while the output has a NextToken.", err=True)
    if next_token is not None or any(o.status in ("conflict", "invalid") for o in outcomes):
        raise SystemExit(EXIT_INCOMPLETE)
