"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory."""
import glob
import os
import shutil
import socket
import sys
import tempfile

# prometheus_client picks its multiprocess storage when it is first imported, so the folder must be set
# before anything imports the app (app.settings below imports the app package). One fresh folder per start.
# Only a folder made here is removed at exit: one inherited from the environment may be another server's.
METRICS_FOLDER_MADE = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    METRICS_FOLDER_MADE = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recs-metrics-")

from app.settings import DEFAULT_WEB_THREADS  # noqa: E402 - after PROMETHEUS_MULTIPROC_DIR, see above


def whole_number(name: str, default: int, most: int | None = None) -> int:
    """Read a positive whole number (at most `most`) from the environment, or stop with a sentence."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < 1 or (most is not None and int(raw) > most):
        if METRICS_FOLDER_MADE:
            shutil.rmtree(METRICS_FOLDER_MADE, ignore_errors=True)
        upto = f" and at most {most}" if most is not None else ""
        sys.exit(f"Cannot start: {name} must be a whole number of at least 1{upto}, got {raw!r}.")
    return int(raw)


bind = f"{os.environ.get('HOST', '0.0.0.0')}:{whole_number('PORT', 8000, most=65535)}"
workers = whole_number("WEB_CONCURRENCY", 2)
# gunicorn's gthread worker, except that a request gets a thread only once it has all arrived: slow or idle
# connections cannot hold the threads (app/server/worker.py). One without a whole request within REQUEST_HEAD_TIMEOUT
# seconds is closed.
worker_class = "app.server.worker.HeadFirstWorker"
whole_number("REQUEST_HEAD_TIMEOUT", 5)  # checked here, read by the worker
# The longest request line gunicorn accepts (method, path, query string, version): its maximum, so a Braze URL
# with a user id of several thousand characters fits. Longer ones, and headers over 8190 bytes, get a JSON 414
# or 431 (app/server/worker.py).
limit_request_line = 8190
threads = whole_number("WEB_THREADS", DEFAULT_WEB_THREADS)
# Braze gives up after 2 s; a request still running after this is stuck, not slow.
timeout = whole_number("WORKER_TIMEOUT", 30)
graceful_timeout = whole_number("GRACEFUL_TIMEOUT", 20)
# How long an idle keep-alive connection stays open. Behind a load balancer it must outlast the balancer's own
# idle timeout (an AWS ALB's is 60 s: set 65), or the balancer reuses a connection gunicorn is closing and
# answers that request 502. Idle connections wait in the worker's event loop, not on threads (app/server/worker.py).
keepalive = whole_number("KEEPALIVE_SECONDS", 5, most=3600)
# Connections one worker holds at once (idle keep-alive ones included); beyond this gunicorn stops accepting.
worker_connections = whole_number("WORKER_CONNECTIONS", 1000)
# Each worker listens on a socket of its own and the kernel spreads new connections over them. With the one
# shared socket, whichever worker woke first took them: a burst of 64 connections split 60/4 at times, and
# the worker with 4 left half its threads idle while the other queued (README, Benchmark).
reuse_port = True
# The app writes one JSON line per request (app/telemetry/logs.py); gunicorn's access log is off unless ACCESS_LOG asks,
# and then it shows the path without the query string, which holds user ids.
accesslog = os.environ.get("ACCESS_LOG") or None
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
logger_class = "app.telemetry.logs.GunicornLogger"  # the "Listening at" line names the address (reuse_port)
# gunicorn's own lines as JSON too, through its public logging setting: error lines on stderr, access lines
# (only with ACCESS_LOG) on stdout or in the file it names.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.telemetry.logs.JsonFormatter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        "access": ({"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
                   if accesslog in (None, "-") else
                   {"class": "logging.FileHandler", "formatter": "json", "filename": accesslog}),
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
}
# gunicorn's runtime control socket is one fixed path per user; several instances on a host would collide.
control_socket_disable = True


def on_starting(server):
    """Check the settings once, before any worker starts: a mistake stops gunicorn with one sentence."""
    from app.settings import ConfigError, Settings

    clear_metrics_folder()
    if not all(isinstance(address, tuple) for address in server.cfg.address) or inherits_sockets():
        # A unix socket path holds one socket (each worker would replace the last one's), and a socket handed
        # over by systemd or by a gunicorn upgrade (USR2) is already open: one shared socket, as gunicorn makes.
        server.cfg.set("reuse_port", False)
    try:
        Settings.from_env()
        if server.cfg.reuse_port:
            check_free(server.cfg.address)
    except ConfigError as exc:
        server.log.error("Cannot start: %s", exc)
        on_exit(server)  # gunicorn does not call it when on_starting exits
        sys.exit(2)


def inherits_sockets() -> bool:
    """Whether gunicorn will take its listening sockets from systemd or from the gunicorn it upgrades."""
    return bool(os.environ.get("LISTEN_FDS") or os.environ.get("GUNICORN_FD"))


def check_free(addresses) -> None:
    """Raise ConfigError when a (host, port) cannot be listened on (in use, or a port below 1024 without root).

    With reuse_port, gunicorn's master never binds: each worker does, and a worker that cannot is replaced
    by another that cannot, for ever. A plain bind here fails the way the workers would, once. It also
    fails when another server of ours has the port: reuse_port would otherwise share its traffic.
    """
    from app.settings import ConfigError

    for host, port in addresses:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn's: TIME_WAIT is no conflict
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); set PORT (and HOST) to an "
                                  "address this user may bind that no other program uses.") from None


def clear_metrics_folder() -> None:
    """Empty the metrics folder, so values of an earlier run's workers are not added to this one's."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def worker_exit(server, worker):
    """Write the request log lines still pending in the worker (app/telemetry/logs.py writes a few at a time) and
    stop its events drainer between two PutEvents calls."""
    from app.components import EXTENSION

    parts = getattr(getattr(worker, "wsgi", None), "extensions", {}).get(EXTENSION)
    if parts is not None:
        parts.request_log.flush()
        if parts.events is not None:
            parts.events.stop()  # the PutEvents call in flight ends and its events leave the queue


def child_exit(server, worker):
    """Drop a dead worker's live gauges from /metrics (its counters stay: they were really counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this file made."""
    if METRICS_FOLDER_MADE and os.environ.get("PROMETHEUS_MULTIPROC_DIR") == METRICS_FOLDER_MADE:
        shutil.rmtree(METRICS_FOLDER_MADE, ignore_errors=True)


def post_worker_init(worker):
    """Load the catalog before the worker takes requests; a worker that cannot load it stops gunicorn. Then start
    the worker's background work (the events drainer)."""
    from app import start_background, warm_up

    try:
        warm_up(worker.wsgi)
    except Exception as exc:  # noqa: BLE001 - any failure here means the service cannot serve
        worker.log.error("Cannot start: %s", exc)
        sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR: the arbiter halts instead of respawning forever
    start_background(worker.wsgi)
