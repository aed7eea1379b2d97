"""Batch jobs: every file form streamed into the store, bad lines, version switching, reruns, load-batch."""
from __future__ import annotations

import gzip
import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app.catalog import files as file_module
from app.components import components
from app.catalog.files import FileError, LocalFiles, iter_lines, open_files
from app.commands.progress import Progress
from app.sources.batch import decode, parse_line, store_key
from app.sources.batch_load import BatchLoader, LoadBusy, job_version, load_job
from app.sources.batch_store import SQLiteBatchStore, Version
from tests.batch_files import job_line, write_folder, write_job

WAIT = 10  # seconds a poll may take before the test fails; never reached when things work
SET_A = [str(1000 + n) for n in range(5)]
SET_B = [str(1020 + n) for n in range(5)]


def store_in(tmp_path: Path) -> SQLiteBatchStore:
    return SQLiteBatchStore(str(tmp_path / "batch"))


def answer(store: SQLiteBatchStore, user_id: str | None = None, item_id: str | None = None) -> list[str]:
    version = store.current()
    assert version is not None
    return decode(store.get(version, store_key(user_id, item_id)))


# --- parsing and streaming ----------------------------------------------------------------------------------


def test_a_line_becomes_a_compact_key_and_answer() -> None:
    assert parse_line(job_line("u1", ["10", "11"])) == (b"u:u1", b"10\n11")
    assert parse_line(job_line("i9", ["12"], kind="itemId")) == (b"i:i9", b"12")
    assert parse_line(b'{"input": {"userId": "u2"}, "output": {"recommendedItems": []}}') == (b"u:u2", b"")
    assert parse_line(b"   ") is None


@pytest.mark.parametrize(("line", "reason"), [
    (b"{not json", "not valid JSON"),
    (b'{"input": {}, "output": {"recommendedItems": ["1"]}}', "no input.userId or input.itemId"),
    (b'{"input": {"userId": "u"}, "output": {}, "error": null}', "no output.recommendedItems"),
    (b'{"input": {"userId": "u"}, "output": null, "error": {"errorMessage": "x"}}', "Personalize reported"),
    (b'{"input": {"userId": "u"}, "output": {"recommendedItems": ["a\\nb"]}}', "line break"),
    (b'[1, 2]', "no input.userId"),
])
def test_an_unusable_line_says_why(line: bytes, reason: str) -> None:
    result = parse_line(line)
    assert isinstance(result, str) and reason in result


def test_lines_are_streamed_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_module, "CHUNK_BYTES", 7)
    data = b"first line\nsecond\n\nthird without newline"
    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            reads.append(size if size is not None else -1)
            return super().read(size)

    assert list(iter_lines("x", Recording(data), False)) == [b"first line", b"second", b"", b"third without newline"]
    assert reads and all(0 < size <= 7 for size in reads)  # never the whole file at once
    assert list(iter_lines("x.gz", Recording(gzip.compress(data)), True))[-1] == b"third without newline"


def test_a_broken_gzip_file_is_a_file_error() -> None:
    with pytest.raises(FileError, match="not a valid gzip"):
        list(iter_lines("broken.gz", io.BytesIO(b"not gzip at all"), True))


@pytest.mark.parametrize("name", ["job.json.out", "job.out", "job.jsonl", "job.json.out.gz", "job.out.gz",
                                  "job.jsonl.gz"])
def test_one_file_of_every_form_is_loaded(tmp_path: Path, name: str) -> None:
    path = write_job(tmp_path / "in" / name, ["ann", "bob"], lambda i: SET_A if i == 0 else SET_B)
    store = store_in(tmp_path)

    report = load_job(open_files(str(path), lambda: None), store, grace=0)

    assert (report.users, report.bad, report.files) == (2, 0, 1)
    assert answer(store, "ann") == SET_A and answer(store, "bob") == SET_B
    assert answer(store, "nobody") == []


