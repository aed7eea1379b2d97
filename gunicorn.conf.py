"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory."""
import os
import sys

from app.settings import DEFAULT_WEB_THREADS

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", DEFAULT_WEB_THREADS))
# Braze gives up after 2 s; a request still running after this is stuck, not slow.
timeout = int(os.environ.get("WORKER_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG", "-") or None
errorlog = "-"
# gunicorn's runtime control socket is one fixed path per user; several instances on a host would collide.
control_socket_disable = True


def on_starting(server):
    """Check the settings once, before any worker starts: a mistake stops gunicorn with one sentence."""
    from app.settings import ConfigError, Settings

    try:
        Settings.from_env()
    except ConfigError as exc:
        server.log.error("Cannot start: %s", exc)
        sys.exit(2)


def post_worker_init(worker):
    """Load the catalog before the worker takes requests; a worker that cannot load it stops gunicorn."""
    from app import warm_up

    try:
        warm_up(worker.wsgi)
    except Exception as exc:  # noqa: BLE001 - any failure here means the service cannot serve
        worker.log.error("Cannot start: %s", exc)
        sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR: the arbiter halts instead of respawning forever
