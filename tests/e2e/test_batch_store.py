"""gunicorn serving a batch job of 200,000 users from the shared store: the workers' memory stays small, and a
new job is switched to under load with no error and no answer that mixes the two jobs."""
from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from app.sources.batch import POINTER_SECONDS
from tests.batch_files import write_folder
from tests.e2e.conftest import Gunicorn

USERS = 200_000
JOB_A = ["1000", "1037", "1074", "1111", "1148"]  # every user of job A gets these, in this order
JOB_B = ["2110", "2147", "2184", "2221", "2258"]
MAX_WORKER_RSS_MB = 250  # the bound; the whole job in a worker's memory was ~400 MB per 200k users
WAIT = 30.0  # seconds the switch may take before the test fails; never reached when things work


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def served_version(data: Path) -> str:
    """Return the version the store points at (the service's own pointer file, in the test's DATA_DIR)."""
    return str(json.loads((data / "batch" / "current.json").read_bytes())["id"])


def ids(response: requests.Response) -> list[str]:
    return [item["id"] for item in response.json()]


def test_a_big_job_is_served_from_the_store_and_switched_to_under_load(gunicorn_factory: Callable[..., Gunicorn],
                                                                         tmp_path: Path) -> None:
    write_folder(tmp_path / "job-a", USERS, 2, lambda i: JOB_A)
    write_folder(tmp_path / "job-b", USERS, 2, lambda i: JOB_B)
    current = tmp_path / "current"  # the job the service reads: a link switched as a deploy would
    current.symlink_to(tmp_path / "job-a")
    data = tmp_path / "data"
    server = gunicorn_factory(PERSONALIZE_CAMPAIGN_ARN=None, CACHE_REDIS_URL=None, RECOMMENDATIONS_URI=str(current),
                              DATA_DIR=str(data), CATALOG_REFRESH_SECONDS="1", WEB_CONCURRENCY="2")
    url = server.url + "/recommendations"
    first = requests.get(url, params={"user_id": f"user{USERS - 1}", "num_results": 5}, timeout=5)
    assert first.status_code == 200 and ids(first) == JOB_A
    assert first.headers["X-Recommendations-Source"] == "batch"

    answers: list[tuple[float, str]] = []  # (when the request started, "A" / "B" / what else it was)
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = session.get(url, params={"user_id": f"user{random.randrange(USERS)}", "num_results": 5},
                                       timeout=5)
            except requests.RequestException as exc:
                errors.append(repr(exc))
                continue
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:200]}")
                continue
            got = ids(response)
            answers.append((started, "A" if got == JOB_A else "B" if got == JOB_B else f"mixed {got}"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # answers of job A under load first (what they were is asserted below)
        job_a = served_version(data)
        swap = tmp_path / "swap"
        swap.symlink_to(tmp_path / "job-b")
        os.replace(swap, current)  # the new job, whole, in one step
        deadline = time.monotonic() + WAIT
        while served_version(data) == job_a:  # a worker notices within a second, loads B, then switches
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        switched = time.monotonic()
        time.sleep(POINTER_SECONDS + 1.0)  # every worker has looked at the pointer again by then
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    assert not errors, errors[:5]
    assert not [kind for _, kind in answers if kind not in ("A", "B")]  # every answer wholly A or wholly B
    assert any(kind == "A" for _, kind in answers) and any(kind == "B" for _, kind in answers)
    late = [kind for started, kind in answers if started > switched + POINTER_SECONDS + 0.2]
    assert late and set(late) == {"B"}, f"{late.count('A')} answers of job A after the switch"
    for pid in server.worker_pids():
        if os.path.exists(f"/proc/{pid}"):
            assert rss_mb(pid) < MAX_WORKER_RSS_MB, f"worker {pid}: {rss_mb(pid):.0f} MB"
    old_files = [name for name in os.listdir(data / "batch") if name.endswith(".sqlite3")]
    assert len(old_files) <= 2  # the old version goes once the grace period has passed

