"""`gunicorn wsgi:app` (several workers, threads) on a 3-node Redis Cluster with one node killed mid-run.

Braze must see nothing of it: every request a 200 within its 2 s, while client threads keep asking; once the node
is back, every user's answer is cached again (the keys of the restarted node included) without restarting gunicorn.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.e2e.conftest import Gunicorn
from tests.e2e.test_resilience import clients_asking, failures, fetch, latency_line, report, tally, wait_for
from tests.redis_server import RedisClusterServers
from tests.standin.personalize import StandinHandle

BRAZE_WAITS = 2.0
USERS = [f"cluster-user-{n:02d}" for n in range(30)]  # about ten on each node


def test_a_cluster_node_killed_under_load_costs_no_request_and_its_keys_are_used_again_once_back(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle, redis_cluster: RedisClusterServers,
    cluster_url: str,
) -> None:
    server = gunicorn_factory(CACHE_REDIS_URL=cluster_url, CACHE_LOCAL_SECONDS="0")
    victim = redis_cluster.nodes[0]
    with clients_asking(server.url, USERS, threads=4, spread=7) as outcomes:
        assert wait_for(lambda: len(outcomes) >= 40, timeout=10)  # healthy, every user cached once
        killed_at = time.monotonic()
        victim.kill(signal.SIGKILL)
        assert wait_for(lambda: sum(o.started > killed_at for o in outcomes) >= 60, timeout=20)  # down
        victim.start()  # same port, same cluster identity, empty
        restarted_at = time.monotonic()
        assert wait_for(lambda: sum(o.started > restarted_at for o in outcomes) >= 40, timeout=20)  # back

    def every_user_hits() -> bool:
        for user in USERS:
            fetch(None, server.url, user)  # a miss (re)writes the answer wherever its key lives
        return all(fetch(None, server.url, user).headers.get("X-Cache") == "HIT" for user in USERS)

    resumed = wait_for(every_user_hits, timeout=20, interval=0.1)
    during = [o for o in outcomes if killed_at <= o.started < restarted_at]
    report("Redis Cluster node SIGKILLed mid-run, then restarted (4 client threads, 30 users)",
           during=f"{latency_line(during)} x_cache={tally(during, lambda o: o.headers.get('X-Cache'))}",
           all_statuses=tally(outcomes, lambda o: o.status), standin_calls=standin.calls()["total"])
    assert not failures(outcomes), failures(outcomes)
    slow = [round(o.seconds, 2) for o in outcomes if o.seconds >= BRAZE_WAITS]
    assert not slow, f"{len(slow)} requests took Braze's 2 s or more: {slow[:10]}"
    x_cache = tally(during, lambda o: o.headers.get("X-Cache"))
    assert x_cache.get("HIT") and x_cache.get("MISS"), f"the other nodes kept serving, the victim's keys not: {x_cache}"
    assert resumed, "some users' answers were never cached again after the node came back"
    assert server.process.poll() is None, "gunicorn died"
