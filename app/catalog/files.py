"""Files the service reads (catalog, batch output) from a path, file://, s3:// or https://, kept fresh."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "json")
HTTP_TIMEOUT_SECONDS = 30


class FileError(Exception):
    """A file could not be read or parsed; the message says which and why."""


@dataclass(frozen=True)
class Snapshot:
    """The bytes of a file (already decompressed) and the version they were read at."""

    data: bytes
    version: str


class FileReader(Protocol):
    uri: str
    format: str

    def fetch(self, known_version: str | None) -> Snapshot | None:
        """Return the content if its version differs from known_version, else None."""


def format_of(uri: str) -> tuple[str, bool]:
    """Return (format, gzipped) from the file name's suffix, e.g. items.csv.gz -> ("csv", True)."""
    name = urlparse(uri).path.lower() if "://" in uri else uri.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[:-3]
    for fmt in FORMATS:
        if name.endswith("." + fmt):
            return fmt, gzipped
    # Personalize writes batch inference output as NAME.json.out: JSON lines.
    if name.endswith(".json.out") or name.endswith(".out"):
        return "jsonl", gzipped
    raise FileError(f"{uri}: cannot tell the format; the name must end in .csv, .jsonl or .json (optionally .gz).")


def _decompress(uri: str, data: bytes, gzipped: bool) -> bytes:
    if not gzipped:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise FileError(f"{uri}: not a valid gzip file ({exc}).") from exc


