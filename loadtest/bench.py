"""Benchmark the service as production runs it: gunicorn + Redis cache + Personalize (stand-in) over HTTP.

    python -m loadtest.bench [--duration 10] [--only NAME ...] [--latency-ms 50] [--redis node|cluster]
    python -m loadtest.bench --serve 300      # just the stand-in + service, for locust or py-spy

One run starts, on this machine only (127.0.0.1): the Personalize stand-in (a process of its own, run by
tests/standin/personalize.py; latency --latency-ms, 50 ms by default), the service under `gunicorn wsgi:app` exactly as production runs it
(gunicorn.conf.py, CACHE_REDIS_URL; a fresh gunicorn and an empty cache for every scenario, so each can run
alone), and two yardsticks under the worker settings gunicorn.conf.py gives (WEB_CONCURRENCY, WEB_THREADS,
worker class, keep-alive): a bare-Flask route returning a constant array (loadtest/baseline.py) and a bare
boto3 proxy that calls the stand-in on every request (loadtest/proxy.py). wrk (Debian's `wrk`, -t2) drives
each scenario for --duration seconds (after a 1 s warm-up, except the upstream-fault ones):

    baseline   bare Flask, 64 connections                          yardstick for hits and the others
    proxy      boto3 proxy, 64 and 256 connections                 yardstick for misses
    hits       100 users, all cached (hits.lua), 64 connections    -> bare Flask; run twice each, alternating
               with bare Flask, better run kept
    misses     a new user every request (misses.lua), 64 and 256   -> boto3 proxy at the same connections
    cpu        misses, 256, the service and the proxy both with 64  -> boto3 proxy, req/s and CPU us/request
               threads per worker (CPU-bound, not thread-bound); run twice each, alternating, better run kept
    mix        the Braze mix (mix.lua, = locustfile.py), 64        -> bare Flask; Personalize calls vs users
    slow       misses with the stand-in at 1500 ms, 64             -> bare Flask; non-2xx, p99 vs budget
    failing    misses with the stand-in answering 500, 64          -> bare Flask; non-2xx, p99 vs budget
    memory     a 1,000,000-item catalog: load time and gunicorn's total RSS / PSS
    events     the Braze mix again while POST /events takes 20 requests of 10 events a second, forwarded to a
               PutEvents stand-in (10 ms) -> mix: recommendation p99 within +10%; every event arrives
    batch-load load-batch of 1,000,000 users x 25 items in 3 gzipped files, into Redis and into SQLite:
               users/s, store bytes per user (Redis INFO used_memory; the SQLite file)
    batch-serve that job served from Redis and from SQLite, 64 connections   -> cache hits; start -> ready;
               then a 40-user job served, for its workers' RSS
    batch-10m  10,000,000 users (--batch-users) loaded into SQLite and served; each worker's RSS beside a
               40-user job's (heavy: minutes, about 2 GB of disk; only run when named with --only)
    currents   ingest-currents of 1,000,000 email clicks in 20 Avro files into the PutEvents stand-in (10 ms):
               events/s, calls of 10, each event once, the peak calls a second against PUT_EVENTS_MAX_TPS
               (loadtest/currents.py, which also runs alone)

--only NAME (repeatable, or comma-separated) runs those scenarios and the yardsticks they are compared to.
The service runs with production's defaults, its JSON request log lines included (they go to the
scenario's log file). Each scenario prints one row: req/s, p50, p99, errors (non-2xx + socket errors),
Personalize calls per request, the CPU seconds gunicorn's processes used per request (steadier than req/s
when something else on the machine takes CPU), req/s as a ratio to its yardstick, and a note: for misses, mix, slow and failing where the answers
came from (X-Recommendations-Source, counted by sources.lua), for mix the stand-in's calls against the
distinct users mix.lua made, for slow and failing the non-2xx count and p99 against REQUEST_BUDGET_MS + 100.
Then every target with PASS or FAIL (a scenario not run shows "-"); besides the issue's targets, misses and
mix must be answered by Personalize, not by the fallback. The exit status is 1 when a target that ran failed. Needs redis-server (the bench starts its own on free ports, never using 6379) and wrk.
Scenario knobs for mix.lua (UNKNOWN_SHARE, QA_EVERY, ...) pass through the environment.

--redis cluster runs the service against a 3-node Redis Cluster the bench starts on loopback ports
(tests/redis_server.py's RedisClusterServers, no replicas) instead of one redis-server; the targets are the same.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from loadtest import currents
from tests.redis_server import RedisClusterServers, RedisServer
from tests.standin.personalize import Control
from tests.standin.personalize_events import EventsControl

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/bench"
HIT_USERS = 100  # the users hits.lua asks for
CATALOG_ROWS = 1_000_000
SCENARIOS = ("baseline", "proxy", "hits", "misses", "cpu", "mix", "events", "slow", "failing", "memory", "batch-load",
             "batch-serve", "batch-10m", "currents")
NEEDS = {"misses": {"proxy"}, "mix": {"baseline"}, "slow": {"baseline"},
         "failing": {"baseline"}, "events": {"baseline", "mix"}, "batch-serve": {"hits", "batch-load"},
         "batch-10m": {"hits"}}
HEAVY = {"batch-10m"}  # run only when named with --only
# The CPU-bound miss scenario: threads (and Personalize calls) per worker so many that 2 workers x CPU_THREADS /
# latency is far above what the CPUs can serve, for the service and the boto3 proxy alike.
CPU_THREADS = 64
CPU_CONNECTIONS = 256
EVENTS_TRACKING_ID = "bench-tracker"
EVENT_REQUESTS_PER_SECOND = 20  # each with EVENTS_PER_REQUEST events: 200 events a second
EVENTS_PER_REQUEST = 10
BATCH_USERS = 1_000_000  # batch-load and batch-serve
BATCH_ITEMS = 25
BATCH_FILES = 3
BATCH_10M = 10_000_000


# -- processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise SystemExit(f"{' '.join(map(str, process.args))} exited with {process.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gunicorn_settings() -> dict[str, Any]:
    """Return what gunicorn.conf.py gives production (it reads WEB_CONCURRENCY etc. from the environment)."""
    before = dict(os.environ)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    # Reading the file also sets PROMETHEUS_MULTIPROC_DIR (a folder it made): each service must make its own.
    if conf.get("METRICS_FOLDER_MADE"):
        shutil.rmtree(conf["METRICS_FOLDER_MADE"], ignore_errors=True)
    os.environ.clear()
    os.environ.update(before)
    return {"workers": int(conf.get("workers", 1)), "threads": int(conf.get("threads", 1)),
            "worker_class": str(conf.get("worker_class", "sync")), "keepalive": int(conf.get("keepalive", 2)),
            "reuse_port": bool(conf.get("reuse_port", False))}


def children(pid: int) -> list[int]:
    """Return the pids whose parent is pid (gunicorn's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds of a gunicorn master and its workers so far."""
    total = 0
    for each in (pid, *children(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def proc_kib(pid: int, name: str, file: str = "status") -> int:
    """Return a 'Name:  N kB' figure from /proc/PID/status or smaps_rollup, in KiB."""
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


class Bench:
    """The processes of one run: the stand-in, the yardsticks, and a fresh service per scenario."""

    def __init__(self, args: argparse.Namespace, logs: Path, redis_server: RedisServer | RedisClusterServers) -> None:
        self.args = args
        self.logs = logs
        self.redis_server = redis_server
        self.redis_url = redis_server.url
        self.gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        self.settings = gunicorn_settings()
        self.budget_ms = int(os.environ.get("REQUEST_BUDGET_MS", "800"))
        self.processes: list[subprocess.Popen[Any]] = []
        self.standin_url = ""
        self.control: Control | None = None
        self._yardsticks: dict[str, str] = {}
        self.server_pids: dict[str, int] = {}  # base URL -> gunicorn master pid, for CPU per request

    def log(self, name: str) -> Any:
        return open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to a child process

    def start_standin(self) -> None:
        standin = subprocess.Popen(
            [sys.executable, "-m", "tests.standin.personalize", "--port", "0", "--items-from",
             str(ROOT / "sample" / "catalog.csv"), "--arn", ARN],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log("standin"),
        )
        self.processes.append(standin)
        assert standin.stdout is not None
        self.standin_url = "http://" + standin.stdout.readline().decode().split()[1]
        self.control = Control(self.standin_url)
        self.set_fault("ok")

    def set_fault(self, fault: str, latency_ms: int | None = None) -> None:
        """Clear the stand-in's counts, then give it a fault: ok (= --latency-ms), slow (1500 ms) or error500."""
        assert self.control is not None
        self.control.reset()
        if fault == "error500":
            self.control.set_fault("error500")
        else:
            self.control.set_fault("latency", latency_ms=latency_ms if latency_ms is not None else self.args.latency_ms)

    def start_events_standin(self) -> EventsControl:
        """Start the PutEvents stand-in (10 ms a call) as a process; return its control client."""
        standin = subprocess.Popen(
            [sys.executable, "-m", "tests.standin.personalize_events", "--port", "0", "--latency-ms", "10",
             "--tracking-id", EVENTS_TRACKING_ID],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log("events-standin"),
        )
        self.processes.append(standin)
        assert standin.stdout is not None
        return EventsControl("http://" + standin.stdout.readline().decode().split()[1])

    def calls(self) -> int:
        assert self.control is not None
        return int(self.control.calls()["total"])

    def settle(self, limit: float = 15) -> int:
        """Wait until the stand-in's call count stops moving: gunicorn still serves requests wrk gave up on."""
        deadline = time.monotonic() + limit
        last, still = self.calls(), 0
        while still < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.calls()
            still = still + 1 if now == last else 0
            last = now
        return last

    def env(self, port: int, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOST="127.0.0.1", PORT=str(port), ACCESS_LOG="",
            CATALOG_URI=str(ROOT / "sample" / "catalog.csv"), PERSONALIZE_CAMPAIGN_ARN=ARN,
            CACHE_REDIS_URL=self.redis_url, AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME=self.standin_url,
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
        )
        env.pop("RECOMMENDATIONS_URI", None)
        env.update(extra)
        return env

    @contextlib.contextmanager
    def service(self, name: str, flush: bool = True, unset: tuple[str, ...] = (), **extra: str
                ) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
        """Run `gunicorn wsgi:app` as production does, on an empty Redis cache, until the block ends.

        flush=False keeps what Redis holds (a batch job loaded before); unset removes variables from its env.
        """
        if flush:
            self.empty_redis()
        port = free_port()
        env = self.env(port, **extra)
        for name_ in unset:
            env.pop(name_, None)
        process = subprocess.Popen([self.gunicorn, "wsgi:app"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=self.log(f"service-{name}"))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/readyz", process, log=self.logs / f"service-{name}.log")
            self.server_pids[url] = process.pid
            yield url, process
        finally:
            stop(process)

    def empty_redis(self) -> None:
        """Empty the bench's own redis-server (or every node of its cluster)."""
        if isinstance(self.redis_server, RedisClusterServers):
            self.redis_server.flush()
        else:
            redis.Redis.from_url(self.redis_url).flushdb()

    def yardstick(self, module: str, threads: int | None = None) -> str:
        """Start loadtest.baseline or loadtest.proxy once, under the production worker settings (or threads)."""
        name = module if threads is None else f"{module}-{threads}-threads"
        if name not in self._yardsticks:
            port = free_port()
            s = self.settings
            extra = {} if threads is None else cpu_bound_env()
            process = subprocess.Popen(
                [self.gunicorn, "-c", "/dev/null", "--bind", f"127.0.0.1:{port}", "--workers", str(s["workers"]),
                 "--threads", str(threads or s["threads"]), "--worker-class", s["worker_class"], "--keep-alive",
                 str(s["keepalive"]), "--no-control-socket", *(["--reuse-port"] if s["reuse_port"] else []),
                 f"loadtest.{module}:app"],
                cwd=ROOT, env=self.env(port, **extra), stdout=subprocess.DEVNULL, stderr=self.log(name),
            )
            self.processes.append(process)
            url = f"http://127.0.0.1:{port}"
            self.server_pids[url] = process.pid
            wait_http(url + "/recommendations?user_id=warm-up", process, log=self.logs / f"{name}.log")
            self._yardsticks[name] = url
        return self._yardsticks[name]

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)


def cpu_bound_env() -> dict[str, str]:
    """The settings of the CPU-bound miss scenario, for the service and the proxy: threads and pool to spare."""
    return {"WEB_THREADS": str(CPU_THREADS), "PERSONALIZE_MAX_CONCURRENCY": str(CPU_THREADS)}


# -- wrk -------------------------------------------------------------------------------------------------------
def wrk(url: str, script: str | None, duration: float, connections: int, run: int) -> dict[str, Any]:
    """Run wrk and return req/s, p50/p99 in ms, requests, non-2xx, socket errors and mix.lua's counts."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s"]
    if script:
        command += ["-s", str(HERE / script)]
    timeout = duration + 60
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True, timeout=timeout,
                            env={**os.environ, "BENCH_RUN": str(run)}).stdout

    def millis(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return {"us": value / 1000, "ms": value, "s": value * 1000, "m": value * 60000}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    figures: dict[str, Any] = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": millis("50%"), "p99": millis("99%"),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "non2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket": sum(map(int, socket_errors.groups())) if socket_errors else 0,
    }
    figures["errors"] = figures["non2xx"] + figures["socket"]
    if stats := re.search(r"^MIX_STATS (.*)$", output, re.M):
        figures["mix"] = {k: int(v) for k, v in (pair.split("=") for pair in stats.group(1).split())}
    if stats := re.search(r"^SOURCE_STATS (.*)$", output, re.M):
        figures["sources"] = {k: int(v) for k, v in (pair.split("=") for pair in stats.group(1).split())}
    return figures


@dataclass
class Row:
    key: str  # e.g. misses-256
    label: str
    connections: int
    figures: dict[str, Any]
    yardstick: str | None  # the key of the row it is compared to
    note: str = ""
    calls: float | None = None  # Personalize calls per request
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    def __init__(self, bench: Bench, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.rows: dict[str, Row] = {}
        self.memory: dict[str, Any] | None = None
        self.run = 0
        self.batch: dict[str, dict[str, Any]] = {}  # store kind -> what load_batch measured
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))

    def drive(self, url: str, script: str | None, connections: int, warm_up: bool, fault: str = "ok",
              latency_ms: int | None = None) -> tuple[dict[str, Any], int]:
        """Warm up (optional), clear the stand-in's counts, set its fault, run wrk; return figures and calls."""
        bench = self.bench
        if warm_up:
            self.run += 1
            wrk(url, "misses.lua" if script == "mix.lua" else script, 1, connections, self.run)
            bench.settle()  # the warm-up's queued requests must not call Personalize inside the measured run
        bench.set_fault(fault, latency_ms)
        self.run += 1
        pid = next(p for base, p in bench.server_pids.items() if url.startswith(base))
        cpu_before = cpu_seconds(pid)
        figures = wrk(url, script, self.args.duration, connections, self.run)
        # Worker CPU per request moves less than req/s when something else on the machine takes CPU.
        figures["cpu_us"] = (cpu_seconds(pid) - cpu_before) / max(figures["requests"], 1) * 1e6
        # Personalize calls per request: the calls made while wrk ran, over the requests it completed.
        calls = bench.calls()
        # All calls, those of the requests wrk sent but stopped waiting for included (mix.lua counts their users).
        figures["calls_settled"] = bench.settle() if script == "mix.lua" else calls
        bench.set_fault("ok")  # wakes anything still sleeping in the stand-in
        return figures, calls

    def add(self, key: str, label: str, connections: int, figures: dict[str, Any], yardstick: str | None,
            calls: int | None = None, note: str = "", expected: str = "personalize") -> None:
        per_request = None if calls is None else calls / max(figures["requests"], 1)
        answered = figures.get("sources", {})
        if answered and not answered.get("none"):  # the service says where each answer came from
            other = {k: v for k, v in answered.items() if k != expected and v}
            share = sum(other.values()) / max(sum(answered.values()), 1)
            served = (f"all from {expected}" if not other else
                      f"{share:.0%} not from {expected} (" + ", ".join(f"{k} {v}" for k, v in other.items()) + ")")
            note = f"{note}; {served}" if note else served
        self.rows[key] = Row(key, label, connections, figures, yardstick, note, per_request,
                             {"calls_total": calls})
        print(f"  done: {label} @{connections}: {figures['rps']:.0f} req/s, p99 {figures['p99']:.1f} ms, "
              f"{figures['errors']} errors", file=sys.stderr, flush=True)

    # -- scenarios ---------------------------------------------------------------------------------------------
    def baseline(self) -> None:
        url = self.bench.yardstick("baseline") + "/recommendations"
        figures, _ = self.drive(url, None, 64, warm_up=True)
        self.add("baseline", "bare Flask (yardstick)", 64, figures, None)

    def proxy(self) -> None:
        url = self.bench.yardstick("proxy")
        for connections in (64, 256):
            figures, calls = self.drive(url, "misses.lua", connections, warm_up=True)
            self.add(f"proxy-{connections}", "boto3 proxy (yardstick)", connections, figures, None, calls)

    def hits(self) -> None:
        """Cache hits against bare Flask, alternating (bare Flask, service, bare Flask, service) as cpu() does, so
        that whatever else the machine runs weighs on both alike; each row keeps the better of its two runs.
        The bare-Flask runs are a row of their own (baseline-hits): the baseline scenario's run stays the
        yardstick of the others."""
        baseline = self.bench.yardstick("baseline") + "/recommendations"
        with self.bench.service("hits") as (url, _):
            for n in range(HIT_USERS):
                urllib.request.urlopen(f"{url}/recommendations?user_id=bench-hit-{n}", timeout=5).read()
            for _ in range(2):
                for key, label, target, script, yardstick in (
                        ("baseline-hits", "bare Flask, beside hits", baseline, None, None),
                        ("hits", "cache hits (Redis)", url, "hits.lua", "baseline-hits")):
                    figures, calls = self.drive(target, script, 64, warm_up=True)
                    if key not in self.rows or figures["rps"] > self.rows[key].figures["rps"]:
                        self.add(key, label, 64, figures, yardstick, None if script is None else calls)

    def misses(self) -> None:
        with self.bench.service("misses") as (url, _):
            for connections in (64, 256):
                figures, calls = self.drive(url, "misses.lua", connections, warm_up=True)
                self.add(f"misses-{connections}", "cache misses", connections, figures, f"proxy-{connections}",
                         calls)

    def cpu(self) -> None:
        """Misses where the CPUs, not the threads, are the limit: the service against the proxy, both with
        CPU_THREADS threads per worker, alternating (proxy, service, proxy, service) so that whatever else the
        machine runs weighs on both alike; each row keeps the better of its two runs."""
        proxy = self.bench.yardstick("proxy", threads=CPU_THREADS)
        with self.bench.service("cpu", **cpu_bound_env()) as (url, _):
            for _ in range(2):
                for key, label, target, yardstick in (("proxy-cpu", "boto3 proxy, CPU-bound", proxy, None),
                                                      ("misses-cpu", "cache misses, CPU-bound", url, "proxy-cpu")):
                    figures, calls = self.drive(target, "misses.lua", CPU_CONNECTIONS, warm_up=True)
                    if key not in self.rows or figures["rps"] > self.rows[key].figures["rps"]:
                        self.add(key, label, CPU_CONNECTIONS, figures, yardstick, calls)

    def mix(self) -> None:
        with self.bench.service("mix") as (url, _):
            figures, calls = self.drive(url, "mix.lua", 64, warm_up=True)
        stats = figures.get("mix", {})
        users, settled = stats.get("users", 0), figures["calls_settled"]
        note = (f"{settled} calls / {users} users = {settled / max(users, 1):.3f} "
                f"({stats.get('unknown', 0)} unknown, {stats.get('repeats', 0)} repeats, {stats.get('qa', 0)} QA)")
        self.add("mix", "Braze mix", 64, figures, "baseline", calls, note)
        self.rows["mix"].extra.update(users=users, calls_settled=settled)

    def events(self) -> None:
        """The Braze mix with POST /events alongside, at a steady rate from a thread of this process."""
        events = self.bench.start_events_standin()
        with self.bench.service("events", PERSONALIZE_TRACKING_ID=EVENTS_TRACKING_ID,
                                AWS_ENDPOINT_URL_PERSONALIZE_EVENTS=events.url) as (url, _):
            poster = EventPoster(url)
            poster.start()
            try:
                figures, calls = self.drive(url, "mix.lua", 64, warm_up=True)
            finally:
                poster.stop()
            expected = poster.accepted * EVENTS_PER_REQUEST
            deadline = time.monotonic() + 30
            while len(events.calls()["event_ids"]) < expected and time.monotonic() < deadline:
                time.sleep(0.25)
            arrived = events.calls()
        counts = arrived["event_ids"]
        stats = figures.get("mix", {})
        note = (f"POST /events: {poster.accepted} accepted of {poster.sent} ({poster.accepted * EVENTS_PER_REQUEST} "
                f"events, p99 {poster.p99():.0f} ms), {len(counts)} arrived, {sum(counts.values()) - len(counts)} "
                f"twice, calls of <= {max(arrived['call_sizes'], default=0)}")
        self.add("events", "Braze mix + POST /events", 64, figures, "baseline", calls, note)
        self.rows["events"].extra.update(users=stats.get("users", 0), expected=expected, arrived=len(counts),
                                         twice=sum(counts.values()) - len(counts), posted=poster.sent,
                                         accepted=poster.accepted)

    def slow(self) -> None:
        self._fault("slow", "misses, upstream 1500 ms", "ok", 1500)

    def failing(self) -> None:
        self._fault("failing", "misses, upstream 500s", "error500", None)

    def _fault(self, key: str, label: str, fault: str, latency_ms: int | None) -> None:
        with self.bench.service(key) as (url, _):
            figures, calls = self.drive(url, "misses.lua", 64, warm_up=False, fault=fault, latency_ms=latency_ms)
        limit = self.bench.budget_ms + 100
        note = (f"non-2xx {figures['non2xx']}, socket {figures['socket']}; p99 {figures['p99']:.0f} "
                f"{'<=' if figures['p99'] <= limit else '>'} {limit} ms")
        self.add(key, label, 64, figures, "baseline", calls, note)

    def memory_scenario(self) -> None:
        self.memory = measure_memory(self.bench, self.args.catalog_rows)

    def batch_load(self) -> None:
        """Load a generated job of BATCH_USERS users into Redis, then into SQLite, with load-batch."""
        job = self.batch_job(BATCH_USERS)
        self.batch["redis"] = load_batch(self.bench, job, BATCH_USERS, "redis", self.workdir / "data-redis")
        self.batch["sqlite"] = load_batch(self.bench, job, BATCH_USERS, "sqlite", self.workdir / "data-sqlite")

    def batch_serve(self) -> None:
        """Serve the job batch-load loaded, from each store, to random users: req/s beside the cache hits.

        A second yardstick: cache hits without the process's own copy (CACHE_LOCAL_SECONDS=0), i.e. one Redis
        round trip per request, as a batch answer from Redis takes.
        """
        with self.bench.service("hits-redis", flush=False, CACHE_LOCAL_SECONDS="0") as (url, _):
            for n in range(HIT_USERS):
                urllib.request.urlopen(f"{url}/recommendations?user_id=bench-hit-{n}", timeout=5).read()
            figures, calls = self.drive(url, "hits.lua", 64, warm_up=True)
        self.add("hits-redis", "cache hits, no process copy", 64, figures, "hits", calls)
        for kind in ("redis", "sqlite"):
            loaded = self.batch[kind]
            key = f"batch-{kind}"
            with self.batch_service(key, kind, loaded["job"], loaded["data_dir"]) as (url, ready_s, workers):
                os.environ["BATCH_USERS"] = str(loaded["users"])
                figures, _ = self.drive(url + "/recommendations", "batch.lua", 64, warm_up=True)
                rss = [proc_kib(pid, "VmRSS") / 1024 for pid in workers()]
            remote = figures["rps"] / self.rows["hits-redis"].figures["rps"]
            self.add(key, f"batch answers ({kind})", 64, figures, "hits", None,
                     f"{remote:.2f}x hits-redis; ready {ready_s:.1f} s after start; worker RSS "
                     f"{', '.join(f'{r:.0f}' for r in rss)} MiB", expected="batch")
            self.rows[key].extra.update(ready_s=ready_s, rss=rss)
        self.batch_users(40, "batch-40")  # the worker RSS of a tiny job, beside which batch-10m's is read

    def batch_10m(self) -> None:
        """Load args.batch_users users into SQLite and serve them; each worker's RSS beside a 40-user job's."""
        if "batch-40" not in self.rows:
            self.batch_users(40, "batch-40")
        self.batch_users(self.args.batch_users, "batch-10m", files=10)

    def batch_users(self, users: int, key: str, files: int = BATCH_FILES) -> None:
        """Load a job of users into SQLite with load-batch, serve it, and record each worker's RSS after."""
        loaded = load_batch(self.bench, self.batch_job(users, key, files), users, "sqlite", self.workdir / f"data-{key}")
        with self.batch_service(key, "sqlite", loaded["job"], loaded["data_dir"]) as (url, ready_s, workers):
            os.environ["BATCH_USERS"] = str(users)
            figures, _ = self.drive(url + "/recommendations", "batch.lua", 64, warm_up=True)
            rss = [proc_kib(pid, "VmRSS") / 1024 for pid in workers()]
        self.add(key, f"batch {users:,} users (sqlite)", 64, figures, "hits", None,
                 f"ready {ready_s:.1f} s; worker RSS {', '.join(f'{r:.0f}' for r in rss)} MiB", expected="batch")
        self.rows[key].extra.update(ready_s=ready_s, rss=rss, load=loaded)

    def batch_job(self, users: int, name: str = "job", files: int = BATCH_FILES) -> Path:
        """Write a job of users x BATCH_ITEMS sample catalog items in gzipped files (timed, printed)."""
        from tests.batch_files import write_folder

        ids = [line.split(",", 1)[0] for line in (ROOT / "sample" / "catalog.csv").read_text().splitlines()[1:]]
        folder = self.workdir / name
        started = time.monotonic()
        write_folder(folder, users, files, lambda i: [ids[(i + k) % len(ids)] for k in range(BATCH_ITEMS)])
        size = sum(path.stat().st_size for path in folder.iterdir())
        print(f"  wrote {users:,} users x {BATCH_ITEMS} items in {files} gzipped files ({size / 1e6:.0f} MB) in "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        return folder

    @contextlib.contextmanager
    def batch_service(self, name: str, kind: str, job: Path, data_dir: Path
                      ) -> Iterator[tuple[str, float, Callable[[], list[int]]]]:
        """Start gunicorn serving job from a store that already holds it; yield url, seconds to ready and what
        lists its workers (after the run: the second worker may still be booting when the first is ready)."""
        started = time.monotonic()
        unset = ("PERSONALIZE_CAMPAIGN_ARN",) + (("CACHE_REDIS_URL",) if kind == "sqlite" else ())
        with self.bench.service(name, flush=False, unset=unset, RECOMMENDATIONS_URI=str(job),
                                DATA_DIR=str(data_dir)) as (url, process):
            yield url, time.monotonic() - started, lambda: children(process.pid)

    # -- report ------------------------------------------------------------------------------------------------
    def report(self) -> int:
        s, args = self.bench.settings, self.args
        print(f"\nwrk -t2 -d{args.duration:g}s (+1 s warm-up); Personalize stand-in latency {args.latency_ms} ms; "
              f"WEB_CONCURRENCY={s['workers']} WEB_THREADS={s['threads']} worker_class={s['worker_class']} "
              f"reuse_port={s['reuse_port']}; "
              f"REQUEST_BUDGET_MS={self.bench.budget_ms}; Redis: "
              f"{'a 3-node cluster' if args.redis == 'cluster' else 'one node'}\n")
        header = (f"{'scenario':27} {'conns':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
                  f"{'calls/req':>9} {'CPU us/req':>10} {'× yardstick':>18}  note")
        print(header)
        print("-" * len(header))
        for row in self.rows.values():
            f = row.figures
            calls = "" if row.calls is None else f"{row.calls:.2f}"
            ratio = ""
            if row.yardstick and row.yardstick in self.rows:
                ratio = f"{f['rps'] / self.rows[row.yardstick].figures['rps']:.2f} {row.yardstick}"
            print(f"{row.label:27} {row.connections:5d} {f['rps']:7.0f} {f['p50']:8.1f} {f['p99']:8.1f} "
                  f"{f['errors']:7d} {calls:>9} {f['cpu_us']:10.0f} {ratio:>18}  {row.note}")
        if self.memory:
            m = self.memory
            print(f"\ncatalog scale: {m['rows']:,} items, {m['csv_mb']:.0f} MB CSV (written in {m['gen_s']:.1f} s); "
                  f"{m['workers']} workers")
            print(f"  load time per worker (boot -> 'catalog loaded' log line): "
                  f"{', '.join(f'{t:.1f} s' for t in m['load_s'])}; start -> all workers loaded "
                  f"{m['all_loaded_s']:.1f} s; start -> first /readyz 200 {m['readyz_s']:.1f} s")
            for pid, role, rss, pss, hwm in m["processes"]:
                print(f"  {role:7} pid {pid:7d}: VmRSS {rss / 1024:7.0f} MiB  PSS {pss / 1024:7.0f} MiB  "
                      f"peak VmHWM {hwm / 1024:7.0f} MiB")
            print(f"  total: VmRSS {m['rss_kib'] / 1024:.0f} MiB, PSS {m['pss_kib'] / 1024:.0f} MiB "
                  f"(peak VmHWM sum {m['hwm_kib'] / 1024:.0f} MiB)" + (f"; {m['problem']}" if m.get("problem") else ""))
        for loaded in [*self.batch.values(), *(row.extra["load"] for row in self.rows.values()
                                               if "load" in row.extra and row.extra["load"]["users"] > 1000)]:
            print(f"\nload-batch of {loaded['users']:,} users into {loaded['kind']}: {loaded['rate']:,.0f} users/s "
                  f"(the command's own figure; {loaded['wall_s']:.1f} s wall with the process start); "
                  f"{loaded['bytes_per_user']:.0f} bytes per user in the store ({loaded['store_mb']:.0f} MB)"
                  f"; two versions during a switch: {2 * loaded['store_mb']:.0f} MB")
        return self.targets()

    def targets(self) -> int:
        rows, budget = self.rows, self.bench.budget_ms
        checks: list[tuple[str, bool | None, str]] = []

        def check(name: str, keys: list[str], test: Any, detail: Any) -> None:
            if all(k in rows for k in keys):
                checks.append((name, bool(test()), detail()))
            else:
                checks.append((name, None, "not run"))

        def ratio(key: str) -> float:
            return rows[key].figures["rps"] / rows[rows[key].yardstick].figures["rps"]

        def fig(key: str, name: str) -> Any:
            return rows[key].figures[name]

        check("hits: >= 0.9x bare Flask req/s, p99 < 50 ms @64", ["hits", "baseline-hits"],
              lambda: ratio("hits") >= 0.9 and fig("hits", "p99") < 50,
              lambda: f"{ratio('hits'):.2f}x, p99 {fig('hits', 'p99'):.1f} ms")
        check("misses: >= 0.9x boto3 proxy req/s @64", ["misses-64", "proxy-64"],
              lambda: ratio("misses-64") >= 0.9,
              lambda: f"{ratio('misses-64'):.2f}x")
        check("misses: >= 0.9x boto3 proxy req/s, p99 < 1 s @256", ["misses-256", "proxy-256"],
              lambda: ratio("misses-256") >= 0.9 and fig("misses-256", "p99") < 1000,
              lambda: f"{ratio('misses-256'):.2f}x, p99 {fig('misses-256', 'p99'):.0f} ms")
        check(f"misses, CPU-bound: >= 1.0x boto3 proxy req/s and CPU/req @{CPU_CONNECTIONS}",
              ["misses-cpu", "proxy-cpu"],
              lambda: ratio("misses-cpu") >= 1.0 and fig("proxy-cpu", "cpu_us") >= fig("misses-cpu", "cpu_us"),
              lambda: f"{ratio('misses-cpu'):.2f}x req/s, {fig('proxy-cpu', 'cpu_us') / fig('misses-cpu', 'cpu_us'):.2f}x "
                      f"CPU/req ({fig('misses-cpu', 'cpu_us'):.0f} against {fig('proxy-cpu', 'cpu_us'):.0f} us)")
        check("mix: calls <= users x 1.01, 0 errors, p99 < 300 ms", ["mix"],
              lambda: (rows["mix"].extra["calls_settled"] <= rows["mix"].extra["users"] * 1.01
                       and rows["mix"].extra["users"] > 0 and fig("mix", "errors") == 0 and fig("mix", "p99") < 300),
              lambda: (f"{rows['mix'].extra['calls_settled']} calls / {rows['mix'].extra['users']} users, "
                       f"{fig('mix', 'errors')} errors, p99 {fig('mix', 'p99'):.0f} ms"))
        def unpersonalized(key: str) -> int:
            return sum(v for k, v in rows[key].figures.get("sources", {}).items() if k not in ("personalize", "none"))

        check("misses and mix: every answer from Personalize (no fallback)", ["misses-64", "misses-256", "mix"],
              lambda: all(unpersonalized(k) == 0 for k in ("misses-64", "misses-256", "mix")),
              lambda: ", ".join(f"{k} {unpersonalized(k)}" for k in ("misses-64", "misses-256", "mix")))
        check("events: mix p99 within +10% with POST /events; every event once", ["events", "mix"],
              lambda: (fig("events", "p99") <= fig("mix", "p99") * 1.10 and fig("events", "errors") == 0
                       and rows["events"].extra["arrived"] == rows["events"].extra["expected"] > 0
                       and rows["events"].extra["twice"] == 0
                       and rows["events"].extra["accepted"] == rows["events"].extra["posted"]),
              lambda: (f"p99 {fig('events', 'p99'):.1f} ms vs {fig('mix', 'p99'):.1f} ms "
                       f"({fig('events', 'p99') / fig('mix', 'p99') - 1:+.0%}); "
                       f"{rows['events'].extra['arrived']}/{rows['events'].extra['expected']} events arrived"))
        for key in ("slow", "failing"):
            check(f"{key}: 0 non-2xx/socket errors, p99 <= budget + 100 = {budget + 100} ms", [key],
                  lambda key=key: fig(key, "errors") == 0 and fig(key, "p99") <= budget + 100,
                  lambda key=key: f"{fig(key, 'non2xx')} non-2xx, {fig(key, 'socket')} socket, "
                                  f"p99 {fig(key, 'p99'):.0f} ms")
        m = self.memory
        checks.append(("memory: catalog load < 10 s", None if m is None else m["all_loaded_s"] < 10 and not m.get("problem"),
                       "not run" if m is None else f"{max(m['load_s'], default=float('nan')):.1f} s per worker, "
                                                   f"{m['all_loaded_s']:.1f} s to all workers loaded"))
        checks.append(("memory: gunicorn total < 1 GB (RSS and PSS)",
                       None if m is None else max(m["rss_kib"], m["pss_kib"]) * 1024 < 1e9 and not m.get("problem"),
                       "not run" if m is None else f"RSS {m['rss_kib'] * 1024 / 1e9:.2f} GB, "
                                                   f"PSS {m['pss_kib'] * 1024 / 1e9:.2f} GB"))
        for kind in ("redis", "sqlite"):
            loaded = self.batch.get(kind)
            checks.append((f"batch-load: >= 50,000 users/s into {kind}", None if loaded is None else
                           loaded["rate"] >= 50_000, "not run" if loaded is None else f"{loaded['rate']:,.0f} users/s"))
            key = f"batch-{kind}"
            check(f"batch-serve ({kind}): >= 0.8x cache hits req/s, p99 < 50 ms", [key, "hits"],
                  lambda key=key: rows[key].figures["rps"] >= 0.8 * rows["hits"].figures["rps"] and fig(key, "p99") < 50,
                  lambda key=key: f"{rows[key].figures['rps'] / rows['hits'].figures['rps']:.2f}x, "
                                  f"p99 {fig(key, 'p99'):.1f} ms")
            check(f"batch-serve ({kind}): ready < 5 s with the job in the store", [key],
                  lambda key=key: rows[key].extra["ready_s"] < 5,
                  lambda key=key: f"{rows[key].extra['ready_s']:.1f} s")
        check("batch-10m: each worker's RSS < 250 MB, as with 40 users", ["batch-10m", "batch-40"],
              lambda: max(rows["batch-10m"].extra["rss"]) * 1.048576 < 250
              and max(rows["batch-10m"].extra["rss"]) < max(rows["batch-40"].extra["rss"]) + 25,
              lambda: (f"{max(rows['batch-10m'].extra['rss']):.0f} MiB (40 users: "
                       f"{max(rows['batch-40'].extra['rss']):.0f} MiB)"))
        print("\ntargets")
        failed = False
        for name, ok, detail in checks:
            verdict = "-" if ok is None else "PASS" if ok else "FAIL"
            failed |= ok is False
            print(f"  {verdict:4}  {name:58} {detail}")
        return 1 if failed else 0


class EventPoster:
    """POST /events EVENT_REQUESTS_PER_SECOND times a second from a thread, each request a new user's events."""

    def __init__(self, url: str) -> None:
        self.url = url + "/events"
        self.sent = self.accepted = 0
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)] * 1000 if ordered else float("nan")

    def _run(self) -> None:
        import orjson  # the service's own JSON library, installed with it
        interval = 1 / EVENT_REQUESTS_PER_SECOND
        next_at = time.monotonic()
        while not self._stop.is_set():
            body = orjson.dumps({"user_id": f"bench-events-{self.sent}", "events": [
                {"event_type": "click", "item_id": str(1000 + i), "recommendation_id": "bench-rid",
                 "impression": [str(1000 + j) for j in range(5)]} for i in range(EVENTS_PER_REQUEST)]})
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            started = time.monotonic()
            self.sent += 1
            try:
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a local URL
                    self.accepted += response.status == 202
            except OSError:
                pass
            self.latencies.append(time.monotonic() - started)
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))


