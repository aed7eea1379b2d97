"""Time one cache hit inside the process, without gunicorn or a load generator: the service's WSGI app
against the bare-Flask yardstick, microseconds per request (best of 5 rounds of 5,000 calls, GC on).

    python -m loadtest.hitpath [--profile]

Steadier than loadtest.bench on a busy machine, so use it to compare two versions of the request path;
the bench still decides the targets. The service runs on the sample catalog with a source in the process
(a batch job's answers skip the answer cache, so they would not be hits), the Redis cache on a redis-server of
the run's own, and production's other defaults, request log lines included (written to /dev/null here).
--profile prints cProfile's top functions for the service.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

from app.components import components
from tests.conftest import FakeRecommender
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
CALLS, ROUNDS = 5000, 5


def caller(app: Any, path: str) -> Callable[[], None]:
    environ = EnvironBuilder(path=path).get_environ()

    def call() -> None:
        statuses: list[str] = []
        body = app(dict(environ), lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(body)
        if hasattr(body, "close"):
            body.close()
        assert statuses[0].startswith("200"), statuses

    return call


def microseconds(call: Callable[[], None]) -> float:
    call()  # the first one fills the caches
    return min(timeit.repeat(call, "import gc; gc.enable()", number=CALLS, repeat=ROUNDS)) / CALLS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recs-metrics-"))
    redis_server = RedisServer().start()  # the run's own: never the Redis other programs share on 6379

    from app import create_app, warm_up
    from loadtest.baseline import app as baseline

    source = FakeRecommender({"user123": ["1740", "1333", "1925", "1000", "1037"]})
    service = create_app({"catalog_uri": str(ROOT / "sample" / "catalog.csv"),
                          "recommendations_uri": str(ROOT / "sample" / "batch-output.json.out"),
                          "cache_redis_url": redis_server.url}, recommender=source)
    warm_up(service)
    with open(os.devnull, "wb") as devnull:
        components(service).request_log.fd = devnull.fileno()
        hit = caller(service, "/recommendations?user_id=user123")
        bare = caller(baseline, "/recommendations")
        print(f"bare Flask  {microseconds(bare):6.1f} us/request")
        print(f"cache hit   {microseconds(hit):6.1f} us/request")
        assert len(source.calls) == 1, "every call after the first must be a cache hit"
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(lambda: [hit() for _ in range(CALLS)])
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        components(service).request_log.flush()
    redis_server.stop()


if __name__ == "__main__":
    main()