class LocalFile:
    """A file on this machine; its version is its modification time and size."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.path = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
        self.format, self._gzipped = format_of(self.path)

    def fetch(self, known_version: str | None) -> Snapshot | None:
        try:
            stat = os.stat(self.path)
            version = f"{stat.st_mtime_ns}:{stat.st_size}"
            if version == known_version:
                return None
            with open(self.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise FileError(f"{self.uri}: {exc.strerror or exc}.") from exc
        return Snapshot(_decompress(self.uri, data, self._gzipped), version)


class S3File:
    """An S3 object; its version is its ETag."""

    def __init__(self, uri: str, client_factory: Callable[[], Any]) -> None:
        parsed = urlparse(uri)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise FileError(f"{uri}: an S3 URI must name a bucket and a key, s3://bucket/key.")
        self.uri = uri
        self.bucket = parsed.netloc
        self.key = parsed.path.lstrip("/")
        self.format, self._gzipped = format_of(self.key)
        self._client_factory = client_factory

    def fetch(self, known_version: str | None) -> Snapshot | None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client_factory()
        try:
            if known_version is not None:
                head = client.head_object(Bucket=self.bucket, Key=self.key)
                if head["ETag"] == known_version:
                    return None
            obj = client.get_object(Bucket=self.bucket, Key=self.key)
            data = obj["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise FileError(f"{self.uri}: S3 answered {code}.") from exc
        except BotoCoreError as exc:
            raise FileError(f"{self.uri}: {exc}.") from exc
        return Snapshot(_decompress(self.uri, data, self._gzipped), obj["ETag"])


class HttpFile:
    """A feed on a web server; its version is the ETag or Last-Modified header, else a content hash."""

    def __init__(self, uri: str, session: Any = None) -> None:
        import requests

        self.uri = uri
        self.format, self._gzipped = format_of(uri)
        self._session = session if session is not None else requests.Session()

    def fetch(self, known_version: str | None) -> Snapshot | None:
        import requests

        headers = {}
        if known_version and known_version.startswith("etag:"):
            headers["If-None-Match"] = known_version[5:]
        elif known_version and known_version.startswith("modified:"):
            headers["If-Modified-Since"] = known_version[9:]
        try:
            response = self._session.get(self.uri, headers=headers, timeout=HTTP_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise FileError(f"{self.uri}: {exc}.") from exc
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise FileError(f"{self.uri}: the server answered HTTP {response.status_code}.")
        if etag := response.headers.get("ETag"):
            version = "etag:" + etag
        elif modified := response.headers.get("Last-Modified"):
            version = "modified:" + modified
        else:
            version = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if version == known_version:
            return None
        return Snapshot(_decompress(self.uri, response.content, self._gzipped), version)


def open_file(uri: str, s3_client_factory: Callable[[], Any], http_session: Any = None) -> FileReader:
    """Pick the reader for a URI by its scheme (http_session: a requests.Session for https:// feeds)."""
    scheme = urlparse(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("", "file"):
        return LocalFile(uri)
    if scheme == "s3":
        return S3File(uri, s3_client_factory)
    if scheme in ("https", "http"):
        return HttpFile(uri, http_session)
    raise FileError(f"{uri}: unsupported scheme {scheme!r}; use a path, file://, s3:// or https://.")


T = TypeVar("T")


class Reloadable(Generic[T]):
    """Hold the parsed content of a source, re-read in the background when it changes.

    Requests never wait on I/O: `refresh_if_due()` only starts a background check once the interval
    has passed. A failed reload keeps the last good value and logs why. `check(old, new)` may refuse a new
    version that parses but looks broken beside the one served, returning (reason, sentence): the old one
    stays, one ERROR line says why and `on_refuse(reason)` is told, once per version of the source.
    """

    def __init__(self, source: FileReader, parse: Callable[[bytes, str, str], T], interval: float, what: str,
                 on_load: Callable[[T], None] | None = None,
                 check: Callable[[T, T], tuple[str, str] | None] | None = None,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.source = source
        self.what = what
        self._parse = parse
        self._interval = interval
        self._value: T | None = None
        self._version: str | None = None
        self._refused_version: str | None = None  # a version check() turned down: not re-read until it changes
        self._next_check = 0.0
        self._lock = threading.Lock()  # held while a background refresh runs
        self._first_load = threading.Lock()
        self._on_load = on_load  # told of each new version, e.g. to record its size in the metrics
        self._check = check
        self._on_refuse = on_refuse
        self.last_error: str | None = None

    def load(self) -> T:
        """Load now (at start-up), raising FileError when the source cannot be read or parsed."""
        self.refresh(raise_errors=True)
        assert self._value is not None
        return self._value

    def get(self) -> T:
        """Return the current content, loading it first if nothing is loaded yet.

        Without a good version, one load is tried per interval; in between, the last error is raised
        at once rather than making every request wait on a broken source.
        """
        value = self._value
        if value is not None:
            self.refresh_if_due()
            return value
        with self._first_load:
            if self._value is None:
                if self.last_error is not None and time.monotonic() < self._next_check:
                    raise FileError(self.last_error)
                return self.load()
            return self._value

    def refresh(self, raise_errors: bool = False) -> bool:
        """Re-read the source if it changed; return True when a new version was loaded."""
        self._next_check = time.monotonic() + self._interval
        try:
            known = (self._refused_version or self._version) if self._value is not None else None
            snapshot = self.source.fetch(known)
            if snapshot is None:
                if self._refused_version is None:
                    self.last_error = None  # the source answers again, with the version we hold
                return False
            value = self._parse(snapshot.data, self.source.format, self.source.uri)
        except FileError as exc:
            self.last_error = str(exc)
            if raise_errors:
                raise
            log.error("%s reload failed, still serving the previous version: %s", self.what, exc)
            return False
        old = self._value
        refusal = self._check(old, value) if self._check is not None and old is not None else None
        if refusal is not None:
            reason, sentence = refusal
            self._refused_version, self.last_error = snapshot.version, f"{self.source.uri}: reload refused, {sentence}."
            log.error("%s reload refused, still serving the previous version: %s: %s.", self.what, self.source.uri,
                      sentence)
            if self._on_refuse is not None:
                self._on_refuse(reason)
            return False
        self._refused_version = None
        self._value, self._version = value, snapshot.version
        self.last_error = None
        log.info("%s loaded from %s (version %s)", self.what, self.source.uri, snapshot.version)
        if self._on_load is not None:
            self._on_load(value)
        return True

    def refresh_if_due(self) -> None:
        """Start a background re-check when the interval has passed and none is running."""
        if time.monotonic() < self._next_check or not self._lock.acquire(blocking=False):
            return
        self._next_check = time.monotonic() + self._interval

        def run() -> None:
            try:
                self.refresh()
            except Exception:  # a reload must never take the worker down
                log.exception("%s reload crashed, still serving the previous version", self.what)
            finally:
                self._lock.release()

        threading.Thread(target=run, name=f"reload-{self.what}", daemon=True).start()
