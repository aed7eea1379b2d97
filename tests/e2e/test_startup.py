"""Starting `gunicorn wsgi:app` with a broken configuration: it must stop at once and say why."""
from __future__ import annotations

import csv
import json
import re
import socket
import time
from pathlib import Path

from app.sources.popularity import FLUSH_SECONDS
from tests.conftest import SAMPLE_CATALOG
from tests.e2e.conftest import (
    WORKERS,
    Gunicorn,
    free_port,
    get,
    run_gunicorn_to_exit,
    service_env,
    start_gunicorn,
)
from tests.standin.personalize import StandinHandle

QUICKLY = 15.0  # seconds; a refused configuration must not leave gunicorn respawning workers


def test_no_recommendation_source_stops_gunicorn_naming_both_variables(standin: StandinHandle,
                                                                        tmp_path: Path) -> None:
    env = service_env(standin.url, free_port(), PERSONALIZE_CAMPAIGN_ARN=None, RECOMMENDATIONS_URI=None)

    code, output, elapsed = run_gunicorn_to_exit(env, tmp_path / "gunicorn.log")

    assert code != 0, output
    assert elapsed < QUICKLY
    sentences = re.split(r"(?<=[.:])\s+|\n", output)
    assert any("PERSONALIZE_CAMPAIGN_ARN" in s and "RECOMMENDATIONS_URI" in s for s in sentences), output
    assert standin.calls()["total"] == 0


def test_a_bad_worker_setting_stops_gunicorn_with_a_sentence(standin: StandinHandle, tmp_path: Path) -> None:
    """gunicorn.conf.py reads WEB_THREADS itself, before the app's settings are checked."""
    env = service_env(standin.url, free_port(), WEB_THREADS="sixteen", PROMETHEUS_MULTIPROC_DIR=None)
    before = set(Path(env["TMPDIR"]).glob("recs-metrics-*"))

    code, output, elapsed = run_gunicorn_to_exit(env, tmp_path / "gunicorn.log")

    assert code != 0 and elapsed < QUICKLY
    assert "Cannot start: WEB_THREADS must be a whole number of at least 1, got 'sixteen'." in output
    assert "Traceback" not in output
    assert set(Path(env["TMPDIR"]).glob("recs-metrics-*")) <= before  # its metrics folder went too


