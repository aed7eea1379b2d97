"""app/catalog/files.py: format detection, local files and Reloadable's refresh rules (with a fake clock, no sleeps)."""
from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from app.catalog import files as sources
from app.catalog.files import (
    FileError,
    HttpFile,
    LocalFile,
    Reloadable,
    S3File,
    Snapshot,
    format_of,
    open_file,
)
from app.catalog.items import Catalog, parse_catalog

WAIT = 10  # seconds an Event wait may take before the test fails; never reached when things work


# --- format_of -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "expected"), [
    ("catalog.csv", ("csv", False)),
    ("catalog.csv.gz", ("csv", True)),
    ("/data/CATALOG.CSV.GZ", ("csv", True)),
    ("items.jsonl", ("jsonl", False)),
    ("items.jsonl.gz", ("jsonl", True)),
    ("products.json", ("json", False)),
    ("products.json.gz", ("json", True)),
    ("out/batch-output.json.out", ("jsonl", False)),
    ("out/batch-output.json.out.gz", ("jsonl", True)),
    ("s3://bucket/exports/items.csv.gz", ("csv", True)),
    ("s3://bucket/out/users.json.out", ("jsonl", False)),
    ("file:///var/data/items.jsonl", ("jsonl", False)),
    ("https://feeds.example.com/products.json?token=abc.csv&page=1", ("json", False)),
    ("https://feeds.example.com/v2/items.csv.gz?X-Amz-Signature=f00", ("csv", True)),
    ("https://feeds.example.com/products.jsonl#section.csv", ("jsonl", False)),
])
def test_format_of(uri: str, expected: tuple[str, bool]) -> None:
    assert format_of(uri) == expected


@pytest.mark.parametrize("uri", [
    "catalog.xml", "catalog", "catalog.gz", "catalog.csv.zip", "https://feeds.example.com/products",
    "https://feeds.example.com/feed?format=x.csv",
])
def test_format_of_unknown_suffix(uri: str) -> None:
    with pytest.raises(FileError, match="cannot tell the format") as info:
        format_of(uri)
    assert str(info.value).startswith(uri + ":")


# --- open_file ---------------------------------------------------------------------------------


