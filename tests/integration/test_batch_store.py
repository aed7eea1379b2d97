"""The batch store for real: the tests' own Redis, SQLite files shared by several processes, an S3 prefix (moto)."""
from __future__ import annotations

import gzip
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import responses
from flask import Flask

from app.catalog.files import LocalFiles, S3Files, open_files
from app import warm_up
from app.components import components
from app.sources.batch import decode, store_key
from app.sources.batch_load import LoadBusy, load_job
from app.sources.batch_store import RedisBatchStore, SQLiteBatchStore
from tests.batch_files import job_line, write_folder, write_job
from tests.conftest import FakeAws
from tests.integration.conftest import BUCKET
from tests.redis_server import free_port

SET_A = [str(1000 + n) for n in range(25)]
SET_B = [str(1100 + n) for n in range(25)]
USERS = 3_000
WAIT = 20  # seconds a poll may take before the test fails; never reached when things work


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def job(folder: Path, answer: list[str], users: int = USERS, files: int = 3) -> LocalFiles:
    write_folder(folder, users, files, lambda i: answer)
    return LocalFiles(str(folder))


def read(store: Any, user_id: str) -> list[str]:
    version = store.current()
    return decode(store.get(version, store_key(user_id, None))) if version else []


# --- Redis --------------------------------------------------------------------------------------------------


def test_redis_holds_one_version_at_a_time_in_named_buckets(redis_client: redis.Redis, tmp_path: Path) -> None:
    redis_client.config_resetstat()
    store = RedisBatchStore(redis_client, buckets=64)
    first = load_job(job(tmp_path / "a", SET_A), store, grace=0)
    assert all(read(store, f"user{i}") == SET_A for i in (0, 1234, USERS - 1))
    assert read(store, "nobody") == []
    assert {store.bucket_key(first.version, b).encode() for b in range(64)} <= set(redis_client.keys("*"))

    second = load_job(job(tmp_path / "b", SET_B), store, grace=0)

    assert read(store, "user0") == SET_B and second.removed == [first.version]
    left = redis_client.keys("*")
    assert not [key for key in left if first.version.encode() in key]  # the old version's keys are gone
    assert redis_client.smembers(store.versions) == {second.version.encode()}
    # Cluster-safe: single-key commands and plain pipelines only (redis-py's lock runs one-key scripts).
    used = {name.removeprefix("cmdstat_") for name in redis_client.info("commandstats")}
    assert "hset" in used and not used & {"scan", "multi", "exec", "eval"}  # (KEYS above is the test's own)


