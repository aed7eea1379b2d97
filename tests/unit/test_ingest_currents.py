"""ingest-currents in the process: Currents records become PutEvents events (botocore's Stubber checks the calls),
duplicates and bots are counted, the ledger remembers what was sent, and CURRENTS_EVENT_TYPES is checked at start."""
from __future__ import annotations

import os
import stat
from collections import Counter
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from app.commands.ingest_currents import UNMAPPED, Ingest, Tally, count_events, files_to_do
from app.commands.progress import Progress
from app.events.currents import BOT, INVALID, NO_ITEM, NO_USER, Translator, list_files, page_of
from app.events.dispatch import ThreadDispatcher
from app.events.ledger import DAY, SQLiteLedger
from app.events.putevents import Event, PutEventsSender
from app.settings import ConfigError, Settings
from app.telemetry.metrics import Metrics
from tests.currents_files import CARD_CLICK, EMAIL_CLICK, PURCHASE, record, write_currents

PAGES = {page_of("https://shop.example.com/p/1333/fleece-pullover"): "1333"}
T0 = 1_764_583_200


def translator(**types: str) -> Translator:
    return Translator({EMAIL_CLICK: "click", PURCHASE: "purchase", **types}, lambda: PAGES)


def click(**fields: Any) -> dict[str, Any]:
    fields.setdefault("id", "c1")
    fields.setdefault("user_id", "braze-1")
    fields.setdefault("time", T0)
    return record(EMAIL_CLICK, **fields)


# -- records to events ---------------------------------------------------------------------------------------------
def test_a_tracked_link_click_is_a_click_on_its_item_with_its_recommendation_id() -> None:
    event = translator().event(EMAIL_CLICK, click(
        external_user_id="user123", dispatch_id="d1",
        url="https://shop.example.com/p/1740/x?utm_source=braze&recs_item=1740&recs_rid=RID-9#top"))
    assert event == Event(user_id="user123", session_id="d1", event_type="click", sent_at=T0, event_id="c1",
                          item_id="1740", recommendation_id="RID-9")


def test_an_untracked_click_is_matched_to_the_catalog_page_ignoring_query_fragment_and_host_case() -> None:
    event = translator().event(EMAIL_CLICK, click(url="HTTPS://Shop.Example.com/p/1333/fleece-pullover/?utm=x#a"))
    assert isinstance(event, Event)
    assert (event.user_id, event.session_id, event.item_id, event.recommendation_id) == (
        "braze-1", "braze-1", "1333", None)  # no external id: Braze's user_id, and the user as the session


def test_clicks_that_cannot_be_sent_say_why() -> None:
    names = translator()
    assert names.event(EMAIL_CLICK, click(url="https://shop.example.com/p/1740?recs_item=1740",
                                          is_suspected_bot_click=True)) == BOT
    assert names.event(EMAIL_CLICK, click(url="https://shop.example.com/unsubscribe")) == NO_ITEM
    assert names.event(EMAIL_CLICK, click(url=None)) == NO_ITEM
    assert names.event(EMAIL_CLICK, click(user_id="", url="https://shop.example.com/p/1?recs_item=1")) == NO_USER
    assert names.event(EMAIL_CLICK, click(url="https://s.example.com/?recs_item=" + "x" * 257)) == INVALID


def test_a_recommendation_id_longer_than_personalize_takes_is_left_out_not_the_click() -> None:
    event = translator().event(EMAIL_CLICK, click(url="https://s.example.com/?recs_item=7&recs_rid=" + "r" * 41))
    assert isinstance(event, Event) and (event.item_id, event.recommendation_id) == ("7", None)


def test_a_purchase_is_its_product_with_the_price_as_value() -> None:
    event = translator().event(PURCHASE, record(PURCHASE, id="p1", user_id="b1", external_user_id="user9", time=T0,
                                                product_id="1740", price=19.99))
    assert event == Event(user_id="user9", session_id="user9", event_type="purchase", sent_at=T0, event_id="p1",
                          item_id="1740", event_value=19.99)


def test_a_mapped_type_without_url_or_product_is_sent_without_an_item() -> None:
    event = translator(**{CARD_CLICK: "card_click"}).event(CARD_CLICK, record(
        CARD_CLICK, id="k1", user_id="b1", time=T0, send_id="s1"))
    assert event == Event(user_id="b1", session_id="s1", event_type="card_click", sent_at=T0, event_id="k1")


