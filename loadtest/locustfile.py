"""Locust: the realistic Braze send against a running service (loadtest/mix.lua is its deterministic wrk twin).

What a send looks like from the service's side:
  * a stream of mostly distinct recipients, each asked for 2-3 times within a few seconds (the email's parts
    and Braze's retries), the repeats arriving on whichever connection is free, some while the first is
    still in flight;
  * UNKNOWN_SHARE of them ids Personalize has never seen (new sign-ups: new.RUN.N+braze@example.com);
  * QA's occasional repeated curl of one fixed user (QA_USER, every QA_INTERVAL_S seconds).

Run it headless (one process; 64 simulated Braze connections, 15 s):

    python -m loadtest.bench --serve 120 &     # prints SERVICE http://127.0.0.1:PORT and STANDIN http://...
    STANDIN_URL=http://127.0.0.1:SPORT UNKNOWN_SHARE=0.1 .venv/bin/locust -f loadtest/locustfile.py \\
        --headless --host http://127.0.0.1:PORT -u 64 -r 64 -t 15s --only-summary

(or any running service, e.g. `make run` on :8000, without STANDIN_URL). Locust prints its usual table
(requests, failures, percentiles per kind: known / unknown / repeat / qa) and then one line:
  BRAZE MIX: N distinct users (K unknown), R requests, Personalize calls C = C/N per user
The calls come from the stand-in's counter (GET STANDIN_URL/_control/calls) and are only printed when
STANDIN_URL is set; the distinct users are counted here as they are made.

Settings (environment): UNKNOWN_SHARE (0.1), REPEATS_MIN / REPEATS_MAX (2 / 3, requests per recipient),
REPEAT_WITHIN_S (3: the repeats fall due within this many seconds), QA_USER (user123), QA_INTERVAL_S (2),
NUM_RESULTS (3), SEND_WAIT_MS (0: pause between one connection's requests), RUN_ID (keeps runs' users
apart; default: the start time), SEED (for the random choices), STANDIN_URL.
A response fails when it is not 200 or its body is not a JSON array (or object with format=object).
Tested with locust 2.47.0.
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import time
import urllib.request
from typing import Any
from urllib.parse import quote

from locust import FastHttpUser, constant, events, task

UNKNOWN_SHARE = float(os.environ.get("UNKNOWN_SHARE", "0.1"))
REPEATS_MIN = int(os.environ.get("REPEATS_MIN", "2"))
REPEATS_MAX = int(os.environ.get("REPEATS_MAX", "3"))
REPEAT_WITHIN_S = float(os.environ.get("REPEAT_WITHIN_S", "3"))
QA_USER = os.environ.get("QA_USER", "user123")
QA_INTERVAL_S = float(os.environ.get("QA_INTERVAL_S", "2"))
NUM_RESULTS = os.environ.get("NUM_RESULTS", "3")
SEND_WAIT_S = float(os.environ.get("SEND_WAIT_MS", "0")) / 1000
RUN_ID = os.environ.get("RUN_ID") or str(int(time.time()))
STANDIN_URL = (os.environ.get("STANDIN_URL") or "").rstrip("/")


class Send:
    """The recipients of one send, shared by every simulated connection of this process (gevent: no locks)."""

    def __init__(self, seed: str | None) -> None:
        self.random = random.Random(seed)
        self.numbers = itertools.count(1)
        self.due: list[tuple[float, int, str, str]] = []  # (due time, tie-break, path, kind) of the repeats
        self.users = self.unknown = self.requests = 0
        self.qa_asked = False
        self.calls_at_start = 0

    def next(self) -> tuple[str, str]:
        """Return (path, kind): a repeat that has fallen due, else a new recipient with its repeats planned."""
        self.requests += 1
        now = time.monotonic()
        if self.due and self.due[0][0] <= now:
            _, _, path, _ = heapq.heappop(self.due)
            return path, "repeat"
        n = next(self.numbers)
        self.users += 1
        if self.random.random() < UNKNOWN_SHARE:
            self.unknown += 1
            kind, user_id = "unknown", f"new.{RUN_ID}.{n}+braze@example.com"
        else:
            kind, user_id = "known", f"u{RUN_ID}-{n}"
        path = recommendations_path(user_id)
        for _ in range(self.random.randint(REPEATS_MIN, REPEATS_MAX) - 1):
            heapq.heappush(self.due, (now + self.random.uniform(0, REPEAT_WITHIN_S), n, path, kind))
        return path, kind

    def distinct_users(self) -> int:
        return self.users + (1 if self.qa_asked else 0)


def recommendations_path(user_id: str) -> str:
    # Braze's template escapes the id (url_param_escape): a '+' must arrive as %2B, not as a space.
    return f"/recommendations?user_id={quote(user_id, safe='')}&num_results={NUM_RESULTS}"


SEND = Send(os.environ.get("SEED"))


def check(response: Any) -> None:
    """Fail anything that is not a 200 with the array (or object) a Liquid template can render."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}")
    elif not (response.content or b"")[:1] in (b"[", b"{"):
        response.failure("body is not JSON")
    else:
        response.success()


class BrazeConnection(FastHttpUser):
    """One of Braze's connections during a send: asks for the next recipient as soon as it is free."""

    wait_time = constant(SEND_WAIT_S)

    @task
    def recipient(self) -> None:
        path, kind = SEND.next()
        with self.client.get(path, name=f"/recommendations [{kind}]", catch_response=True) as response:
            check(response)


class QaCurl(FastHttpUser):
    """QA checking the same user by hand, again and again."""

    fixed_count = 1
    wait_time = constant(QA_INTERVAL_S)

    @task
    def curl(self) -> None:
        SEND.qa_asked = True
        SEND.requests += 1
        with self.client.get(recommendations_path(QA_USER), name="/recommendations [qa]",
                             catch_response=True) as response:
            check(response)


def standin_calls() -> int | None:
    if not STANDIN_URL:
        return None
    try:
        with urllib.request.urlopen(STANDIN_URL + "/_control/calls", timeout=5) as answer:  # noqa: S310 - local
            return int(json.loads(answer.read())["total"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"BRAZE MIX: cannot read the stand-in's calls at {STANDIN_URL}: {exc}")
        return None


@events.test_start.add_listener
def on_test_start(**_: Any) -> None:
    SEND.calls_at_start = standin_calls() or 0


@events.quitting.add_listener
def on_quitting(**_: Any) -> None:
    time.sleep(1 if STANDIN_URL else 0)  # requests locust stopped waiting for still call Personalize
    calls = standin_calls()
    users = SEND.distinct_users()
    line = f"BRAZE MIX: {users} distinct users ({SEND.unknown} unknown), {SEND.requests} requests"
    if calls is not None:
        calls -= SEND.calls_at_start
        line += f", Personalize calls {calls} = {calls / max(users, 1):.3f} per user"
    print(line, flush=True)