def test_a_folder_of_user_and_item_files_is_one_job(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    write_folder(folder, 30, 3, lambda i: SET_A[: 1 + i % 5])
    write_job(folder / "related.jsonl", ["1000"], lambda i: SET_B, kind="itemId")
    (folder / "_SUCCESS").write_bytes(b"")  # what else a job folder holds is not read
    (folder / "manifest.json").write_bytes(b"{}")
    (folder / "sub").mkdir()
    write_job(folder / "sub" / "other.json.out", ["zed"], lambda i: SET_B)
    store = store_in(tmp_path)

    report = load_job(LocalFiles(str(folder)), store, grace=0)

    assert (report.users, report.files) == (31, 4)
    assert [answer(store, f"user{i}") for i in (0, 7, 29)] == [SET_A[:1], SET_A[:3], SET_A[:5]]
    assert answer(store, item_id="1000") == SET_B
    assert answer(store, "1000") == []  # an item's related items are not a user's answer
    assert answer(store, "zed") == []


def test_a_folder_without_job_files_is_a_file_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileError, match="no batch inference output"):
        LocalFiles(str(tmp_path)).parts()


def test_bad_lines_are_counted_and_the_first_ten_named(tmp_path: Path) -> None:
    good = [job_line(f"u{i}", SET_A) for i in range(3)]
    bad = [b"{broken"] * 12
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "job.jsonl").write_bytes(b"\n".join(good[:1] + bad + good[1:]) + b"\n")
    store = store_in(tmp_path)

    report = load_job(LocalFiles(str(tmp_path / "in")), store, grace=0)

    assert (report.users, report.bad) == (3, 12)
    assert report.first_bad == [f"job.jsonl line {n}: " + str(parse_line(b"{broken")) for n in range(2, 12)]