# -- the setting ---------------------------------------------------------------------------------------------------
BASE = {"catalog_uri": "c.csv", "recommendations_uri": "b.jsonl"}


@pytest.mark.parametrize("raw", ["users.messages.contentcard.Click=card_click,users.behaviors.Purchase=buy",
                                 '{"users.messages.contentcard.Click": "card_click", "users.behaviors.Purchase": "buy"}'])
def test_currents_event_types_add_to_and_change_the_defaults(raw: str) -> None:
    settings = Settings.from_mapping({**BASE, "currents_event_types": raw})
    assert settings.currents_event_types == {EMAIL_CLICK: "click", PURCHASE: "buy", CARD_CLICK: "card_click"}


def test_an_empty_event_type_turns_a_default_off() -> None:
    settings = Settings.from_mapping({**BASE, "currents_event_types": "users.behaviors.Purchase="})
    assert settings.currents_event_types == {EMAIL_CLICK: "click"}


@pytest.mark.parametrize(("raw", "says"), [
    ("users.messages.contentcard.Click", "is not TYPE=eventType"),
    ("contentcard=click", "is not a Braze Currents event type"),
    ('{"users.messages.email.Click": ', "is not valid JSON"),
    ('["users.messages.email.Click"]', "must be a JSON object"),
    ("users.messages.email.Click=" + "x" * 257, "at most 256 characters"),
])
def test_a_malformed_mapping_stops_the_start_with_a_sentence(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match="CURRENTS_EVENT_TYPES") as caught:
        Settings.from_mapping({**BASE, "currents_event_types": raw})
    assert says in str(caught.value)


# -- the run, through botocore's Stubber -------------------------------------------------------------------------
def stubbed_sender() -> tuple[PutEventsSender, Stubber]:
    client = boto3.client("personalize-events", region_name="us-east-1", aws_access_key_id="a",
                          aws_secret_access_key="b")
    return PutEventsSender(lambda: client, "tracker-1"), Stubber(client)


def run(ledger: SQLiteLedger, root: Path, sender: PutEventsSender | None) -> Ingest:
    files = files_to_do(ledger, list_files(str(root), lambda: None))
    with Progress("ingest-currents", 0, unit="events", terminal=False, line_seconds=3600) as progress:
        ingest = Ingest(ledger, translator(), lambda: None,
                        ThreadDispatcher(sender.send_call, 1, None) if sender else None, progress, show=lambda line: None)
        ingest.run(files)
    return ingest


def test_each_event_is_sent_once_across_an_overlapping_delivery_and_a_rerun(tmp_path: Path) -> None:
    root = tmp_path / "currents"
    tracked = "https://shop.example.com/p/1740?recs_item=1740&recs_rid=RID-1"
    write_currents(root, EMAIL_CLICK, [click(id="c1", external_user_id="u1", dispatch_id="d1", url=tracked),
                                       click(id="c2", external_user_id="u1", dispatch_id="d1", time=T0 + 5,
                                             url="https://shop.example.com/p/1333/fleece-pullover"),
                                       click(id="c3", url=tracked, is_suspected_bot_click=True)])
    # Braze delivered c1 again in the next hour's file, next to a new click.
    write_currents(root, EMAIL_CLICK, [click(id="c1", external_user_id="u1", dispatch_id="d1", url=tracked),
                                       click(id="c4", external_user_id="u2", url=tracked)], hour="2026-12-01-11")
    write_currents(root, CARD_CLICK, [record(CARD_CLICK, id="k1", user_id="b1", time=T0)])
    ledger = SQLiteLedger(str(tmp_path / "data" / "currents.sqlite3"), 7)
    sender, stub = stubbed_sender()
    stub.add_response("put_events", {}, {"trackingId": "tracker-1", "userId": "u1", "sessionId": "d1", "eventList": [
        {"eventId": "c1", "eventType": "click", "sentAt": T0, "itemId": "1740", "recommendationId": "RID-1"},
        {"eventId": "c2", "eventType": "click", "sentAt": T0 + 5, "itemId": "1333"}]})
    stub.add_response("put_events", {}, {"trackingId": "tracker-1", "userId": "u2", "sessionId": "u2", "eventList": [
        {"eventId": "c4", "eventType": "click", "sentAt": T0, "itemId": "1740", "recommendationId": "RID-1"}]})

    with stub:
        first = run(ledger, root, sender)
        stub.assert_no_pending_responses()

    clicks = first.tallies[EMAIL_CLICK]
    assert (clicks.read, clicks.sent, clicks.duplicates, dict(clicks.skipped)) == (5, 3, 1, {BOT: 1})
    assert dict(first.tallies[CARD_CLICK].skipped) == {UNMAPPED: 1}
    assert len(first.files_done) == 2 and len(first.files_unmapped) == 1

    with stub:  # nothing queued: any call would fail the test
        again = run(ledger, root, sender)
    assert set(again.tallies) == {CARD_CLICK}  # only the unmapped file is looked at again (counted, not read)
    assert again.stop_error is None
    assert ledger.done(f.key for f in list_files(str(root), lambda: None)) == {f.key for f in first.files_done}


