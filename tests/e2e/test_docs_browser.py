"""/docs rendered by headless Chromium against `gunicorn wsgi:app`: Swagger UI loads from the service itself
(no CDN) and shows every operation of /openapi.json."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Gunicorn

OPERATIONS = {
    "/recommendations": "Recommend catalog items for a user",
    "/healthz": "Say the process is alive",
    "/readyz": "Say whether the catalog and the recommendation source are loaded",
    "/metrics": "Prometheus metrics of every worker",
}


def chromium() -> str:
    """Return Debian's chromium; fail under CI (where .ci/run installs it), skip on a machine without it."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    message = "chromium is not installed: apt-get install chromium (.ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(url: str, profile: Path, *flags: str) -> str:
    """Load url in headless Chromium, every other host unresolvable, with flags (what to do); return its stdout."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", *flags, url],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rendered_dom(url: str, profile: Path) -> str:
    """Load url in headless Chromium with no network beyond it and return the DOM after scripts ran."""
    return run_chromium(url, profile, "--dump-dom")


def test_docs_page_renders_every_operation(server: Gunicorn, tmp_path: Path) -> None:
    dom = rendered_dom(server.url + "/docs", tmp_path / "profile")
    assert 'class="swagger-ui' in dom, dom[:2000]
    for path, summary in OPERATIONS.items():
        assert f'data-path="{path}"' in dom, f"{path} is not rendered:\n{dom[:3000]}"
        assert summary in dom
    assert "Failed to load API definition" not in dom
