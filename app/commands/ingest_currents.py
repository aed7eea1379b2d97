"""`flask --app wsgi ingest-currents URI [--dry-run]`: send what Braze Currents recorded to Personalize.

Reads every Currents Avro file under a folder or s3://bucket/prefix/ (README, "From Braze Currents"), turns
each record into a PutEvents event (app/events/currents.py) and sends them, 10 to a call, with several calls in
flight under one PUT_EVENTS_MAX_TPS cap (app/events/dispatch.py). A file is marked done in the ledger only once
all its events are sent, and the ids of sent events are written to it every RECORD_EVERY events, at each file's
end and before any exit, so a rerun or an overlapping delivery sends nothing twice, and a stopped run resumes
where it was. Before reading, every file to do is counted from its Avro block headers (no record decoded; an
S3 file is fetched for it, so twice in all) for the progress bar's total.
Exit status: 0 all sent, 1 events could not be sent (the files left to do are listed) or were refused by
Personalize, 2 a usage error, 130 interrupted.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
from flask import current_app
from flask.cli import with_appcontext

from app.caching.redis import shared_redis
from app.catalog.files import FileError
from app.commands.progress import Progress
from app.components import components
from app.events.currents import CurrentsError, CurrentsFile, Translator, count_records, list_files, pages_of, records
from app.events.ledger import Ledger, RedisLedger, SQLiteLedger
from app.events.dispatch import Dispatcher, Outcome, ProcessDispatcher, ThreadDispatcher, sender_config
from app.events.putevents import Event, PutEventsSender, calls_of
from app.events.wire import SignedPutEvents
from app.settings import Settings
from app.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

EXIT_NOT_SENT, EXIT_INTERRUPTED = 1, 130
CHUNK = 2_000  # events grouped into calls together (by user and session), and checked against the ledger at once
RECORD_EVERY = 5_000  # sent ids are written to the ledger at least this often (and at every file's end)
DRY_RUN_SHOWN = 20  # calls a dry run prints in full
DEFAULT_PROCESSES = 2  # sender processes: measured on 2 cores (README); 1 keeps everything in this process
UNMAPPED = "unmapped event type"
SOURCE = "currents"  # recs_events_total's source label for what this command sends


@dataclass
class Tally:
    """What happened to one Currents event type's records."""

    event_type: str | None = None  # the Personalize eventType, None when unmapped
    read: int = 0
    sent: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    failed: int = 0

    def line(self, name: str, dry_run: bool) -> str:
        target = f" -> {self.event_type}" if self.event_type else ""
        parts = [f"read {self.read:,}", f"{'would send' if dry_run else 'sent'} {self.sent:,}",
                 f"duplicates {self.duplicates:,}"]
        parts += [f"skipped ({reason}) {count:,}" for reason, count in sorted(self.skipped.items())]
        parts += [f"refused by Personalize {self.rejected:,}"] * bool(self.rejected)
        parts += [f"not sent (failed) {self.failed:,}"] * bool(self.failed)
        return f"{name}{target}: " + ", ".join(parts)