# -- catalog scale ---------------------------------------------------------------------------------------------
ADJECTIVES = ("Trail", "Alpine", "Summit", "Ridge", "Coastal", "Urban", "Classic", "Ultralight", "Merino", "Storm",
              "Canyon", "Glacier", "Harbor", "Forest", "Desert", "Polar")
NOUNS = ("Running Shoes", "Rain Jacket", "Fleece Pullover", "Hiking Boots", "Daypack", "Water Bottle", "Beanie",
         "Trekking Poles", "Sleeping Bag", "Camp Stove", "Headlamp", "Wool Socks", "Softshell Pants", "Tent",
         "Sun Hat", "Gloves")
CATEGORIES = ("footwear", "apparel", "packs", "camping", "accessories", "climbing", "cycling", "water")


def write_catalog(path: Path, rows: int) -> None:
    """Write a catalog CSV with the columns of a Personalize items dataset plus the feed's display fields."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("ITEM_ID,NAME,URL,PRICE,IMAGE_URL,CATEGORY,POPULARITY_RANK\n")
        chunk = []
        for i in range(rows):
            item_id = 1_000_000 + i
            name = f"{ADJECTIVES[i % 16]} {NOUNS[(i // 16) % 16]} {i // 256}"
            slug = name.lower().replace(" ", "-")
            chunk.append(f"{item_id},{name},https://shop.example.com/p/{item_id}/{slug},{(i * 7919) % 30000 / 100 + 5:.2f},"
                         f"https://cdn.example.com/img/{item_id}.jpg,{CATEGORIES[(i // 7) % 8]},{(i * 7919) % rows + 1}\n")
            if len(chunk) == 10_000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))


def measure_memory(bench: Bench, rows: int) -> dict[str, Any]:
    """Start the service on a generated catalog; time the load and add up gunicorn's resident memory."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    try:
        catalog = workdir / "catalog.csv"
        started = time.monotonic()
        write_catalog(catalog, rows)
        gen_s = time.monotonic() - started
        workers = bench.settings["workers"]
        port = free_port()
        env = bench.env(port, CATALOG_URI=str(catalog), LOG_LEVEL="INFO")
        lines: list[tuple[float, str]] = []
        start = time.monotonic()
        process = subprocess.Popen([bench.gunicorn, "wsgi:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)

        def read() -> None:
            assert process.stderr is not None
            with bench.log("service-memory") as log:
                for line in process.stderr:
                    lines.append((time.monotonic(), line))
                    log.write(line.encode())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        url = f"http://127.0.0.1:{port}"
        problem = None
        readyz_s = float("nan")
        try:
            boots: dict[int, float] = {}
            loaded: dict[int, float] = {}
            deadline = start + 180
            while time.monotonic() < deadline and len(loaded) < workers:
                for at, line in list(lines):
                    if m := re.search(r"Booting worker with pid: (\d+)", line):
                        boots.setdefault(int(m.group(1)), at)
                    elif "catalog loaded from" in line and (m := re.search(r'"pid":(\d+)', line)):  # JSON logs
                        loaded.setdefault(int(m.group(1)), at)
                    elif "WORKER TIMEOUT" in line or "Cannot start" in line:
                        problem = problem or line.strip()[-160:]
                if process.poll() is not None:
                    problem = problem or f"gunicorn exited with {process.returncode}"
                    break
                if readyz_s != readyz_s:  # nan: not answered yet
                    with contextlib.suppress(OSError):
                        with urllib.request.urlopen(url + "/readyz", timeout=0.5) as response:
                            if response.status == 200:
                                readyz_s = time.monotonic() - start
                time.sleep(0.05)
            if len(loaded) < workers:
                problem = problem or f"only {len(loaded)} of {workers} workers loaded the catalog within 180 s"
            all_loaded_s = (max(loaded.values()) - start) if loaded else float("nan")
            load_s = [loaded[pid] - boots[pid] for pid in sorted(loaded) if pid in boots]
            time.sleep(2)  # let the parse's garbage go before reading memory
            for n in range(20):  # a few requests, so the figures are those of a serving process
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"{url}/recommendations?user_id=mem-{n}", timeout=5).read()
            processes = []
            for pid in [process.pid, *children(process.pid)]:
                role = "master" if pid == process.pid else "worker"
                processes.append((pid, role, proc_kib(pid, "VmRSS"), proc_kib(pid, "Pss", "smaps_rollup"),
                                  proc_kib(pid, "VmHWM")))
        finally:
            stop(process)
            reader.join(timeout=5)
        return {
            "rows": rows, "csv_mb": catalog.stat().st_size / 1e6, "gen_s": gen_s, "workers": workers,
            "load_s": load_s, "all_loaded_s": all_loaded_s, "readyz_s": readyz_s, "processes": processes,
            "rss_kib": sum(p[2] for p in processes), "pss_kib": sum(p[3] for p in processes),
            "hwm_kib": sum(p[4] for p in processes), "problem": problem,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- batch jobs ------------------------------------------------------------------------------------------------
def load_batch(bench: Bench, job: Path, users: int, kind: str, data_dir: Path) -> dict[str, Any]:
    """Run `flask --app wsgi load-batch JOB` into Redis (emptied first) or SQLite files; return its figures."""
    client = redis.Redis.from_url(bench.redis_url)
    env = bench.env(0, RECOMMENDATIONS_URI=str(job), DATA_DIR=str(data_dir))
    env.pop("PERSONALIZE_CAMPAIGN_ARN", None)
    if kind == "redis":
        bench.empty_redis()
        before = int(client.info("memory")["used_memory"])
    else:
        env.pop("CACHE_REDIS_URL", None)
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).with_name("flask")), "--app", "wsgi", "load-batch", str(job),
                           "--grace", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall_s = time.monotonic() - started
    with bench.log(f"load-batch-{kind}-{users}") as log:
        log.write((done.stdout + done.stderr).encode())
    if done.returncode != 0:
        raise SystemExit(f"load-batch into {kind} failed:\n{done.stdout}{done.stderr[-2000:]}")
    rate = float(re.search(r"\(([\d,]+)/s\)", done.stdout).group(1).replace(",", ""))
    if kind == "redis":
        store_bytes = int(client.info("memory")["used_memory"]) - before
    else:
        store_bytes = sum(path.stat().st_size for path in (data_dir / "batch").glob("*.sqlite3"))
    print(f"  {done.stdout.strip()}", file=sys.stderr, flush=True)
    return {"kind": kind, "users": users, "job": job, "data_dir": data_dir, "rate": rate, "wall_s": wall_s,
            "store_mb": store_bytes / 1e6, "bytes_per_user": store_bytes / users}


