"""Time cache misses inside the process: CPU microseconds per request, each for a user not seen before.

    python -m loadtest.misspath [--calls 1500]

One request after another against the Personalize stand-in (a process of its own, answering at once), timed
with the process's CPU time, so what else the machine runs weighs in less than on loadtest.bench's req/s.
Prints, best of 3 rounds: boto3's GetRecommendations alone, the service's call alone (PersonalizeRuntime,
app/sources/personalize.py), a whole miss through the service's WSGI app (with a Redis of its own and
production's other defaults, request log lines written to /dev/null), and the bare boto3 proxy
(loadtest/proxy.py) through its WSGI app. The bench still decides the targets.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/misspath"
ROUNDS = 3
users = itertools.count()


def wsgi_miss(app: Any) -> Callable[[], None]:
    """Return a call of GET /recommendations on app for a new user, checking that Personalize answered."""

    def call() -> None:
        environ = EnvironBuilder(path="/recommendations", query_string=f"user_id=miss-{next(users)}").get_environ()
        answers: list[tuple[str, list[tuple[str, str]]]] = []
        body = app(environ, lambda status, headers, exc_info=None: answers.append((status, headers)))
        b"".join(body)
        body.close()
        status, headers = answers[0]
        assert status.startswith("200") and dict(headers).get("X-Recommendations-Source", "personalize") == \
            "personalize", answers

    return call


def cpu_microseconds(call: Callable[[], None], calls: int) -> float:
    for _ in range(50):  # connections, caches and first-use costs
        call()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1500)
    args = parser.parse_args()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recs-metrics-"))
    standin = subprocess.Popen([sys.executable, "-m", "tests.standin.personalize", "--port", "0", "--items-from",
                                str(ROOT / "sample" / "catalog.csv"), "--arn", ARN], cwd=ROOT, stdout=subprocess.PIPE)
    redis_server = RedisServer().start()  # the run's own: never the Redis other programs share on 6379
    try:
        assert standin.stdout is not None
        os.environ.update(AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME="http://" + standin.stdout.readline().decode().split()[1],
                          AWS_ACCESS_KEY_ID="misspath", AWS_SECRET_ACCESS_KEY="misspath", AWS_REGION="us-east-1",
                          PERSONALIZE_CAMPAIGN_ARN=ARN)
        from app import create_app, warm_up
        from app.components import components
        from app.sources.personalize import PersonalizeRuntime, request_for
        from loadtest.proxy import app as proxy

        service = create_app({"catalog_uri": str(ROOT / "sample" / "catalog.csv"), "cache_redis_url": redis_server.url,
                              "personalize_campaign_arn": ARN})
        warm_up(service)
        parts = components(service)
        client = parts.aws.personalize_runtime()
        runtime = PersonalizeRuntime(client, parts.aws.credentials())
        with open(os.devnull, "wb") as devnull:
            parts.request_log.fd = devnull.fileno()
            for label, call in (
                ("boto3 GetRecommendations", lambda: client.get_recommendations(**request_for(ARN, f"u{next(users)}", 10))),
                ("PersonalizeRuntime call", lambda: runtime.get_recommendations(**request_for(ARN, f"u{next(users)}", 10))),
                ("service, whole miss", wsgi_miss(service)),
                ("bare boto3 proxy", wsgi_miss(proxy)),
            ):
                print(f"{label:26} {cpu_microseconds(call, args.calls):7.0f} us CPU/request", flush=True)
            parts.request_log.flush()
    finally:
        standin.kill()
        redis_server.stop()


if __name__ == "__main__":
    main()
