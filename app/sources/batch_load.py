"""Load a batch inference job into the batch store: streamed line by line, written in pipelines, switched to
whole. Used by `flask --app wsgi load-batch` and by each worker's BatchLoader, under the store's load lock, so
a job is loaded once per host (SQLite) or once per Redis, however many workers start at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.catalog.files import Counted, FileError, FileSet, Part, iter_lines
from app.commands.progress import Progress
from app.sources.batch import parse_line
from app.sources.batch_store import GRACE_SECONDS, BatchStore, Version, Writer

log = logging.getLogger(__name__)

CHUNK_USERS = 5000  # answers per pipeline (Redis) or executemany (SQLite)
FIRST_BAD_LINES = 10  # bad lines reported by line; the rest only counted
BUSY_POLL_SECONDS = 0.5  # how often a worker looks again while another process loads the first version


class LoadBusy(Exception):
    """Another process holds the store's load lock."""


@dataclass
class LoadReport:
    """What a load did, for the command's summary and the log."""

    version: str
    users: int = 0
    bad: int = 0
    first_bad: list[str] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    already: bool = False  # the store already served this version: nothing was written
    removed: list[str] = field(default_factory=list)

    def summary(self, uri: str) -> str:
        if self.already:
            return f"load-batch: {uri} (version {self.version}) is already the one served; nothing to do."
        rate = self.users / self.seconds if self.seconds else 0.0
        return (f"load-batch: {self.users:,} answers from {self.files} file(s) in {self.seconds:.1f} s "
                f"({rate:,.0f}/s), {self.bad:,} bad lines; version {self.version} is served"
                + (f", {len(self.removed)} old version(s) removed." if self.removed else "."))


def job_version(uri: str, parts: list[Part]) -> str:
    """Return the version of a job: a hash of its URI and its files' names, sizes and versions."""
    listing = json.dumps([uri, [(part.uri, part.size, part.version) for part in parts]]).encode()
    return hashlib.sha256(listing).hexdigest()[:16]


def load_job(files: FileSet, store: BatchStore, *, parts: list[Part] | None = None, grace: float = GRACE_SECONDS,
             progress: Callable[[int], Progress] | None = None) -> LoadReport:
    """Load the job into the store unless its version is already served; raise LoadBusy or FileError.

    progress(estimated answers) makes the progress display; its total is re-estimated from the compressed
    bytes read so far, since a job's line count is not known before it is read.
    """
    parts = parts if parts is not None else files.parts()
    report = LoadReport(job_version(files.uri, parts), files=len(parts))
    started = time.monotonic()
    with store.lock() as held:
        if not held:
            raise LoadBusy("another process is loading the batch store")
        current = store.current()
        if current is not None and current.id == report.version:
            report.already = True
            return report
        total_bytes = max(sum(part.size for part in parts), 1)
        writer = store.begin(report.version, files.uri)
        try:
            with progress(0) if progress is not None else _quiet() as bar:
                done_bytes = 0
                for part in parts:
                    stream = Counted(files.open(part))
                    try:
                        done_bytes = _load_part(part, stream, writer, report, bar, done_bytes, total_bytes)
                    finally:
                        close = getattr(stream.stream, "close", None)
                        if close is not None:
                            close()
            if not report.users:
                raise FileError(f"{files.uri}: no usable lines ({report.bad:,} bad).")
        except BaseException:
            try:
                writer.abort()
            except Exception:  # the store failing too: say so, but raise what stopped the load
                log.exception("batch load stopped; dropping its partial version failed too")
            raise
        version = writer.finish(report.users)
        report.seconds = time.monotonic() - started
        log.info("batch job %s loaded as version %s: %d answers, %d bad lines", files.uri, version.id,
                 report.users, report.bad)
        report.removed = store.remove_old(version, grace)
    return report


def _load_part(part: Part, stream: Counted, writer: Writer, report: LoadReport, bar: Progress, done_bytes: int,
               total_bytes: int) -> int:
    """Stream one file into the writer; return the compressed bytes read so far over all files."""
    name = os.path.basename(part.uri.rstrip("/"))
    pending: list[tuple[bytes, bytes]] = []

    def flush() -> None:
        writer.put(pending)
        report.users += len(pending)
        read = done_bytes + stream.count
        bar.estimate(int(report.users * total_bytes / read) if read else 0)  # before the line advance may write
        bar.advance(len(pending))
        pending.clear()

    for number, line in enumerate(iter_lines(part.uri, stream, part.uri.lower().endswith(".gz")), start=1):
        parsed = parse_line(line)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            report.bad += 1
            if len(report.first_bad) < FIRST_BAD_LINES:
                report.first_bad.append(f"{name} line {number}: {parsed}")
            continue
        pending.append(parsed)
        if len(pending) >= CHUNK_USERS:
            flush()
    if pending:
        flush()
    return done_bytes + stream.count