class Ingest:
    """Read files one after another, hand their calls to the dispatcher, remember what was sent.

    dispatcher: sends calls (threads or sender processes), or None for a dry run, which sends and records
    nothing and shows the calls instead (show). Dedup: an id seen earlier in the same file, or sent before (the
    ledger, which every call's ids reach before the next file is read), is a duplicate. stop: set by a signal,
    ends the run after the calls in flight.
    """

    def __init__(self, ledger: Ledger, translator: Translator, s3: Callable[[], Any],
                 dispatcher: Dispatcher | None, progress: Progress, show: Callable[[str], None] = click.echo,
                 stop: threading.Event | None = None) -> None:
        self.ledger = ledger
        self.translator = translator
        self.s3 = s3
        self.dispatcher = dispatcher
        self.progress = progress
        self.show = show
        self.tallies: dict[str, Tally] = {}
        self.files_done: list[CurrentsFile] = []
        self.files_unmapped: list[CurrentsFile] = []  # counted, not read: done once their type is mapped
        self._dry_run_ids: set[str] = set()  # a dry run remembers nothing, yet counts an overlap once
        self.stop_error: Outcome | None = None  # a call that still failed after its retries: the run stops
        self.interrupted = False  # asked to stop (SIGTERM, Ctrl-C): the run ends after the calls in flight
        self._stop = stop or threading.Event()
        self.shown = 0
        self._in_flight: deque[tuple[Tally, Future[list[Outcome]]]] = deque()
        self._unrecorded: list[str] = []

    # -- the run -------------------------------------------------------------------------------------------------
    def run(self, files: Sequence[CurrentsFile]) -> None:
        """Ingest the files in order; stop at the first call that cannot be sent, or when interrupted."""
        try:
            for file in files:
                if self.stopped:
                    break
                if file.event_type is not None and file.event_type not in self.translator.event_types:
                    self.count_unmapped(file)
                elif self.ingest_file(file):
                    self.files_done.append(file)
        except KeyboardInterrupt:  # a second Ctrl-C
            self.interrupted = True
        finally:
            self.drain()  # what was sent before a stop is remembered, so the next run does not send it again
            self.interrupted = self.interrupted or self._stop.is_set()

    def count_unmapped(self, file: CurrentsFile) -> None:
        """Count a file of a type CURRENTS_EVENT_TYPES does not name, without decoding it; leave it unread."""
        count = count_records(file, self.s3)
        tally = self.tally(file.event_type)
        tally.read += count
        tally.skipped[UNMAPPED] += count
        self.files_unmapped.append(file)
        self.progress.advance(count)

    @property
    def stopped(self) -> bool:
        return self.interrupted or self.stop_error is not None or self._stop.is_set()

    def ingest_file(self, file: CurrentsFile) -> bool:
        """Send one file's events; mark it done when every one was sent (or refused). Return whether it was."""
        seen: set[str] = set()
        buffer: list[Event] = []
        unread = 0
        for event_type, record in records(file, self.s3):
            if self.stopped:
                return False
            unread += 1
            if unread >= 1000:
                self.progress.advance(unread)
                unread = 0
            tally = self.tally(event_type)
            tally.read += 1
            if tally.event_type is None:
                tally.skipped[UNMAPPED] += 1
                continue
            event = self.translator.event(event_type or "", record)
            if isinstance(event, str):
                tally.skipped[event] += 1
            elif event.event_id in seen:
                tally.duplicates += 1
            else:
                seen.add(event.event_id)
                buffer.append(event)
                if len(buffer) >= CHUNK:
                    self.submit(tally, buffer)
                    buffer = []
        self.progress.advance(unread)
        if buffer:
            self.submit(self.tally(file.event_type), buffer)
        self.drain()
        if self.stopped:
            return False
        if self.dispatcher is not None:
            self.ledger.record(self._take_unrecorded(), file=file.key)
        return True

    def tally(self, event_type: str | None) -> Tally:
        name = event_type or "(unknown type)"
        tally = self.tallies.get(name)
        if tally is None:
            tally = self.tallies[name] = Tally(self.translator.event_types.get(name))
        return tally

    # -- sending -------------------------------------------------------------------------------------------------
    def submit(self, tally: Tally, events: list[Event]) -> None:
        """Drop the events sent before, then send the rest in calls of up to 10 (or show them, for a dry run)."""
        before = self.ledger.sent([e.event_id for e in events])
        if self.dispatcher is None:
            before |= {e.event_id for e in events if e.event_id in self._dry_run_ids}
            self._dry_run_ids.update(e.event_id for e in events)
        tally.duplicates += len(before)
        calls = calls_of(e for e in events if e.event_id not in before)
        if self.dispatcher is None:
            for call in calls:
                tally.sent += len(call)
                self.show_call(call)
            return
        for future in self.dispatcher.submit(calls):
            self._in_flight.append((tally, future))
        while len(self._in_flight) > self.dispatcher.capacity or (self._in_flight and self._in_flight[0][1].done()):
            self.harvest_first()
        if len(self._unrecorded) >= RECORD_EVERY:
            self.ledger.record(self._take_unrecorded())

    def harvest_first(self) -> None:
        """Wait for the oldest calls in flight, count them (in the main thread) and remember their ids once sent.

        Taken off the queue only once counted: a forced stop while waiting leaves them for drain() to count.
        """
        tally, future = self._in_flight[0]
        try:
            outcomes = future.result()
        except Exception as exc:  # a sender process died (BrokenProcessPool): its calls may or may not have gone
            log.error("a PutEvents sender failed: %r", exc)
            outcomes = []
            self.stop_error = self.stop_error or Outcome((), type(exc).__name__, retryable=True)
        self._in_flight.popleft()
        for outcome in outcomes:
            count = len(outcome.event_ids)
            if outcome.code is None:
                tally.sent += count
                self._unrecorded.extend(outcome.event_ids)
            elif not outcome.retryable:  # Personalize refuses these events: sending them again would fail again
                tally.rejected += count
                self._unrecorded.extend(outcome.event_ids)
            else:
                tally.failed += count
                self.stop_error = self.stop_error or outcome

    def drain(self) -> None:
        """Wait for the calls in flight, then write the ids sent so far to the ledger."""
        while self._in_flight:
            self.harvest_first()
        if self.dispatcher is not None and self._unrecorded:
            self.ledger.record(self._take_unrecorded())

    def _take_unrecorded(self) -> list[str]:
        ids, self._unrecorded = self._unrecorded, []
        return ids

    def show_call(self, call: Sequence[Event]) -> None:
        """Print a call a dry run would make, the first DRY_RUN_SHOWN of them."""
        self.shown += 1
        if self.shown <= DRY_RUN_SHOWN:
            first = call[0]
            self.show(orjson.dumps({"userId": first.user_id, "sessionId": first.session_id,
                                    "eventList": [e.to_api() for e in call]}).decode())

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tallies.values())


