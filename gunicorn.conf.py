"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory."""
import glob
import os
import shutil
import sys
import tempfile

# prometheus_client picks its multiprocess storage when it is first imported, so the folder must be set
# before anything imports the app (app.settings below imports the app package). One fresh folder per start.
# Only a folder made here is removed at exit: one inherited from the environment may be another server's.
METRICS_FOLDER_MADE = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    METRICS_FOLDER_MADE = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recs-metrics-")

from app.settings import DEFAULT_WEB_THREADS  # noqa: E402 - after PROMETHEUS_MULTIPROC_DIR, see above


def whole_number(name: str, default: int) -> int:
    """Read a positive whole number from the environment, or stop with a sentence (not a traceback)."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < 1:
        if METRICS_FOLDER_MADE:
            shutil.rmtree(METRICS_FOLDER_MADE, ignore_errors=True)
        sys.exit(f"Cannot start: {name} must be a whole number of at least 1, got {raw!r}.")
    return int(raw)


bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = whole_number("WEB_CONCURRENCY", 2)
worker_class = "gthread"
threads = whole_number("WEB_THREADS", DEFAULT_WEB_THREADS)
# Braze gives up after 2 s; a request still running after this is stuck, not slow.
timeout = whole_number("WORKER_TIMEOUT", 30)
graceful_timeout = whole_number("GRACEFUL_TIMEOUT", 20)
keepalive = 5
# The app writes one JSON line per request (app/logs.py); gunicorn's access log is off unless ACCESS_LOG asks,
# and then it shows the path without the query string, which holds user ids.
accesslog = os.environ.get("ACCESS_LOG") or None
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
logger_class = "app.logs.GunicornLogger"  # gunicorn's own lines as JSON too
# gunicorn's runtime control socket is one fixed path per user; several instances on a host would collide.
control_socket_disable = True


def on_starting(server):
    """Check the settings once, before any worker starts: a mistake stops gunicorn with one sentence."""
    from app.settings import ConfigError, Settings

    clear_metrics_folder()
    try:
        Settings.from_env()
    except ConfigError as exc:
        server.log.error("Cannot start: %s", exc)
        on_exit(server)  # gunicorn does not call it when on_starting exits
        sys.exit(2)


def clear_metrics_folder() -> None:
    """Empty the metrics folder, so values of an earlier run's workers are not added to this one's."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def worker_exit(server, worker):
    """Write the request log lines still pending in the worker (app/logs.py writes a few at a time)."""
    request_log = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("request_log")
    if request_log is not None:
        request_log.flush()


def child_exit(server, worker):
    """Drop a dead worker's live gauges from /metrics (its counters stay: they were really counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this file made."""
    if METRICS_FOLDER_MADE and os.environ.get("PROMETHEUS_MULTIPROC_DIR") == METRICS_FOLDER_MADE:
        shutil.rmtree(METRICS_FOLDER_MADE, ignore_errors=True)


def post_worker_init(worker):
    """Load the catalog before the worker takes requests; a worker that cannot load it stops gunicorn."""
    from app import warm_up

    try:
        warm_up(worker.wsgi)
    except Exception as exc:  # noqa: BLE001 - any failure here means the service cannot serve
        worker.log.error("Cannot start: %s", exc)
        sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR: the arbiter halts instead of respawning forever