def _quiet() -> Progress:
    return Progress("batch", 0, "answers", terminal=False, line_seconds=float("inf"), stream=_LogStream(None))


class _LogStream:
    """Where a worker's load progress goes: its lines become log records (JSON, like every other line)."""

    def __init__(self, logger: logging.Logger | None) -> None:
        self.logger = logger

    def write(self, text: str) -> int:
        if self.logger is not None and text.strip():
            self.logger.info("%s", text.strip())
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


class BatchLoader:
    """Keep this host's (or this Redis's) store on the job's newest version, from a thread of each worker.

    Every interval it lists the job (sizes, mtimes, ETags: no download) and, when the store has none, or the
    job differs from the one served at start or has changed since, loads it under the store's lock: the worker
    that gets the lock loads, the others keep serving the old version and look again. Started after gunicorn
    forks (a thread does not survive a fork).
    """

    def __init__(self, files: FileSet, store: BatchStore, interval: float, grace: float = GRACE_SECONDS,
                 on_load: Callable[[Version], None] | None = None) -> None:
        self.files = files
        self.store = store
        self.interval = interval
        self.grace = grace
        self.on_load = on_load
        self.last_error: str | None = None
        self.source_error: str | None = None  # the job could not be listed or read (not a store failure)
        self.attempted = threading.Event()  # set once this process's first check is done (loaded or failed)
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._seen: str | None = None  # the version last reported to on_load
        self._listed: str | None = None  # the job's version at this worker's last successful look

    def start(self) -> bool:
        """Start this process's loader thread, once; return True when this call started it."""
        if self._pid == os.getpid():
            return False
        with self._start_lock:
            if self._pid == os.getpid():
                return False
            self._pid = os.getpid()
            self.attempted = threading.Event()
            threading.Thread(target=self._run, name="batch-loader", daemon=True).start()
            return True

    def noticed(self, version: Version) -> None:
        """Record a version a reader found (this worker or another loaded it), for the metrics."""
        if version.id != self._seen:
            self._seen = version.id
            if self.on_load is not None:
                self.on_load(version)

    def _run(self) -> None:
        while True:
            try:
                wait = self.check()
            except Exception:  # the loop must outlive any failure; the next check tries again
                log.exception("batch loader crashed; trying again in %.0f s", self.interval)
                wait = self.interval
            self.attempted.set()
            time.sleep(wait)

    def check(self) -> float:
        """Load the job if the store lacks its current version; return the seconds until the next check."""
        try:
            parts = self.files.parts()
            version = job_version(self.files.uri, parts)
            current = self.store.current()
            # Loaded, or unchanged since this worker last looked: the store keeps what it serves, which may be
            # another job an operator loaded with `load-batch URI` since.
            if current is not None and version in (current.id, self._listed):
                self._listed = version
                self.last_error = self.source_error = None
                self.noticed(current)
                return self.interval
            progress = _logged_progress()
            report = load_job(self.files, self.store, parts=parts, grace=self.grace, progress=progress)
            self._listed = version
        except LoadBusy:  # another process loads: look again soon while nothing is served, else at the interval
            return BUSY_POLL_SECONDS if self.store.current() is None else self.interval
        except FileError as exc:
            self.last_error = self.source_error = str(exc)
            log.error("batch job not loaded: %s", exc)
            return self.interval
        except self.store.errors as exc:
            self.last_error = f"the batch store failed: {exc}"
            log.error("batch job not loaded, the store failed: %s", exc)
            return self.interval
        self.last_error = self.source_error = None
        if report.first_bad:
            log.warning("batch job %s: %d bad lines; first: %s", self.files.uri, report.bad,
                        "; ".join(report.first_bad))
        current = self.store.current()
        if current is not None:
            self.noticed(current)
        return self.interval


def _logged_progress() -> Callable[[int], Progress]:
    """Return the progress of a load run by the service: a log line every few seconds, never a bar."""
    return lambda total: Progress("batch load", total, "answers", terminal=False, stream=_LogStream(log))
