"""Many PutEvents calls in flight at once: threads in this process, or sending processes with threads each.

One process spends its CPU under one GIL: decoding Avro, then signing and sending calls, cannot reach 1,000
calls a second on this kind of machine (README, "From Braze Currents"). So ingest-currents reads in its own
process and hands calls, a chunk at a time, to `processes` sender processes of `threads` threads; each
process paces its calls at PUT_EVENTS_MAX_TPS / processes, so together they keep the one cap. With
processes=1 (and in tests) the calls go to threads of this process instead, through the same code.

The pace is kept by the one thread that hands calls to the threads, not by each sending thread: with 16
threads waiting on it, pyrate-limiter's bucket let through 380 of the 500 calls a second it was set to, and
spent 120 us of CPU a call; waited on by one thread it keeps 499 of 500. A call sent again after a failure
waits for the pace too.
"""
from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.commands.pacing import Pace
from app.events.putevents import Event, PutEventsSender, SendError

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # back-off between attempts of a call that failed and may succeed later
# Each process paces a little under its share: calls leave on time but arrive with some jitter. Without a
# margin the stand-in saw 1,021 calls start in one second under a cap of 1,000; with 3%, once the pace kept its
# rate exactly (app/commands/pacing.py), 1,001.
PACE_MARGIN = 0.95


@dataclass(frozen=True)
class Outcome:
    """What became of one call: sent (code None), refused for good, or failed after its retries."""

    event_ids: tuple[str, ...]
    code: str | None = None
    retryable: bool = False


def send_with_retries(send: Callable[[Sequence[Event]], None], call: Sequence[Event], pace: Pace,
                      delays: Sequence[float] = RETRY_DELAYS, sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Send one call (its first attempt already paced), trying again after each delay while the failure may
    pass; never raise."""
    ids = tuple(e.event_id for e in call)
    for attempt, delay in enumerate((*delays, None)):
        if attempt:
            pace.wait()
        try:
            send(call)
            return Outcome(ids)
        except SendError as exc:
            if not exc.retryable or delay is None:
                return Outcome(ids, exc.code, exc.retryable)
            sleep(delay)
    raise AssertionError("unreachable")


class ThreadDispatcher:
    """Send each call on one of `threads` threads of this process, at most max_tps a second; a future per call.

    send: sends one call, unpaced (PutEventsSender.send_call of a sender without a cap).
    """

    def __init__(self, send: Callable[[Sequence[Event]], None], threads: int, max_tps: float | None,
                 delays: Sequence[float] | None = None) -> None:
        self._send = send
        self._delays = RETRY_DELAYS if delays is None else delays
        self._pace = Pace(None if max_tps is None else max_tps * PACE_MARGIN)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="put-events")
        self.capacity = threads * 2  # futures (here calls) queued or in flight before the reader waits

    def submit(self, calls: Sequence[Sequence[Event]]) -> list[Future[list[Outcome]]]:
        futures = []
        for call in calls:
            self._pace.wait()
            futures.append(self._pool.submit(
                lambda call=call: [send_with_retries(self._send, call, self._pace, self._delays)]))
        return futures

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._pace.__exit__(None, None, None)


@dataclass(frozen=True)
class SenderConfig:
    """What a sender process needs to build its own PutEventsSender (picklable)."""

    url: str
    region: str
    signing_name: str
    tracking_id: str
    tps: float  # this process's share of PUT_EVENTS_MAX_TPS
    threads: int
    delays: tuple[float, ...] = RETRY_DELAYS


_worker: tuple[PutEventsSender, Pace, ThreadPoolExecutor, tuple[float, ...]] | None = None


def _start_worker(config: SenderConfig) -> None:
    """Build this sender process's PutEventsSender (credentials from boto3's usual chain) and threads."""
    import boto3

    from app.events.wire import SignedPutEvents

    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the reader decides and drains
    client = SignedPutEvents(config.url, config.region, config.signing_name, boto3.session.Session().get_credentials())
    sender = PutEventsSender(lambda: client, config.tracking_id)  # paced here, by the thread handing calls out
    _worker = (sender, Pace(config.tps), ThreadPoolExecutor(config.threads, thread_name_prefix="put-events"),
               config.delays)


def _send_chunk(calls: list[list[Event]]) -> list[Outcome]:
    """Send a chunk of calls on this process's threads, paced; return their outcomes in order."""
    assert _worker is not None
    sender, pace, pool, delays = _worker
    futures = []
    for call in calls:
        pace.wait()
        futures.append(pool.submit(send_with_retries, sender.send_call, call, pace, delays))
    return [future.result() for future in futures]


class ProcessDispatcher:
    """Send chunks of calls in `processes` sender processes (spawned: no lock or thread crosses a fork)."""

    def __init__(self, config: SenderConfig, processes: int, chunk: int = 200) -> None:
        self._chunk = chunk
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(config,))
        self.capacity = processes * 2  # futures (here chunks of calls) queued or in flight before the reader waits

    def submit(self, calls: Sequence[Sequence[Event]]) -> list[Future[list[Outcome]]]:
        return [self._pool.submit(_send_chunk, [list(c) for c in calls[start:start + self._chunk]])
                for start in range(0, len(calls), self._chunk)]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


Dispatcher = ThreadDispatcher | ProcessDispatcher


def sender_config(client: Any, tracking_id: str, max_tps: float, processes: int, threads: int) -> SenderConfig:
    """Return the sender processes' configuration from the service's personalize-events client."""
    from app.events.wire import SignedPutEvents

    url, region, signing_name = SignedPutEvents.endpoint_of(client)
    return SenderConfig(url, region, signing_name, tracking_id, max_tps * PACE_MARGIN / processes, threads,
                        RETRY_DELAYS)