def test_open_source_picks_the_reader_by_scheme(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    assert isinstance(open_file(str(path), lambda: None), LocalFile)
    assert isinstance(open_file(path.as_uri(), lambda: None), LocalFile)
    s3 = open_file("s3://my-bucket/exports/2024/items.csv.gz", lambda: None)
    assert isinstance(s3, S3File)
    assert (s3.bucket, s3.key, s3.format) == ("my-bucket", "exports/2024/items.csv.gz", "csv")
    for uri in ("https://feeds.example.com/products.json", "http://feeds.example.com/products.json"):
        http = open_file(uri, lambda: None)
        assert isinstance(http, HttpFile)
        assert (http.uri, http.format) == (uri, "json")


@pytest.mark.parametrize("uri", ["ftp://files.example.com/catalog.csv", "gs://bucket/catalog.csv"])
def test_open_source_rejects_other_schemes(uri: str) -> None:
    with pytest.raises(FileError, match="unsupported scheme"):
        open_file(uri, lambda: None)


def test_s3_uri_needs_bucket_and_key() -> None:
    with pytest.raises(FileError, match="s3://bucket/key"):
        open_file("s3://bucket-only/", lambda: None)


# --- LocalFile ---------------------------------------------------------------------------------


CSV = b"ITEM_ID,NAME,URL,PRICE\n1,One,/1,1.5\n2,Two,/2,2\n"
CSV_CHANGED = b"ITEM_ID,NAME,URL,PRICE\n1,One,/1,1.5\n2,Two,/2,2\n3,Three,/3,3\n"


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.csv"
    path.write_bytes(CSV)
    return path


def test_local_source_reads_a_path_and_reports_its_version(catalog_file: Path) -> None:
    source = LocalFile(str(catalog_file))
    snapshot = source.fetch(None)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.data == CSV
    stat = catalog_file.stat()
    assert snapshot.version == f"{stat.st_mtime_ns}:{stat.st_size}"
    assert source.fetch(snapshot.version) is None
    assert source.fetch("0:0") == snapshot


def test_local_source_reads_a_file_url_with_escapes(tmp_path: Path) -> None:
    path = tmp_path / "my items" / "catalog ü.csv.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(CSV))
    uri = path.as_uri()
    assert "%20" in uri
    source = LocalFile(uri)
    assert source.path == str(path)
    assert (source.format, source.uri) == ("csv", uri)
    snapshot = source.fetch(None)
    assert snapshot is not None and snapshot.data == CSV  # already decompressed


def test_local_source_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(FileError) as info:
        LocalFile(str(path)).fetch(None)
    assert str(info.value).startswith(f"{path}: ")
    assert "No such file" in str(info.value)


# --- Reloadable on a real file -------------------------------------------------------------------


def bump_mtime(path: Path) -> None:
    """Give the file a modification time one second later than now-recorded, whatever the clock's resolution."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_load_parses_and_records(catalog_file: Path) -> None:
    holder = Reloadable(LocalFile(str(catalog_file)), parse_catalog, 60, "catalog")
    assert holder._value is None
    catalog = holder.load()
    assert isinstance(catalog, Catalog)
    assert list(catalog.items) == ["1", "2"]
    assert holder._value is catalog
    assert holder.last_error is None


def test_refresh_is_false_when_unchanged_and_true_after_a_change(catalog_file: Path) -> None:
    holder = Reloadable(LocalFile(str(catalog_file)), parse_catalog, 60, "catalog")
    first = holder.load()

    assert holder.refresh() is False
    assert holder._value is first

    catalog_file.write_bytes(CSV_CHANGED)
    bump_mtime(catalog_file)
    assert holder.refresh() is True
    assert holder._value is not first
    assert list(holder._value.items) == ["1", "2", "3"]
    assert holder.refresh() is False


def test_same_size_rewrite_is_seen_through_the_mtime(catalog_file: Path) -> None:
    holder = Reloadable(LocalFile(str(catalog_file)), parse_catalog, 60, "catalog")
    holder.load()
    catalog_file.write_bytes(CSV.replace(b"One", b"Uno"))
    bump_mtime(catalog_file)
    assert holder.refresh() is True
    assert holder._value.items["1"]["name"] == "Uno"


def test_deleted_file_keeps_the_previous_value(catalog_file: Path) -> None:
    holder = Reloadable(LocalFile(str(catalog_file)), parse_catalog, 60, "catalog")
    first = holder.load()
    catalog_file.unlink()
    assert holder.refresh() is False
    assert holder._value is first
    assert holder.last_error is not None and str(catalog_file) in holder.last_error
    assert holder.get() is first


def test_invalid_new_version_keeps_the_previous_value_until_fixed(catalog_file: Path) -> None:
    holder = Reloadable(LocalFile(str(catalog_file)), parse_catalog, 60, "catalog")
    first = holder.load()
    version = holder._version

    catalog_file.write_bytes(b"NAME,PRICE\nno ids here,1\n")
    bump_mtime(catalog_file)
    assert holder.refresh() is False
    assert holder._value is first
    assert holder._version == version
    assert holder.last_error is not None and "no item id column" in holder.last_error

    catalog_file.write_bytes(CSV_CHANGED)
    bump_mtime(catalog_file)
    assert holder.refresh() is True
    assert list(holder._value.items) == ["1", "2", "3"]
    assert holder.last_error is None


def test_load_raises_when_the_first_read_fails(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(b"id\n\n")
    holder = Reloadable(LocalFile(str(path)), parse_catalog, 60, "catalog")
    with pytest.raises(FileError, match="no usable items"):
        holder.load()
    assert holder._value is None
    assert holder.last_error is not None and "no usable items" in holder.last_error


# --- Reloadable's timing, with a fake clock and fake sources --------------------------------------


class FakeClock:
    """Stands in for the time module inside app.catalog.files."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sources, "time", fake)
    return fake


class CountingSource:
    """A source whose answers the test sets; counts fetches and can hold a fetch until released."""

    uri = "fake://things.json"
    format = "json"

    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.threads: list[str] = []
        self.error: str | None = None
        self.data = b"v1"
        self.version = "1"
        self.started = threading.Event()
        self.gate: threading.Event | None = None

    def fetch(self, known_version: str | None) -> Snapshot | None:
        self.calls.append(known_version)
        self.threads.append(threading.current_thread().name)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never released the fetch"
        if self.error is not None:
            raise FileError(self.error)
        if known_version == self.version:
            return None
        return Snapshot(self.data, self.version)


def parse_text(data: bytes, fmt: str, uri: str) -> str:
    return data.decode()


def reload_threads(what: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"reload-{what}"]


def test_get_before_any_load_loads_synchronously(clock: FakeClock) -> None:
    source = CountingSource()
    holder = Reloadable(source, parse_text, 30, "things")
    assert holder.get() == "v1"
    assert source.calls == [None]
    assert source.threads == [threading.current_thread().name]
    assert reload_threads("things") == []


def test_get_after_a_failed_first_load_waits_for_the_interval(clock: FakeClock) -> None:
    source = CountingSource()
    source.error = "fake://things.json: S3 answered AccessDenied."
    holder = Reloadable(source, parse_text, 30, "things")

    with pytest.raises(FileError, match="AccessDenied"):
        holder.get()
    assert len(source.calls) == 1

    clock.now += 29
    for _ in range(3):
        with pytest.raises(FileError, match="AccessDenied"):
            holder.get()
    assert len(source.calls) == 1  # the last error is repeated without touching the source

    clock.now += 1.5
    source.error = None
    assert holder.get() == "v1"
    assert len(source.calls) == 2
    assert holder.last_error is None


def test_get_after_a_failed_retry_raises_the_new_error(clock: FakeClock) -> None:
    source = CountingSource()
    source.error = "first failure"
    holder = Reloadable(source, parse_text, 10, "things")
    with pytest.raises(FileError, match="first failure"):
        holder.get()
    clock.now += 11
    source.error = "second failure"
    with pytest.raises(FileError, match="second failure"):
        holder.get()
    with pytest.raises(FileError, match="second failure"):
        holder.get()
    assert len(source.calls) == 2


def test_refresh_if_due_does_nothing_before_the_interval(clock: FakeClock) -> None:
    source = CountingSource()
    holder = Reloadable(source, parse_text, 30, "things")
    holder.load()
    clock.now += 29.9
    holder.refresh_if_due()
    assert holder.get() == "v1"
    assert len(source.calls) == 1
    assert reload_threads("things") == []


def test_refresh_if_due_reloads_in_a_background_thread(clock: FakeClock) -> None:
    source = CountingSource()
    holder = Reloadable(source, parse_text, 30, "things")
    holder.load()
    source.started.clear()
    source.gate = threading.Event()
    source.data, source.version = b"v2", "2"

    clock.now += 31
    holder.refresh_if_due()  # returns while the fetch is held: requests never wait on I/O
    assert source.started.wait(WAIT)
    [thread] = reload_threads("things")
    assert thread is not threading.current_thread()
    assert holder._value == "v1"

    clock.now += 31  # due again, but a refresh is still running: no second one starts
    holder.refresh_if_due()
    assert len(source.calls) == 2
    assert len(reload_threads("things")) == 1

    source.gate.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert holder._value == "v2"
    assert source.calls == [None, "1"]
    assert source.threads[1] == "reload-things"


def test_get_serves_the_current_value_and_starts_a_due_refresh(clock: FakeClock) -> None:
    source = CountingSource()
    holder = Reloadable(source, parse_text, 30, "things")
    holder.load()
    source.started.clear()
    source.gate = threading.Event()
    source.data, source.version = b"v2", "2"

    clock.now += 31
    assert holder.get() == "v1"
    assert source.started.wait(WAIT)
    [thread] = reload_threads("things")
    source.gate.set()
    thread.join(WAIT)
    assert holder.get() == "v2"


def test_background_failure_keeps_the_value_and_frees_the_next_refresh(clock: FakeClock) -> None:
    source = CountingSource()
    holder = Reloadable(source, parse_text, 30, "things")
    holder.load()

    source.error = "HTTP 500"
    clock.now += 31
    holder.refresh_if_due()
    for thread in reload_threads("things"):
        thread.join(WAIT)
    assert holder._value == "v1"
    assert holder.last_error == "HTTP 500"

    source.error = None
    source.data, source.version = b"v3", "3"
    clock.now += 31
    holder.refresh_if_due()
    for thread in reload_threads("things"):
        thread.join(WAIT)
    assert holder._value == "v3"
    assert holder.last_error is None
    assert len(source.calls) == 3


def test_background_crash_is_contained(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    source = CountingSource()
    outcomes: list[Any] = [ValueError("parser bug"), "v2"]

    def parse(data: bytes, fmt: str, uri: str) -> str:
        outcome = outcomes.pop(0) if len(source.calls) > 1 else "v1"
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    holder = Reloadable(source, parse, 30, "things")
    holder.load()
    source.version = "2"
    clock.now += 31
    holder.refresh_if_due()
    for thread in reload_threads("things"):
        thread.join(WAIT)
    assert holder._value == "v1"
    assert "reload crashed" in caplog.text

    clock.now += 31
    holder.refresh_if_due()  # the crashed refresh released its lock
    for thread in reload_threads("things"):
        thread.join(WAIT)
    assert holder._value == "v2"
