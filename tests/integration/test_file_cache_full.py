"""A file cache that cannot be written (a full disk) is one log line per change of state and a metric."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SAMPLE_BATCH, SAMPLE_CATALOG

# Run in a process of its own: RLIMIT_FSIZE makes every write to a regular file past 16 bytes fail with EFBIG,
# as a full disk fails them with ENOSPC, for root too (a read-only folder does not stop root).
SCRIPT = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
from app import create_app
from tests.conftest import FakeRecommender

catalog, batch, cache_dir, data_dir = sys.argv[1:5]
app = create_app({"catalog_uri": catalog, "recommendations_uri": batch, "cache_dir": cache_dir,
                  "data_dir": data_dir, "cache_local_seconds": 0, "log_flush_ms": 0, "log_level": "WARNING"},
                 recommender=FakeRecommender({f"u{n}": ["1000", "1037"] for n in range(40)}))
client = app.test_client()

def metrics():
    text = client.get("/metrics").get_data(as_text=True)
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("recs_answer_cache")}

statuses = [client.get(f"/recommendations?user_id=u{n}").status_code for n in range(2)]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
statuses += [client.get(f"/recommendations?user_id=u{n}").status_code for n in range(2, 32)]
during = metrics()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
statuses += [client.get(f"/recommendations?user_id=u{n}").status_code for n in range(32, 40)]
print(json.dumps({"statuses": statuses, "during": during, "after": metrics()}))
"""


def test_a_full_cache_disk_logs_once_per_change_of_state(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SAMPLE_CATALOG), str(SAMPLE_BATCH), str(cache_dir), str(tmp_path / "d")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        # This process's own metrics registry (prometheus_client would write files wherever a set variable points).
        env={k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]

    assert report["statuses"] == [200] * 40  # the cache failing never costs an answer
    cache_lines = [(line["level"], line["message"]) for line in lines if line["logger"] == "app.caching.answers"]
    assert [m.split(" (")[0] for _, m in cache_lines] == ["answer cache failing", "answer cache works again"]
    assert "File too large" in cache_lines[0][1] and str(cache_dir) not in cache_lines[0][1]
    # No per-request warning, and no traceback anywhere (3,157 lines for 3,400 requests before).
    assert not [line for line in lines if "exception" in line or line["logger"] == "root"]
    assert "Traceback" not in done.stderr
    assert report["during"]["recs_answer_cache_failing"] == 1
    assert report["during"]['recs_answer_cache_errors_total{operation="write"}'] == 30
    assert report["after"]["recs_answer_cache_failing"] == 0
    assert not list(cache_dir.glob("*.__wz_cache"))  # no half-written files left to fill the disk further