def files_to_do(ledger: Ledger, files: Sequence[CurrentsFile]) -> list[CurrentsFile]:
    """Return the files no run has finished, in order."""
    done = ledger.done(f.key for f in files)
    return [f for f in files if f.key not in done]


def build_ledger(settings: Settings) -> Ledger:
    """Return the ledger: Redis when CACHE_REDIS_URL is set (every host sees it), else SQLite in DATA_DIR."""
    shared = shared_redis(settings.cache_redis_url, settings.cache_redis_cluster, settings.cache_redis_tls_ca_file,
                          settings.cache_redis_tls_verify)
    if shared is not None:  # one node or a Redis Cluster, with TLS and a user if set: as the service reaches it
        return RedisLedger(shared, settings.currents_dedup_days)
    return SQLiteLedger(f"{settings.data_dir}/currents.sqlite3", settings.currents_dedup_days)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """On SIGTERM (a stopped container, a killed cron job) or Ctrl-C, ask the run to stop once the calls in flight
    are back, so every event sent is remembered; a second Ctrl-C stops at once."""
    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command("ingest-currents")
@click.argument("uri")
@click.option("--dry-run", is_flag=True, help="Send nothing and remember nothing; print the first calls and the counts.")
@click.option("--processes", type=click.IntRange(1, 64), default=DEFAULT_PROCESSES, show_default=True,
              help="Sender processes (1: this process's threads send); each paces PUT_EVENTS_MAX_TPS / processes.")
@click.option("--threads", type=click.IntRange(1, 256), default=16, show_default=True,
              help="PutEvents calls in flight per sender process.")
@with_appcontext
def ingest_currents(uri: str, dry_run: bool, processes: int, threads: int) -> None:
    """Send the clicks and purchases of Braze Currents files under URI (a folder or s3://bucket/prefix/) to
    Personalize as PutEvents events; files already done, and events already sent, are skipped."""
    parts = components(current_app)
    settings = parts.settings
    if not dry_run and not settings.personalize_tracking_id:
        raise click.UsageError("PERSONALIZE_TRACKING_ID is not set: give the tracking id of your Personalize "
                               "dataset group's event tracker (or use --dry-run).")
    ledger = build_ledger(settings)
    try:
        ingest, todo = _ingest(parts, ledger, uri, dry_run, processes, threads)
    finally:
        ledger.close()
    for name, tally in sorted(ingest.tallies.items()):
        click.echo(tally.line(name, dry_run))
    if not dry_run:
        count_events(parts.metrics, ingest.tallies.values())
    exit_code = _outcome(ingest, todo, dry_run)
    if exit_code:
        click.get_current_context().exit(exit_code)


