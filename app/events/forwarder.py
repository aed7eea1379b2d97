"""POST /events' two halves: accept (validated events into the durable queue) and drain (queue to PutEvents).

A request only writes to the queue, so its thread never waits for Personalize, nor for the PutEvents rate cap:
GET /recommendations keeps its threads whatever Personalize Events does. Each worker runs one drainer thread
that claims due events (a lease: no two workers send the same event), sends them in calls of 10 at its share
of PUT_EVENTS_MAX_TPS, and removes what was sent. When Personalize fails, the events stay queued and the
drainer backs off (1 s doubling to 10 s); a drainer that starts (a new worker, a restart) finds them there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence

from app.errors import ServiceError
from app.events.putevents import Event, PutEventsSender, SendError, calls_of
from app.events.queue import STORE_FAILURES, EventQueue

log = logging.getLogger(__name__)

CLAIM_SIZE = 100  # events claimed at once: ten calls
LEASE_SECONDS = 30.0  # a claim's events come back to the queue after this if their drainer died mid-send
IDLE_POLL_SECONDS = 1.0  # how often a drainer looks for events other workers queued
MAX_BACKOFF_SECONDS = 10.0
RETRY_SECONDS = 1.0  # events of a failed call wait this long before any worker claims them again
# Refusals that say the events themselves are bad: sending them again cannot help, so they are dropped (and
# counted as rejected). A wrong tracking id or missing permission (the sender calls those rejected too) is a
# setting to fix: those events stay queued until it is fixed.
BAD_EVENTS = frozenset({"InvalidInputException", "SerializationException", "ValidationException"})


class EventForwarder:
    """Queue accepted events and send them from a background thread of each worker.

    observe(outcome, count) counts events by outcome (queued, deduplicated; the sender reports sent, failed,
    rejected); on_depth(n) is told the queue's depth after each round.
    """

    def __init__(self, queue: EventQueue, sender: PutEventsSender, max_requests: int,
                 observe: Callable[[str, int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.queue = queue
        self.sender = sender
        self._observe = observe or (lambda outcome, count: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._admission = threading.BoundedSemaphore(max_requests)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._store_failing = False
        self._closed = False

    # -- accepting (request threads) -------------------------------------------------------------------------

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the worker's few POST /events slots, or raise 429 at once when all are taken."""
        if not self._admission.acquire(blocking=False):
            raise ServiceError("Too many event requests at once on this worker; retry in a second.",
                               code="too_many_requests", status=429, retry_after=1)
        try:
            yield
        finally:
            self._admission.release()

    def accept(self, events: Sequence[Event]) -> tuple[int, int]:
        """Queue the events durably and wake the drainer; return (queued, deduplicated)."""
        self._observe("received", len(events))
        try:
            queued = self.queue.put(events)
        except STORE_FAILURES as exc:
            log.error("events queue unavailable, events refused (the caller may retry): %s", type(exc).__name__)
            raise ServiceError("The events could not be queued; nothing was kept. Retry shortly.",
                               code="events_queue_unavailable", status=503, retry_after=1) from exc
        self._observe("queued", queued)
        self._observe("deduplicated", len(events) - queued)
        self.start()
        self._wake.set()
        return queued, len(events) - queued

    # -- draining (one thread per worker) --------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's drainer if it is not running (after gunicorn's fork, once per worker)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="events-drainer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the call in flight finish (so what was sent is removed from the queue), then stop the drainer for
        good (a stopping worker; events accepted later stay queued for the other workers)."""
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout)
        self.sender.close()  # the rate cap's own thread

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                sent_all = self.drain_once()
            except STORE_FAILURES as exc:
                self._store_state(exc)
                sent_all = False
            except Exception:  # a bug must not stop the drainer for good; the events stay queued
                log.exception("events drainer failed; retrying")
                sent_all = False
            if sent_all is None:  # nothing due: wait for a request of this worker, or poll for others'
                backoff = 0.0
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
            elif sent_all:
                backoff = 0.0
            else:
                backoff = min(MAX_BACKOFF_SECONDS, max(1.0, backoff * 2))
                self._stopping.wait(backoff)

    def drain_once(self) -> bool | None:
        """Claim due events and send them; return None when none were due, else whether every call went out."""
        claimed = self.queue.claim(CLAIM_SIZE, LEASE_SECONDS)
        self._store_state(None)
        if not claimed:
            self._on_depth(self.queue.depth())
            return None
        pending = {event.event_id for event in claimed}
        try:
            for call in calls_of(claimed):
                ids = [event.event_id for event in call]
                try:
                    self.sender.send_call(call)
                except SendError as exc:
                    if exc.code not in BAD_EVENTS:
                        log.warning("PutEvents failed (%s); %d events stay queued", exc.code, len(pending))
                        self.queue.retry_later(sorted(pending), RETRY_SECONDS)
                        pending.clear()
                        return False
                    log.error("PutEvents refused %d events as invalid (%s); they are dropped", len(ids), exc.code)
                self.queue.done(ids)
                pending.difference_update(ids)
                if self._stopping.is_set():
                    break
        finally:
            if pending:  # stopped, or a store error: due again at once for another worker
                self.queue.retry_later(sorted(pending), 0)
            self._on_depth(self.queue.depth())
        return not pending

    def _store_state(self, exc: Exception | None) -> None:
        """Log when the queue's store starts and stops failing, not once a round."""
        if exc is not None and not self._store_failing:
            log.error("events queue unavailable to the drainer: %s", type(exc).__name__)
        elif exc is None and self._store_failing:
            log.warning("events queue works again")
        self._store_failing = exc is not None
