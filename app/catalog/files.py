"""Files the service reads (catalog, batch output) from a path, file://, s3:// or https://, kept fresh."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Generic, Protocol, TypeVar
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


def where(uri: str) -> str:
    """Return where a URI points, "local", "s3" or "http", from its scheme; raise FileError for any other."""
    scheme = urlparse(uri).scheme.lower() if "://" in uri else ""
    kinds = {"": "local", "file": "local", "s3": "s3", "https": "http", "http": "http"}
    if scheme not in kinds:
        raise FileError(f"{uri}: unsupported scheme {scheme!r}; use a path, file://, s3:// or https://.")
    return kinds[scheme]


def open_file(uri: str, s3_client_factory: Callable[[], Any], http_session: Any = None) -> FileReader:
    """Pick the reader for a URI by its scheme (http_session: a requests.Session for https:// feeds)."""
    kind = where(uri)
    if kind == "s3":
        return S3File(uri, s3_client_factory)
    return HttpFile(uri, http_session) if kind == "http" else LocalFile(uri)


# -- many files read as one, streamed: the output of a batch inference job --------------------------------------

JOB_SUFFIXES = (".out", ".jsonl")  # with .json.out; each optionally .gz
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Part:
    """One file of a job: where it is, its size as stored (compressed) and its version (mtime, ETag...)."""

    uri: str
    size: int
    version: str


class FileSet(Protocol):
    """The files a job wrote: one file, a folder or an S3 prefix, listed (cheaply) and then streamed."""

    uri: str

    def parts(self) -> list[Part]:
        """Return the job's files in name order; raise FileError when there are none or they cannot be listed."""

    def open(self, part: Part) -> BinaryIO:
        """Return the stored (possibly gzipped) bytes of one part as a stream."""


def is_job_file(name: str) -> bool:
    """Say whether a file name is one a batch inference job writes (*.out, *.json.out, *.jsonl, optionally .gz)."""
    name = name.lower().removesuffix(".gz")
    return name.endswith(JOB_SUFFIXES)


class LocalFiles:
    """One local file, or the job files in a local folder (not its subfolders)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.path = unquote(urlparse(uri).path) if uri.startswith("file://") else uri

    def parts(self) -> list[Part]:
        try:
            if not os.path.isdir(self.path):
                stat = os.stat(self.path)
                return [Part(self.path, stat.st_size, f"{stat.st_mtime_ns}:{stat.st_size}")]
            found = []
            for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
                if entry.is_file() and is_job_file(entry.name):
                    stat = entry.stat()
                    found.append(Part(entry.path, stat.st_size, f"{stat.st_mtime_ns}:{stat.st_size}"))
        except OSError as exc:
            raise FileError(f"{self.uri}: {exc.strerror or exc}.") from exc
        return _some(self.uri, found)

    def open(self, part: Part) -> BinaryIO:
        try:
            return open(part.uri, "rb")
        except OSError as exc:
            raise FileError(f"{part.uri}: {exc.strerror or exc}.") from exc


class S3Files:
    """One S3 object, or the job files under an S3 prefix (s3://bucket/prefix/), listed page by page."""

    def __init__(self, uri: str, client_factory: Callable[[], Any]) -> None:
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise FileError(f"{uri}: an S3 URI must name a bucket, s3://bucket/prefix/ or s3://bucket/key.")
        self.uri = uri
        self.bucket = parsed.netloc
        self.key = parsed.path.lstrip("/")
        self._client_factory = client_factory

    def parts(self) -> list[Part]:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client_factory()
        try:
            if self.key and not self.key.endswith("/") and is_job_file(self.key):
                head = client.head_object(Bucket=self.bucket, Key=self.key)
                return [Part(self.uri, head["ContentLength"], head["ETag"])]
            found = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key):
                for obj in page.get("Contents", []):
                    if is_job_file(obj["Key"]):
                        found.append(Part(f"s3://{self.bucket}/{obj['Key']}", obj["Size"], obj["ETag"]))
        except ClientError as exc:
            raise FileError(f"{self.uri}: S3 answered {exc.response.get('Error', {}).get('Code', 'error')}.") from exc
        except BotoCoreError as exc:
            raise FileError(f"{self.uri}: {exc}.") from exc
        return _some(self.uri, sorted(found, key=lambda part: part.uri))

    def open(self, part: Part) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        key = urlparse(part.uri).path.lstrip("/")
        try:
            return self._client_factory().get_object(Bucket=self.bucket, Key=key)["Body"]  # type: ignore[no-any-return]
        except (BotoCoreError, ClientError) as exc:
            raise FileError(f"{part.uri}: cannot be read ({exc}).") from exc


class HttpFiles:
    """One file on a web server, streamed; its version is its ETag or Last-Modified header."""

    def __init__(self, uri: str, session: Any = None) -> None:
        import requests

        self.uri = uri
        self._session = session if session is not None else requests.Session()

    def parts(self) -> list[Part]:
        # A GET whose body is not read, not a HEAD: a presigned S3 URL is signed for GET only.
        with self._get() as response:
            version = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
            return [Part(self.uri, int(response.headers.get("Content-Length") or 0), version)]

    def open(self, part: Part) -> BinaryIO:
        response = self._get()
        response.raw.decode_content = True  # a Content-Encoding the server added; a .gz file stays gzipped
        return response.raw  # type: ignore[no-any-return]

    def _get(self) -> Any:
        import requests

        try:
            response = self._session.get(self.uri, timeout=HTTP_TIMEOUT_SECONDS, stream=True)
        except requests.RequestException as exc:
            raise FileError(f"{self.uri}: {exc}.") from exc
        if response.status_code != 200:
            response.close()
            raise FileError(f"{self.uri}: the server answered HTTP {response.status_code}.")
        return response


def _some(uri: str, found: list[Part]) -> list[Part]:
    if not found:
        raise FileError(f"{uri}: no batch inference output in it (files named *.out, *.json.out or *.jsonl, "
                        "optionally .gz).")
    return found


def open_files(uri: str, s3_client_factory: Callable[[], Any], http_session: Any = None) -> FileSet:
    """Pick the lister of a job's files by the URI's scheme: a path or folder, s3://bucket/prefix/, https://."""
    kind = where(uri)
    if kind == "s3":
        return S3Files(uri, s3_client_factory)
    return HttpFiles(uri, http_session) if kind == "http" else LocalFiles(uri)


class Counted:
    """A stream that counts the bytes read from it, for a progress bar over compressed input."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data


def iter_lines(uri: str, stream: Any, gzipped: bool) -> Iterator[bytes]:
    """Yield the lines of a stream (gunzipped on the fly), a megabyte read at a time: never the whole file."""
    reader = gzip.GzipFile(fileobj=stream, mode="rb") if gzipped else stream
    rest = b""
    try:
        while chunk := reader.read(CHUNK_BYTES):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines
    except (OSError, EOFError) as exc:
        raise FileError(f"{uri}: not a valid gzip file ({exc}).") from exc
    if rest:
        yield rest


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