def _ingest(parts: Any, ledger: Ledger, uri: str, dry_run: bool, processes: int,
            threads: int) -> tuple[Ingest, list[CurrentsFile]]:
    """List the files, leave out those done, and ingest the rest; return the run and the files it was given."""
    settings = parts.settings
    try:
        files = list_files(uri, parts.aws.s3)
    except CurrentsError as exc:
        raise click.UsageError(str(exc)) from None
    todo = files_to_do(ledger, files)
    click.echo(f"{len(files):,} Currents files under {uri}: {len(files) - len(todo):,} done before, "
               f"{len(todo):,} to read.", err=True)

    def catalog_pages() -> dict[str, str]:
        try:
            return pages_of(parts.service.catalog.load().encoded)
        except (FileError, OSError) as exc:
            raise CurrentsError(f"the catalog (CATALOG_URI) cannot be read to find the items of clicks without "
                                f"recs_item: {exc}") from exc

    try:
        total = sum(count_records(f, parts.aws.s3) for f in todo)
        stop = threading.Event()
        with stop_on_signals(stop), _dispatcher(parts, dry_run, processes, threads) as dispatcher, \
                Progress("ingest-currents", total, unit="events") as progress:
            ingest = Ingest(ledger, Translator(settings.currents_event_types, catalog_pages), parts.aws.s3,
                            dispatcher, progress, stop=stop)
            ingest.run(todo)
    except CurrentsError as exc:
        raise click.ClickException(str(exc)) from None
    return ingest, todo


@contextmanager
def _dispatcher(parts: Any, dry_run: bool, processes: int, threads: int) -> Iterator[Dispatcher | None]:
    """Yield what sends the calls: sender processes, this process's threads (--processes 1), or nothing."""
    settings = parts.settings
    if dry_run:
        yield None
        return
    client = parts.aws.personalize_events()
    tracking_id = settings.personalize_tracking_id or ""
    dispatcher: Dispatcher
    if processes > 1:
        dispatcher = ProcessDispatcher(sender_config(client, tracking_id, settings.put_events_max_tps, processes,
                                                     threads), processes)
        sender = lean = None
    else:
        lean = SignedPutEvents(*SignedPutEvents.endpoint_of(client), parts.aws.credentials())
        sender = PutEventsSender(lambda: lean, tracking_id)  # the dispatcher keeps the pace
        dispatcher = ThreadDispatcher(sender.send_call, threads, settings.put_events_max_tps)
    try:
        yield dispatcher
    finally:
        dispatcher.close()
        if sender is not None and lean is not None:
            sender.close()
            lean.close()


def count_events(metrics: Metrics, tallies: Iterable[Tally]) -> None:
    """Add the run's counts to recs_events_total{source="currents"} (scraped when the command shares the
    service's PROMETHEUS_MULTIPROC_DIR; README, "From Braze Currents")."""
    observe = metrics.event_counter(SOURCE)
    for tally in tallies:
        for outcome, count in (("received", tally.read), ("sent", tally.sent), ("deduplicated", tally.duplicates),
                               ("rejected", tally.rejected), ("failed", tally.failed)):
            observe(outcome, count)
        for reason, count in tally.skipped.items():
            metrics.events_skipped_by(SOURCE, reason, count)


def _outcome(ingest: Ingest, todo: Sequence[CurrentsFile], dry_run: bool) -> int:
    """Say how the run ended and which files stay to do; return the exit status."""
    if dry_run:
        if ingest.shown > DRY_RUN_SHOWN:
            click.echo(f"(the first {DRY_RUN_SHOWN} of {ingest.shown:,} calls shown)")
        click.echo("Dry run: nothing was sent and nothing remembered.")
        return 0
    left = [f for f in todo if f not in ingest.files_done and f not in ingest.files_unmapped]
    unmapped = f" {len(ingest.files_unmapped):,} of unmapped types counted, not read;" if ingest.files_unmapped else ""
    click.echo(f"Files: {len(ingest.files_done):,} done now,{unmapped} {len(left):,} left to do.")
    for file in left:
        click.echo(f"  to do: {file.uri}")
    if ingest.interrupted:
        click.echo("Interrupted: the events sent so far are remembered; run the same command again to go on.")
        return EXIT_INTERRUPTED
    if ingest.stop_error is not None:
        click.echo(f"Stopped: PutEvents kept failing ({ingest.stop_error.code}); the events sent are remembered "
                   "and the files above stay to do: run the same command again when Personalize answers.")
        return EXIT_NOT_SENT
    if ingest.rejected:
        click.echo(f"{ingest.rejected:,} events were refused by Personalize (see the log); they will not be sent "
                   "again.")
        return EXIT_NOT_SENT
    return 0
