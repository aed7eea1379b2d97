"""Benchmark the service as production runs it: gunicorn + Redis cache + Personalize (stand-in) over HTTP.

    python -m loadtest.bench [--duration 10] [--connections 64] [--latency-ms 50]

Starts, in one run on this machine: the Personalize stand-in (a process of its own, with a fixed latency),
the service under `gunicorn wsgi:app` (gunicorn.conf.py, CACHE_REDIS_URL), and a bare-Flask baseline
returning a constant 10-item array under the same gunicorn worker settings. Drives each with wrk (Debian
package `wrk`) and prints req/s, p50, p99, non-2xx responses, Personalize calls per request, and req/s as a
ratio to the baseline. Needs Redis on 127.0.0.1:6379 (uses database 13, flushed).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis

from tests.standin.personalize import Control

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/13"
ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def gunicorn_env(port: int, standin_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HOST="127.0.0.1", PORT=str(port), ACCESS_LOG="", LOG_LEVEL="WARNING",
        CATALOG_URI=str(ROOT / "sample" / "catalog.csv"), PERSONALIZE_CAMPAIGN_ARN=ARN,
        CACHE_REDIS_URL=REDIS_URL, AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME=standin_url,
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
    )
    env.pop("RECOMMENDATIONS_URI", None)
    return env


def wrk(url: str, script: str | None, duration: int, connections: int, run: str) -> dict[str, float]:
    """Run wrk and return req/s, p50/p99 in ms, requests and non-2xx responses."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script:
        command += ["-s", str(HERE / script)]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True,
                            env={**os.environ, "BENCH_RUN": run}).stdout

    def millis(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests_done = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": millis("50%"), "p99": millis("99%"), "requests": requests_done,
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=50, help="the stand-in's Personalize latency")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    redis.Redis.from_url(REDIS_URL).flushdb()

    processes: list[subprocess.Popen[bytes]] = []
    try:
        standin = subprocess.Popen(
            [sys.executable, "-m", "tests.standin.personalize", "--port", "0", "--items-from",
             str(ROOT / "sample" / "catalog.csv"), "--arn", ARN],
            cwd=ROOT, stdout=subprocess.PIPE,
        )
        processes.append(standin)
        standin_url = "http://" + standin.stdout.readline().decode().split()[1]
        control = Control(standin_url)
        control.set_fault("latency", latency_ms=args.latency_ms)

        service_port, baseline_port = free_port(), free_port()
        env = gunicorn_env(service_port, standin_url)
        service = subprocess.Popen([gunicorn, "wsgi:app"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(service)
        workers, threads = env.get("WEB_CONCURRENCY", "2"), env.get("WEB_THREADS", "8")
        baseline = subprocess.Popen(
            [gunicorn, "-c", "/dev/null", "--bind", f"127.0.0.1:{baseline_port}", "--workers", workers,
             "--threads", threads, "--worker-class", "gthread", "--no-control-socket", "loadtest.baseline:app"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.append(baseline)
        service_url, baseline_url = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{baseline_port}"
        wait_http(service_url + "/readyz", service)
        wait_http(baseline_url + "/recommendations", baseline)
        for n in range(100):  # the users hits.lua asks for
            urllib.request.urlopen(f"{service_url}/recommendations?user_id=bench-hit-{n}", timeout=5).read()

        rows = []
        scenarios = [
            ("baseline (bare Flask)", baseline_url + "/recommendations", None, "ok"),
            ("cache hits (Redis)", service_url, "hits.lua", "ok"),
            ("cache misses", service_url, "misses.lua", "ok"),
            ("misses, Personalize failing", service_url, "misses.lua", "error500"),
        ]
        for run, (name, url, script, fault) in enumerate(scenarios):
            control.reset()
            control.set_fault("latency", latency_ms=args.latency_ms) if fault == "ok" else control.set_fault(fault)
            figures = wrk(url, script, args.duration, args.connections, run=str(run))
            figures["calls"] = control.calls()["total"] / max(figures["requests"], 1) if script else 0.0
            rows.append((name, figures))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

    base = rows[0][1]["rps"]
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s; Personalize stand-in latency {args.latency_ms} ms; "
          f"WEB_CONCURRENCY={workers} WEB_THREADS={threads}\n")
    print(f"{'scenario':30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'calls/req':>10} {'× base':>7}")
    for name, f in rows:
        print(f"{name:30} {f['rps']:9.0f} {f['p50']:8.1f} {f['p99']:8.1f} {f['errors']:7d} {f['calls']:10.2f} "
              f"{f['rps'] / base:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