def test_a_missing_catalog_file_stops_gunicorn(standin: StandinHandle, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-catalog.csv"
    env = service_env(standin.url, free_port(), CATALOG_URI=str(missing))

    code, output, elapsed = run_gunicorn_to_exit(env, tmp_path / "gunicorn.log")

    assert code != 0, output
    assert elapsed < QUICKLY
    assert "exited with code 3" in output  # gunicorn.conf.py's post_worker_init: WORKER_BOOT_ERROR
    assert re.search(rf"Cannot start: .*{re.escape(str(missing))}", output), output


def test_sigterm_stops_a_serving_gunicorn_cleanly(standin: StandinHandle, tmp_path: Path) -> None:
    server = start_gunicorn(service_env(standin.url, free_port(), CACHE_REDIS_URL=None,
                                        CACHE_DIR=str(tmp_path / "cache")), tmp_path / "gunicorn.log")
    try:
        server.wait_ready(workers=1)
    finally:
        code = server.stop()

    assert code == 0, server.output()
    assert "Shutting down: Master" in server.output()


def test_personalize_failing_without_a_popularity_source_still_answers(standin: StandinHandle,
                                                                       tmp_path: Path) -> None:
    """No popularity column, no batch file, no POPULAR_ITEMS_URI: while Personalize hangs, fails, throttles or
    says not found, every answer is a 200 from the items recommended most lately (counted in DATA_DIR, where
    both workers see them), then the catalog's order; the log says so at start."""
    catalog = tmp_path / "catalog-without-ranks.csv"
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8-sig") as src, catalog.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        columns = [c for c in reader.fieldnames or () if c.upper() not in ("POPULARITY_RANK", "RANK", "POPULARITY")]
        writer = csv.DictWriter(dst, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(reader)
    env = service_env(standin.url, free_port(), CATALOG_URI=str(catalog), WEB_CONCURRENCY="2",
                      CACHE_REDIS_URL=None, CACHE_DIR=str(tmp_path / "cache"), DATA_DIR=str(tmp_path / "data"))
    server = start_gunicorn(env, tmp_path / "gunicorn.log")
    answers = []
    try:
        server.wait_ready(workers=2)
        standin.reset()
        for n in range(8):  # new connections: the kernel spreads them over both workers
            standin.set_answer(f"sent-{n}", ["1333", "1296" if n < 5 else "1222", str(1000 + 37 * (n % 3))])
            assert get(server.url + "/recommendations", {"user_id": f"sent-{n}", "num_results": 3}).status_code == 200
        time.sleep(FLUSH_SECONDS + 1.5)  # each worker adds its counts to the shared file every FLUSH_SECONDS
        for fault in ("not_found", "error500", "throttle", "hang"):
            standin.set_fault(fault)
            for n in range(2 if fault == "hang" else 6):
                answers.append(get(server.url + "/recommendations", {"user_id": f"gina-{fault}-{n}",
                                                                     "num_results": 3}))
    finally:
        standin.reset()
        server.stop()

    for response in answers:
        assert response.status_code == 200, response.text
        assert response.headers["X-Recommendations-Source"] == "fallback"
        assert response.headers["X-Fallback-Reason"], response.headers
        assert response.headers["Cache-Control"] == "no-store"
        # 1333 was in all 8 answers, 1296 in 5, every other item in at most 3.
        assert [item["id"] for item in response.json()][:2] == ["1333", "1296"]
    assert "No popularity source" in server.output()


def test_a_port_in_use_stops_gunicorn_with_a_sentence_instead_of_respawning_workers(
    standin: StandinHandle, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        code, output, elapsed = run_gunicorn_to_exit(service_env(standin.url, port), tmp_path / "gunicorn.log")

    assert code != 0 and elapsed < QUICKLY, output
    assert f"Cannot start: cannot listen on 127.0.0.1:{port} (Address already in use)" in output
    assert "Booting worker" not in output and "Traceback" not in output


def listening_sockets(port: int) -> list[str]:
    """The inodes of the sockets listening on 127.0.0.1:port (from /proc/net/tcp: state 0A is LISTEN)."""
    found = []
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        address, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and address == f"0100007F:{port:04X}":
            found.append(inode)
    return found


def test_each_worker_listens_on_a_socket_of_its_own(gunicorn_server: Gunicorn) -> None:
    """reuse_port: the kernel spreads new connections over the workers, not the worker that woke first."""
    port = int(gunicorn_server.url.rsplit(":", 1)[1])
    assert len(set(listening_sockets(port))) == WORKERS


def unix_listeners(path: Path) -> int:
    """How many sockets listen on the unix socket path (from /proc/net/unix: flag 00010000 is __SO_ACCEPTCON)."""
    return sum(1 for row in Path("/proc/net/unix").read_text().splitlines()[1:]
               if row.split()[-1] == str(path) and row.split()[3] == "00010000")


def get_over_unix_socket(path: Path, target: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_unix_socket_bind_gets_one_shared_socket_not_one_per_worker(standin: StandinHandle,
                                                                      tmp_path: Path) -> None:
    """reuse_port is for TCP: on a unix socket path each worker would replace the last one's socket."""
    path = tmp_path / "recs.sock"
    env = service_env(standin.url, free_port(), CACHE_REDIS_URL=None, CACHE_DIR=str(tmp_path / "cache"),
                      GUNICORN_CMD_ARGS=f"--bind unix:{path}")
    server = start_gunicorn(env, tmp_path / "gunicorn.log")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and server.process.poll() is None:
            if path.exists() and len(set(server.worker_pids())) == WORKERS:
                try:
                    if get_over_unix_socket(path, "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.05)
        status, body = get_over_unix_socket(path, "/recommendations?user_id=user123&num_results=2")
        listeners = unix_listeners(path)
    finally:
        code = server.stop()
    assert (status, code) == (200, 0), server.output()
    assert len(json.loads(body)) == 2
    assert listeners == 1, server.output()