# -- main ------------------------------------------------------------------------------------------------------
def serve(bench: Bench, seconds: float) -> None:
    """Keep the stand-in and one service up for seconds (for locust or py-spy), printing where they are."""
    with bench.service("serve") as (url, process):
        print(f"SERVICE {url} (gunicorn master {process.pid}, workers {children(process.pid)})")
        print(f"STANDIN {bench.standin_url} (latency {bench.args.latency_ms} ms)", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per scenario (default 10)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these scenarios (and their yardsticks): {', '.join(SCENARIOS)}")
    parser.add_argument("--latency-ms", type=int, default=50, help="the stand-in's Personalize latency (50)")
    parser.add_argument("--catalog-rows", type=int, default=CATALOG_ROWS, help="items in the memory scenario")
    parser.add_argument("--redis", choices=("node", "cluster"), default="node",
                        help="the service's Redis: one redis-server (default) or a 3-node Redis Cluster")
    parser.add_argument("--batch-users", type=int, default=BATCH_10M, help="users in the batch-10m scenario")
    parser.add_argument("--serve", type=float, metavar="SECONDS",
                        help="only start the stand-in and the service, print their URLs, stop after SECONDS")
    args = parser.parse_args()
    only = {name.strip() for value in args.only for name in value.split(",") if name.strip()}
    if unknown := only - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose among {', '.join(SCENARIOS)}")
    wanted = set(only or set(SCENARIOS) - HEAVY)
    wanted |= {need for name in list(wanted) for need in NEEDS.get(name, ())}
    currents_ok = True
    if "currents" in wanted:  # no service, no wrk: the command against the PutEvents stand-in
        wanted.discard("currents")
        currents_ok = currents.report(currents.run(1_000_000, 20, 10, currents.BENCH_MAX_TPS, 2, 16))
        if not wanted:
            return 0 if currents_ok else 1
    if shutil.which("wrk") is None and args.serve is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    # Never the Redis other programs share on 6379.
    redis_server = (RedisClusterServers(logs / "redis-cluster") if args.redis == "cluster"
                    else RedisServer(logs / "redis.log")).start()
    bench = Bench(args, logs, redis_server)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runner: Runner | None = None
    try:
        bench.start_standin()
        if args.serve is not None:
            serve(bench, args.serve)
            return 0
        runner = Runner(bench, args)
        print(f"logs in {logs}", file=sys.stderr, flush=True)
        for name in SCENARIOS:
            if name in wanted:
                getattr(runner, "memory_scenario" if name == "memory" else name.replace("-", "_"))()
        return max(runner.report(), 0 if currents_ok else 1)
    finally:
        if runner is not None:
            shutil.rmtree(runner.workdir, ignore_errors=True)  # the generated batch jobs and their stores
        bench.close()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