def test_a_job_with_no_usable_line_is_refused_and_the_old_version_stays(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    load_job(LocalFiles(str(write_job(tmp_path / "a.jsonl", ["ann"], lambda i: SET_A))), store, grace=0)
    (tmp_path / "b.jsonl").write_bytes(b"{broken\n")

    with pytest.raises(FileError, match="no usable lines"):
        load_job(LocalFiles(str(tmp_path / "b.jsonl")), store, grace=0)

    assert answer(store, "ann") == SET_A
    assert sorted(os.listdir(tmp_path / "batch")) == sorted(["current.json", f"{store.current().id}.sqlite3",
                                                             "load.lock"])


# --- versions -----------------------------------------------------------------------------------------------


def test_the_version_changes_with_any_file_of_the_job(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    write_folder(folder, 4, 2, lambda i: SET_A)
    first = job_version(str(folder), LocalFiles(str(folder)).parts())
    assert job_version(str(folder), LocalFiles(str(folder)).parts()) == first
    write_job(folder / "part-001.json.out.gz", ["user2", "user3", "user9"], lambda i: SET_A)
    assert job_version(str(folder), LocalFiles(str(folder)).parts()) != first


def test_readers_see_the_old_version_until_the_new_one_is_complete(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_in(tmp_path)
    job_a = write_job(tmp_path / "a" / "job.jsonl", [f"u{i}" for i in range(12_000)], lambda i: SET_A)
    job_b = write_job(tmp_path / "b" / "job.jsonl", [f"u{i}" for i in range(12_000)], lambda i: SET_B)
    load_job(LocalFiles(str(job_a)), store, grace=0)
    version_a = store.current()
    seen_mid_load: list[list[str]] = []
    begin = store.begin

    def watching_begin(version_id: str, uri: str) -> Any:
        writer = begin(version_id, uri)
        put = writer.put

        def put_and_look(answers: list[tuple[bytes, bytes]]) -> None:
            put(answers)
            seen_mid_load.append(answer(store, "u0"))  # after some of B is written: still wholly A

        writer.put = put_and_look  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(store, "begin", watching_begin)
    report = load_job(LocalFiles(str(job_b)), store, grace=0)

    assert len(seen_mid_load) >= 2 and all(seen == SET_A for seen in seen_mid_load)
    assert answer(store, "u0") == SET_B and answer(store, "u11999") == SET_B
    assert report.removed == [version_a.id]
    assert not os.path.exists(store.path(version_a.id))  # the old version's file is gone after the switch


def test_an_interrupted_load_leaves_the_old_version_and_a_rerun_completes(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_in(tmp_path)
    load_job(LocalFiles(str(write_job(tmp_path / "a.jsonl", ["ann"], lambda i: SET_A))), store, grace=0)
    job_b = LocalFiles(str(write_folder(tmp_path / "b", 12_000, 2, lambda i: SET_B)[0].parent))
    begin = store.begin

    def interrupted_begin(version_id: str, uri: str) -> Any:
        writer = begin(version_id, uri)

        def put(answers: list[tuple[bytes, bytes]]) -> None:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the job

        writer.put = put  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(store, "begin", interrupted_begin)
    with pytest.raises(KeyboardInterrupt):
        load_job(job_b, store, grace=0)
    assert answer(store, "ann") == SET_A and answer(store, "user0") == []
    assert not [name for name in os.listdir(tmp_path / "batch") if name.endswith(".part")]

    monkeypatch.setattr(store, "begin", begin)
    report = load_job(job_b, store, grace=0)
    assert report.users == 12_000 and answer(store, "user11999") == SET_B and answer(store, "ann") == []
    assert load_job(job_b, store, grace=0).already  # a third run has nothing to do


def test_the_old_version_stays_readable_for_the_grace_period(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_in(tmp_path)
    load_job(LocalFiles(str(write_job(tmp_path / "a.jsonl", ["ann"], lambda i: SET_A))), store, grace=0)
    old = store.current()

    class Clock:  # the store's time: sleeping moves it on, and is recorded
        now = time.time()
        slept: list[float] = []

        @classmethod
        def time(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, seconds: float) -> None:
            assert os.path.exists(store.path(old.id))  # still readable while the grace period runs
            cls.slept.append(seconds)
            cls.now += seconds

    monkeypatch.setattr("app.sources.batch_store.time", Clock)
    load_job(LocalFiles(str(write_job(tmp_path / "b.jsonl", ["ann"], lambda i: SET_B))), store, grace=30)
    assert sum(Clock.slept) == pytest.approx(30)  # removed only once the grace period since the switch is over
    assert not os.path.exists(store.path(old.id))


def test_a_second_loader_is_told_the_lock_is_held(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    job = LocalFiles(str(write_job(tmp_path / "a.jsonl", ["ann"], lambda i: SET_A)))
    with store.lock() as held:
        assert held
        with pytest.raises(LoadBusy):
            load_job(job, store, grace=0)
    assert load_job(job, store, grace=0).users == 1


def test_a_worker_loader_loads_once_and_picks_up_a_changed_job(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    path = write_job(tmp_path / "job.jsonl", ["ann"], lambda i: SET_A)
    seen: list[Version] = []
    loader = BatchLoader(LocalFiles(str(path)), store, interval=60, grace=0, on_load=seen.append)

    assert loader.check() == 60 and answer(store, "ann") == SET_A
    first = store.current()
    assert loader.check() == 60 and store.current() == first  # unchanged: not loaded again
    write_job(path, ["ann", "bob"], lambda i: SET_B)
    loader.check()
    assert answer(store, "bob") == SET_B and [v.users for v in seen] == [1, 2]

    path.unlink()
    loader.check()
    assert loader.source_error is not None and answer(store, "bob") == SET_B  # the job vanished: keep serving


# --- the service and the command ----------------------------------------------------------------------------


def test_the_service_serves_a_gzipped_folder_from_the_store(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    folder = tmp_path / "job"
    write_folder(folder, 10, 2, lambda i: ["1740", "1333"])
    app = make_app(recommendations_uri=str(folder))
    client = app.test_client()

    response = client.get("/recommendations?user_id=user9&num_results=2")
    assert response.status_code == 200
    assert [item["id"] for item in response.get_json()] == ["1740", "1333"]
    assert response.headers["X-Recommendations-Source"] == "batch"
    assert client.get("/readyz").status_code == 200
    folder = tmp_path / "data" / "batch"
    assert len([name for name in os.listdir(folder) if name.endswith(".sqlite3")]) == 1
    assert os.stat(folder).st_mode & 0o777 == 0o700  # private: whoever can write it changes what is served
    assert {os.stat(folder / name).st_mode & 0o777 for name in os.listdir(folder)} == {0o600}


def test_readyz_is_503_until_the_job_is_in_the_store(make_app: Callable[..., Flask], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.sources.batch.FIRST_WAIT_SECONDS", 0)
    folder = tmp_path / "job"
    write_folder(folder, 10, 1, lambda i: ["1740"])
    app = make_app(recommendations_uri=str(folder))
    parts = components(app)
    with parts.batch_store.lock():  # another process is loading: this worker's loader waits
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert "batch" in response.get_json()["reason"]
    deadline = time.monotonic() + WAIT  # the lock is free: this worker's loader loads at its next look
    while (status := app.test_client().get("/readyz").status_code) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_load_batch_command_loads_and_says_so_in_one_line(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    folder = tmp_path / "job"
    write_folder(folder, 50, 3, lambda i: SET_A)
    with open(folder / "part-000.json.out.gz", "ab") as fh:
        fh.write(gzip.compress(b"{broken\n"))  # a second gzip member, as concatenated files are
    runner = make_app().test_cli_runner()

    result = runner.invoke(args=["load-batch", str(folder), "--grace", "0"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "50 answers from 3 file(s)" in lines[0] and "1 bad lines" in lines[0]
    assert "part-000.json.out.gz line 18: not valid JSON" in result.stderr
    again = runner.invoke(args=["load-batch", str(folder)], catch_exceptions=False)
    assert again.exit_code == 0 and "already the one served" in again.stdout


def test_load_batch_command_names_an_unreadable_job(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    result = make_app().test_cli_runner().invoke(args=["load-batch", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "No such file or directory" in result.output


def test_a_job_loaded_by_hand_stays_until_the_services_own_job_changes(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    own = write_job(tmp_path / "own.jsonl", ["ann"], lambda i: SET_A)
    loader = BatchLoader(LocalFiles(str(own)), store, interval=60, grace=0)
    loader.check()
    load_job(LocalFiles(str(write_job(tmp_path / "other.jsonl", ["ann"], lambda i: SET_B))), store, grace=0)

    loader.check()
    assert answer(store, "ann") == SET_B  # `load-batch other.jsonl` is not undone by the next look

    write_job(own, ["ann", "bob"], lambda i: SET_A)
    loader.check()
    assert answer(store, "ann") == SET_A  # the service's own job changed: it is loaded and served


def test_a_load_away_from_a_terminal_writes_progress_lines_with_rate_and_time_left(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    write_folder(folder, 12_000, 3, lambda i: SET_A)
    out = io.StringIO()

    def progress(total: int) -> Progress:
        return Progress("load-batch", total, "users", stream=out, terminal=False, line_seconds=0)

    load_job(LocalFiles(str(folder)), store_in(tmp_path), grace=0, progress=progress)

    lines = out.getvalue().splitlines()
    assert len(lines) >= 3  # one a chunk here (line_seconds=0), then the summary
    assert all("users/s" in line for line in lines)
    first = re.match(r"load-batch: 4,000/([\d,]+) users \((\d+)%\), [\d,.]+ users/s, about .* left$", lines[0])
    assert first is not None, lines[0]
    assert 10_000 <= int(first.group(1).replace(",", "")) <= 14_000  # estimated from the bytes read so far
    assert lines[-1].startswith("load-batch: 12,000 users in ")


def test_an_estimated_total_moves_the_bar_only_when_it_changed_enough() -> None:
    stream = io.StringIO()
    with Progress("load-batch", 0, stream=stream, terminal=True) as bar:
        bar.advance(100)
        bar.estimate(1_000)
        assert bar.total == 1_000
        bar.estimate(1_020)  # within 5%: rich would forget the rate (and the time left) on every new total
        assert bar.total == 1_000
        bar.estimate(2_000)
        assert bar.total == 2_000
        bar.advance(2_100)  # the estimate fell short: the bar ends full

    assert "2200/2200" in stream.getvalue()


def test_a_repeat_after_a_switch_gets_the_new_job_not_bytes_rendered_before(make_app: Callable[..., Flask],
                                                                            tmp_path: Path) -> None:
    """Rendered bodies are kept for repeats within CACHE_LOCAL_SECONDS, but never a batch answer's: the e2e
    switch under load caught job A's bytes served after job B was switched to."""
    write_folder(tmp_path / "a", 10, 1, lambda i: ["1740", "1333"])
    app = make_app(recommendations_uri=str(tmp_path / "a"), cache_local_seconds=5)
    parts = components(app)
    parts.service.recommender.inner.pointer_seconds = 0  # each request looks at the store's pointer
    client = app.test_client()
    assert [i["id"] for i in client.get("/recommendations?user_id=user3&num_results=2").get_json()] == ["1740", "1333"]
    write_folder(tmp_path / "b", 10, 1, lambda i: ["1000", "1037"])
    load_job(LocalFiles(str(tmp_path / "b")), parts.batch_store, grace=0)

    response = client.get("/recommendations?user_id=user3&num_results=2")

    assert [i["id"] for i in response.get_json()] == ["1000", "1037"]
    assert response.headers["X-Recommendations-Source"] == "batch"