def test_a_dry_run_sends_and_remembers_nothing_but_counts_the_overlap_once(tmp_path: Path) -> None:
    root = tmp_path / "currents"
    tracked = "https://shop.example.com/p/1740?recs_item=1740"
    write_currents(root, EMAIL_CLICK, [click(id="c1", url=tracked)])
    write_currents(root, EMAIL_CLICK, [click(id="c1", url=tracked)], hour="2026-12-01-11")
    ledger = SQLiteLedger(str(tmp_path / "data" / "currents.sqlite3"), 7)

    dry = run(ledger, root, None)

    assert (dry.tallies[EMAIL_CLICK].sent, dry.tallies[EMAIL_CLICK].duplicates) == (1, 1)
    assert ledger.done(f.key for f in dry.files_done) == set()
    assert ledger.sent(["c1"]) == set()


# -- the ledger ----------------------------------------------------------------------------------------------------
def test_the_sqlite_ledger_is_private_and_forgets_ids_after_the_retention(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    path = tmp_path / "data" / "currents.sqlite3"
    ledger = SQLiteLedger(str(path), 7, clock=lambda: now[0])
    ledger.record(["old"])
    now[0] += 6 * DAY
    ledger.record(["new"], file="f1 10")
    assert ledger.sent(["old", "new", "never"]) == {"old", "new"}
    now[0] += 2 * DAY  # "old" was sent 8 days ago
    assert ledger.sent(["old", "new"]) == {"new"}
    assert SQLiteLedger(str(path), 7, clock=lambda: now[0]).done(["f1 10", "f2 10"]) == {"f1 10"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_sender_process_that_dies_stops_the_run_and_leaves_its_file_to_do(tmp_path: Path) -> None:
    class BrokenDispatcher:
        capacity = 1

        def submit(self, calls: Any) -> list[Future[Any]]:
            future: Future[Any] = Future()
            future.set_exception(BrokenProcessPool("a sender process was killed"))
            return [future]

    root = tmp_path / "currents"
    write_currents(root, EMAIL_CLICK, [click(id="c1", url="https://shop.example.com/p/1740?recs_item=1740")])
    ledger = SQLiteLedger(str(tmp_path / "data" / "currents.sqlite3"), 7)
    with Progress("ingest-currents", 1, unit="events", terminal=False, line_seconds=3600) as progress:
        ingest = Ingest(ledger, translator(), lambda: None, BrokenDispatcher(), progress)  # type: ignore[arg-type]
        ingest.run(list_files(str(root), lambda: None))

    assert ingest.stop_error is not None and ingest.stop_error.code == "BrokenProcessPool"
    assert ingest.files_done == []
    assert files_to_do(ledger, list_files(str(root), lambda: None)) != []


def test_a_run_s_counts_join_the_events_metrics_under_source_currents() -> None:
    metrics = Metrics()
    clicks = Tally("click", read=7, sent=4, duplicates=1)
    clicks.skipped.update({BOT: 1, NO_ITEM: 1})
    count_events(metrics, [clicks, Tally(None, read=2, skipped=Counter({UNMAPPED: 2}))])

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"source": "currents", **labels})

    assert [value("recs_events_total", outcome=o) for o in ("received", "sent", "deduplicated", "skipped")] == [
        9, 4, 1, 4]
    assert value("recs_events_skipped_total", reason=UNMAPPED) == 2
    assert value("recs_events_skipped_total", reason=BOT) == 1
