"""Hold slow and idle connections against a running service while timing ordinary requests.

    python -m loadtest.slowloris http://127.0.0.1:8000 --slow 150 --idle 150 --seconds 60

Opens `--slow` connections that send `GET /recommendations?... HTTP/1.1\\r\\nHost: x\\r\\n` and then one byte
a second (never finishing the head), and `--idle` connections that send nothing; a connection the server
closes is opened again, so the count holds for the whole run. Meanwhile one client at a time sends GET
/healthz and GET /recommendations (each on a new connection, like Braze), and the run prints p50/p99/max
and the failures (errors, non-2xx answers, or no answer within --timeout) of each.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

SLOW_HEAD = b"GET /recommendations?user_id=slow HTTP/1.1\r\nHost: x\r\n"


@dataclass
class Timings:
    """Latencies (ms) of the answered requests and the failures, of one path."""

    ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ordered = sorted(self.ms) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"n={len(self.ms) + len(self.failures)} p50={statistics.median(ordered):.1f} ms "
                f"p99={p99:.1f} ms max={ordered[-1]:.1f} ms failures={len(self.failures)}")


class Attack:
    """Keep `slow` dripping and `idle` silent connections open against host:port until stop() is called."""

    def __init__(self, host: str, port: int, slow: int, idle: int) -> None:
        self.address = (host, port)
        self.slow, self.idle = slow, idle
        self.stopping = threading.Event()
        self.reopened = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for kind, count in (("slow", self.slow), ("idle", self.idle)):
            thread = threading.Thread(target=self._hold, args=(kind == "slow", count), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _open(self, slow: bool) -> tuple[socket.socket, int]:
        sock = socket.create_connection(self.address, timeout=5)
        sock.setblocking(False)
        if slow:
            sock.send(SLOW_HEAD)
        return sock, 0

    def _hold(self, slow: bool, count: int) -> None:
        """Open `count` connections, then each second send one byte on each (slow) and reopen closed ones."""
        conns = [self._open(slow) for _ in range(count)]
        while not self.stopping.wait(1.0):
            for i, (sock, sent) in enumerate(conns):
                try:
                    if sock.recv(4096, socket.MSG_PEEK) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    pass  # nothing from the server: still open
                except OSError:
                    sock.close()
                    conns[i] = self._open(slow)
                    self.reopened += 1
                    continue
                if slow:
                    try:
                        sock.send(b"X-a: b\r\n"[sent % 8:sent % 8 + 1])
                        conns[i] = (sock, sent + 1)
                    except OSError:
                        pass  # noticed as closed on the next round
        for sock, _ in conns:
            sock.close()


def measure(base: str, paths: list[str], seconds: float, timeout: float, stop: threading.Event) -> dict[str, Timings]:
    """GET each path in turn, on a new connection each, until `seconds` pass."""
    results = {path: Timings() for path in paths}
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline and not stop.is_set():
        for path in paths:
            started = time.perf_counter()
            sent += 1
            try:
                response = requests.get(base + path.replace("{n}", str(sent)), headers={"Connection": "close"},
                                        timeout=timeout)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code >= 300:
                    results[path].failures.append(f"{response.status_code} after {elapsed:.0f} ms")
                else:
                    results[path].ms.append(elapsed)
            except requests.RequestException as exc:
                results[path].failures.append(type(exc).__name__)
        time.sleep(0.05)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--slow", type=int, default=150, help="connections sending their head at 1 byte/s")
    parser.add_argument("--idle", type=int, default=150, help="connections sending nothing")
    parser.add_argument("--seconds", type=float, default=60, help="how long to hold them")
    parser.add_argument("--timeout", type=float, default=10, help="an ordinary request's timeout, s")
    parser.add_argument("--path", action="append", default=None,
                        help="ordinary requests to time (default /healthz and /recommendations?user_id=u1); "
                        "{n} becomes a new number each time, e.g. user_id=u{n} for cache misses")
    args = parser.parse_args()
    paths = args.path or ["/healthz", "/recommendations?user_id=u1"]
    parts = urlsplit(args.url)
    base = f"{parts.scheme}://{parts.netloc}"

    quiet = measure(base, paths, 3, args.timeout, threading.Event())
    attack = Attack(parts.hostname or "127.0.0.1", parts.port or 80, args.slow, args.idle)
    attack.start()
    time.sleep(2)  # let every connection open
    try:
        under = measure(base, paths, args.seconds, args.timeout, threading.Event())
    finally:
        attack.stop()
    print(f"{args.slow} slow-header + {args.idle} idle connections held {args.seconds:.0f} s "
          f"({attack.reopened} reopened after the server closed them)")
    for path in paths:
        print(f"  before  {path:40} {quiet[path].summary()}")
        print(f"  during  {path:40} {under[path].summary()}")
        if under[path].failures:
            print(f"          failures: {sorted(set(under[path].failures))[:5]}")


if __name__ == "__main__":
    main()