def test_redis_load_lock_is_held_once_per_redis(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    one, other = RedisBatchStore(redis_client), RedisBatchStore(redis.Redis.from_url(redis_url))
    with one.lock() as held:
        assert held
        with pytest.raises(LoadBusy):
            load_job(job(tmp_path / "a", SET_A, users=10), other, grace=0)
    assert load_job(LocalFiles(str(tmp_path / "a")), other, grace=0).users == 10


def test_the_service_serves_a_job_from_redis(make_app: Callable[..., Flask], redis_url: str, tmp_path: Path) -> None:
    write_folder(tmp_path / "job", 20, 2, lambda i: ["1740", "1333", "1000"])
    app = make_app(cache_redis_url=redis_url, recommendations_uri=str(tmp_path / "job"))

    response = app.test_client().get("/recommendations?user_id=user19&num_results=3")

    assert response.status_code == 200
    assert [item["id"] for item in response.get_json()] == ["1740", "1333", "1000"]
    assert RedisBatchStore(redis.Redis.from_url(redis_url)).current().users == 20
    assert not (tmp_path / "data" / "batch").exists()  # no SQLite copy beside Redis


def test_a_batch_store_out_of_reach_sends_requests_to_the_fallback(make_app: Callable[..., Flask], redis_url: str,
                                                                   tmp_path: Path) -> None:
    write_folder(tmp_path / "job", 20, 1, lambda i: ["1740"])
    app = make_app(cache_redis_url=redis_url, recommendations_uri=str(tmp_path / "job"))
    client = app.test_client()
    assert client.get("/recommendations?user_id=user1").headers["X-Recommendations-Source"] == "batch"
    store = components(app).batch_store
    store.client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # nothing listens there

    response = client.get("/recommendations?user_id=user1")

    assert response.status_code == 200
    assert response.headers["X-Recommendations-Source"] == "fallback"
    assert response.headers["X-Fallback-Reason"] == "batch_store_unavailable"


# --- SQLite files shared by the processes of a host ---------------------------------------------------------


def _reader(folder: str, stop: Any, results: Any) -> None:
    """Read random users until told to stop; report the sequence of jobs seen (A, B) and any mixed answer."""
    store = SQLiteBatchStore(folder)
    seen: list[str] = []
    mixed = 0
    while not stop.is_set():
        answer = read(store, f"user{random.randrange(USERS)}")
        kind = "A" if answer == SET_A else "B" if answer == SET_B else "?"
        mixed += kind == "?"
        if not seen or seen[-1] != kind:
            seen.append(kind)
    results.put((seen, mixed))


def _loader(folder: str, job_folder: str, results: Any) -> None:
    try:
        report = load_job(LocalFiles(job_folder), SQLiteBatchStore(folder), grace=0)
        results.put("already" if report.already else "loaded")
    except LoadBusy:
        results.put("busy")


def test_sqlite_versions_switch_whole_for_several_reader_processes(tmp_path: Path) -> None:
    folder = str(tmp_path / "batch")
    load_job(job(tmp_path / "a", SET_A), SQLiteBatchStore(folder), grace=0)
    context = multiprocessing.get_context("fork")
    stop, results = context.Event(), context.Queue()
    readers = [context.Process(target=_reader, args=(folder, stop, results)) for _ in range(3)]
    for process in readers:
        process.start()
    time.sleep(0.2)  # the readers read job A for a moment (what they see is asserted below, not timed)
    load_job(job(tmp_path / "b", SET_B), SQLiteBatchStore(folder), grace=0.5)
    time.sleep(0.2)
    stop.set()
    outcomes = [results.get(timeout=WAIT) for _ in readers]
    for process in readers:
        process.join(WAIT)

    assert all(mixed == 0 for _, mixed in outcomes)
    assert all(seen == ["A", "B"] for seen, _ in outcomes), outcomes  # never back to A once B was seen


def test_sqlite_job_is_loaded_once_however_many_processes_try(tmp_path: Path) -> None:
    folder = str(tmp_path / "batch")
    write_folder(tmp_path / "a", 30_000, 2, lambda i: SET_A)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    loaders = [context.Process(target=_loader, args=(folder, str(tmp_path / "a"), results)) for _ in range(3)]
    for process in loaders:
        process.start()
    outcomes = sorted(results.get(timeout=WAIT) for _ in loaders)
    for process in loaders:
        process.join(WAIT)

    assert outcomes.count("loaded") == 1 and set(outcomes) <= {"loaded", "busy", "already"}
    assert read(SQLiteBatchStore(folder), "user29999") == SET_A
    assert len([name for name in os.listdir(folder) if name.endswith(".sqlite3")]) == 1


# --- S3 ------------------------------------------------------------------------------------------------------


def upload_job(client: Any, folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        client.put_object(Bucket=BUCKET, Key=prefix + path.name, Body=path.read_bytes())


def test_an_s3_prefix_of_gzipped_files_is_one_job(s3: Any, tmp_path: Path, make_app: Callable[..., Flask]) -> None:
    write_folder(tmp_path / "job", 3_000, 3, lambda i: ["1740", "1333"] if i % 2 else ["1000"])
    upload_job(s3, tmp_path / "job", "out/job-1/")
    s3.put_object(Bucket=BUCKET, Key="out/job-1/_SUCCESS", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="out/job-10/part-000.json.out", Body=b"{not this job's\n")
    s3.put_object(Bucket=BUCKET, Key="out/job-1/manifest.json", Body=b"{}")
    files = S3Files(f"s3://{BUCKET}/out/job-1/", lambda: s3)

    assert [part.uri.rsplit("/", 1)[1] for part in files.parts()] == [
        "part-000.json.out.gz", "part-001.json.out.gz", "part-002.json.out.gz"]
    app = make_app({"aws": FakeAws(s3=lambda: s3)}, recommendations_uri=f"s3://{BUCKET}/out/job-1/")
    client = app.test_client()
    assert [item["id"] for item in client.get("/recommendations?user_id=user2999&num_results=2").get_json()] == [
        "1740", "1333"]
    assert [item["id"] for item in client.get("/recommendations?user_id=user0&num_results=1").get_json()] == ["1000"]
    store = components(app).batch_store
    first = store.current()
    assert first.users == 3_000

    write_job(tmp_path / "job" / "part-002.json.out.gz", [f"user{i}" for i in range(2000, 3000)],
              lambda i: ["1111"])
    upload_job(s3, tmp_path / "job", "out/job-1/")  # a new ETag for one file: a new version of the job
    loader = components(app).batch.loader
    loader.grace = 0
    loader.check()
    assert store.current().id != first.id
    assert read(store, "user2999") == ["1111"] and read(store, "user0") == ["1000"]


def test_a_redis_down_at_start_does_not_stop_the_service(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    write_folder(tmp_path / "job", 5, 1, lambda i: ["1740"])
    app = make_app(cache_redis_url=f"redis://127.0.0.1:{free_port()}/0", recommendations_uri=str(tmp_path / "job"))

    warm_up(app)  # the answer cache and the batch store are out of reach: the fallbacks answer

    response = app.test_client().get("/recommendations?user_id=user1")
    assert response.status_code == 200 and response.headers["X-Recommendations-Source"] == "fallback"


def test_an_https_job_file_is_streamed_and_versioned_by_its_etag(tmp_path: Path) -> None:
    body = gzip.compress(b"".join(job_line(f"user{i}", SET_A) + b"\n" for i in range(50)))
    url = "https://exports.example.com/out/job.json.out.gz"
    store = SQLiteBatchStore(str(tmp_path / "batch"))
    with responses.RequestsMock() as web:
        web.get(url, body=body, headers={"ETag": '"v1"', "Content-Length": str(len(body))})
        files = open_files(url, lambda: None)

        assert [(part.version, part.size) for part in files.parts()] == [('"v1"', len(body))]
        assert load_job(files, store, grace=0).users == 50
    assert read(store, "user49") == SET_A


# --- a Redis Cluster --------------------------------------------------------------------------------------------


def test_a_job_is_served_and_switched_on_a_redis_cluster(make_app: Callable[..., Flask], cluster_url: str,
                                                         tmp_path: Path) -> None:
    """The service's own client on a 3-node cluster: load under the lock, serve, switch, delete the old by name."""
    from redis.cluster import RedisCluster

    in_catalog = ["1740", "1333", "1000"]
    write_folder(tmp_path / "a", 300, 2, lambda i: in_catalog)
    app = make_app(cache_redis_url=cluster_url, recommendations_uri=str(tmp_path / "a"))
    client = app.test_client()
    answers = [client.get(f"/recommendations?user_id=user{n}&num_results=3") for n in (0, 150, 299)]
    assert [r.headers["X-Recommendations-Source"] for r in answers] == ["batch"] * 3
    assert [[item["id"] for item in r.get_json()] for r in answers] == [in_catalog] * 3
    store = components(app).batch_store
    first = store.current().id

    second = load_job(job(tmp_path / "b", SET_B, users=300, files=1), store, grace=0)

    assert read(store, "user7") == SET_B and second.removed == [first]
    cluster = RedisCluster.from_url(cluster_url, socket_timeout=1)
    try:
        keys = cluster.keys(target_nodes=RedisCluster.ALL_NODES)
        buckets = {key for key in keys if key.startswith(b"recs:batch:") and b":meta" not in key}
        assert not [key for key in keys if first.encode() in key]  # the old version's keys are gone
        nodes = {cluster.get_node_from_key(key).name for key in buckets}
        assert len(nodes) == 3  # the buckets are spread over every node, not pinned to one by a hash tag
    finally:
        cluster.close()
