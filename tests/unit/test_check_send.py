"""`flask check-send FILE`: what each recipient of a send would get, on the sample data and a recording fake."""
from __future__ import annotations

import bisect

import csv
import io
import itertools
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result as CliResult
from flask import Flask

from app.commands.pacing import Pace
from app.commands.progress import Progress
from app.errors import InvalidParameterError, UpstreamError
from tests.conftest import FakeRecommender

KNOWN = ["user123", "user456", "4638", "jane.doe@example.com", "Ana María", "🚀rocket-fan"]  # in the sample batch
UNKNOWN = ["nobody", "ghost@example.com"]
# Line 3 is blank, line 6 repeats user123, lines 9-11 are malformed: too long, a control character, not UTF-8.
MIXED = (
    b"user123\nuser456\n\n4638\njane.doe@example.com\nuser123\nnobody\nghost@example.com\n"
    + b"x" * 257 + b"\nbad\x01id\n\xff\xfeid\nAna Mar\xc3\xada\n\xf0\x9f\x9a\x80rocket-fan\n"
)


def run(app: Flask, *args: str) -> CliResult:
    return app.test_cli_runner().invoke(args=["check-send", *args])


def table(output: str, title: str) -> dict[str, tuple[int, str]]:
    """Return the rows of the summary's table with this title: name -> (recipients, share)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, count, share = line.rsplit(None, 2)
        rows[name] = (int(count.replace(",", "")), share)
    return rows


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    path.write_bytes(MIXED)
    return path


@pytest.fixture
def batch_app(make_app: Callable[..., Flask]) -> Flask:
    """The sample's batch-only service: a batch output of 20 users and the 40-item catalog."""
    return make_app()


def test_a_mixed_list_is_counted_per_source_and_reason(batch_app: Flask, mixed: Path) -> None:
    result = run(batch_app, str(mixed))

    assert result.exit_code == 0, result.output
    assert table(result.stdout, "source") == {"personalize": (0, "0.0%"), "batch": (8, "100.0%"),
                                              "stale": (0, "0.0%"), "fallback": (0, "0.0%")}
    assert table(result.stdout, "fallback reason") == {"no_known_items": (2, "25.0%")}
    assert "Checked 8 recipients read from a list of one id per line, uncapped" in result.stdout
    assert "Answered by a fallback: 2 of 8 recipients (25.0%)" in result.stdout
    assert "Recommended ids the catalog does not know: 0 of 60 (0.0%)" in result.stdout
    assert "Latency per call: p50 " in result.stdout


def test_malformed_blank_and_duplicate_lines_are_reported_by_line_number_never_by_id(batch_app: Flask,
                                                                                     mixed: Path) -> None:
    result = run(batch_app, str(mixed))

    assert ("Left out: 1 duplicate id (each user is checked once), 1 blank line, 3 malformed lines (never sent)."
            in result.stdout)
    assert "  line 9: Length must be between 1 and 256." in result.stdout
    assert "  line 10: Give a printable id" in result.stdout
    assert "  line 11: not valid UTF-8" in result.stdout
    for user_id in [*KNOWN, *UNKNOWN, "bad\x01id"]:
        assert user_id not in result.output  # personal data: only the report file has ids


def test_exit_codes_with_and_without_max_fallback(batch_app: Flask, mixed: Path) -> None:
    assert run(batch_app, str(mixed)).exit_code == 0  # 25% fall back, but no gate was asked for

    over = run(batch_app, str(mixed), "--max-fallback", "5%")
    assert over.exit_code == 1
    assert "--max-fallback 5.0%: 25.0% of recipients would get a fallback; do not send yet (exit 1)." in over.stdout

    within = run(batch_app, str(mixed), "--max-fallback", "0.25")
    assert within.exit_code == 0
    assert "within it" in within.stdout


@pytest.mark.parametrize("args", [
    ["--max-fallback", "lots"], ["--max-fallback", "150%"], ["--num-results", "0"], ["--num-results", "+2"],
    ["--context", "DEVICE"], ["--filter", "nope"], ["--filter-value", "bad-name=1"], ["--tps", "0"],
])
def test_a_malformed_option_is_a_usage_error(batch_app: Flask, mixed: Path, args: list[str]) -> None:
    result = run(batch_app, str(mixed), *args)

    assert result.exit_code == 2, result.output
    assert "Error:" in result.output


def test_an_option_is_named_as_on_the_command_line(batch_app: Flask, mixed: Path) -> None:
    result = run(batch_app, str(mixed), "--num-results", "500", "--context", "bad-name=x")

    assert result.exit_code == 2
    assert "--context bad-name: The name after 'context.'" in result.output
    assert "--num-results: Must be greater than or equal to 1" in result.output


def test_a_missing_file_is_a_usage_error(batch_app: Flask, tmp_path: Path) -> None:
    assert run(batch_app, str(tmp_path / "missing.csv")).exit_code == 2


def test_a_braze_segment_export_is_read_by_its_external_id_column(batch_app: Flask, tmp_path: Path) -> None:
    export = tmp_path / "segment.csv"
    export.write_text("\ufeffbraze_id,external_id,email\n"
                      "b1,user123,a@example.com\n"
                      "b2,,anonymous@example.com\n"  # no external_id: Braze has no user id to send
                      '"b3","Ana María","q@example.com"\n'
                      'b4,"nobody, really",z@example.com\n', encoding="utf-8")

    result = run(batch_app, str(export), "--num-results", "3")

    assert result.exit_code == 0, result.output
    assert "Checked 3 recipients read from a Braze export (external_id column)" in result.stdout
    assert "Left out: 1 row without an external_id." in result.stdout
    assert table(result.stdout, "source")["batch"] == (3, "100.0%")
    assert table(result.stdout, "fallback reason") == {"no_known_items": (1, "33.3%")}


def test_the_report_has_one_private_line_per_recipient(batch_app: Flask, mixed: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    report.write_text("old\n")
    report.chmod(0o644)  # a file that was there is made private too

    result = run(batch_app, str(mixed), "--report", str(report), "--num-results", "3")

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(report).st_mode) == 0o600
    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert [row["user_id"] for row in rows] == ["user123", "user456", "4638", "jane.doe@example.com", "nobody",
                                                "ghost@example.com", "Ana María", "🚀rocket-fan"]
    assert list(rows[0]) == ["user_id", "source", "cache", "fallback_reason", "items", "backfilled", "ms"]
    assert rows[0] | {"ms": ""} == {"user_id": "user123", "source": "batch", "cache": "MISS", "fallback_reason": "",
                                    "items": "1740|1333|1925", "backfilled": "0", "ms": ""}
    nobody = rows[4]
    assert (nobody["fallback_reason"], nobody["backfilled"], len(nobody["items"].split("|"))) == (
        "no_known_items", "3", 3)
    assert all(float(row["ms"]) >= 0 for row in rows)


def test_a_report_that_cannot_be_written_is_a_usage_error(batch_app: Flask, mixed: Path, tmp_path: Path) -> None:
    result = run(batch_app, str(mixed), "--report", str(tmp_path / "no-such-folder" / "report.csv"))

    assert result.exit_code == 2
    assert "cannot write" in result.output


def test_ids_the_catalog_does_not_know_are_counted(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    batch = tmp_path / "batch.json.out"
    batch.write_text('{"input": {"userId": "a"}, "output": {"recommendedItems": ["1000", "gone-1", "1037", "gone-2"]}}\n'
                     '{"input": {"userId": "b"}, "output": {"recommendedItems": ["1111", "1000"]}}\n')
    users = tmp_path / "users.txt"
    users.write_text("a\nb\n")

    result = run(make_app(recommendations_uri=str(batch)), str(users))

    assert "Recommended ids the catalog does not know: 2 of 6 (33.3%)" in result.stdout


def test_a_check_asks_the_source_even_when_a_fresh_answer_is_cached_and_caches_nothing(
        make_app: Callable[..., Flask], tmp_path: Path) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037"], "u2": ["1111"]})
    app = make_app({"recommender": fake})
    client = app.test_client()
    assert client.get("/recommendations?user_id=u1").headers["X-Cache"] == "MISS"  # u1's answer is cached now
    fake.answers["u1"] = ["1074"]
    users, report = tmp_path / "users.txt", tmp_path / "report.csv"
    users.write_text("u1\nu2\n")

    result = run(app, str(users), "--report", str(report), "--tps", "1000")

    assert result.exit_code == 0, result.output
    assert fake.calls[1:] == [("u1", 10), ("u2", 10)]  # not answered from the cache
    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert [(row["cache"], row["items"].split("|")[0]) for row in rows] == [("MISS", "1074"), ("MISS", "1111")]
    assert client.get("/recommendations?user_id=u2").headers["X-Cache"] == "MISS"  # the check wrote nothing
    assert client.get("/recommendations?user_id=u1").headers["X-Cache"] == "HIT"  # and left the send's answer
    assert table(result.stdout, "source")["fake"] == (2, "100.0%")


def test_when_the_source_fails_a_cached_answer_stands_in_as_stale(make_app: Callable[..., Flask],
                                                                  tmp_path: Path) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037"]})
    app = make_app({"recommender": fake})
    app.test_client().get("/recommendations?user_id=u1")
    fake.error = UpstreamError("Personalize throttled.", code="upstream_throttled")
    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\n")

    result = run(app, str(users), "--tps", "1000", "--max-fallback", "0")

    assert result.exit_code == 1
    sources = table(result.stdout, "source")
    assert (sources["stale"], sources["fallback"]) == ((1, "50.0%"), (1, "50.0%"))
    assert table(result.stdout, "fallback reason") == {"upstream_throttled": (2, "100.0%")}


def test_a_request_the_source_rejects_is_counted_as_an_error(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    fake = FakeRecommender()
    fake.error = InvalidParameterError("Personalize rejected the request.", code="rejected_by_personalize")
    users = tmp_path / "users.txt"
    users.write_text("u1\n")

    result = run(make_app({"recommender": fake}), str(users), "--tps", "1000", "--max-fallback", "100%")

    assert table(result.stdout, "source")["error"] == (1, "100.0%")
    assert table(result.stdout, "fallback reason") == {"rejected_by_personalize": (1, "100.0%")}
    assert result.exit_code == 0  # 100% is allowed: the gate is the caller's to set


def test_an_empty_list_fails_the_gate(batch_app: Flask, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("\n\n")

    assert run(batch_app, str(users)).exit_code == 0
    gated = run(batch_app, str(users), "--max-fallback", "5%")
    assert gated.exit_code == 1
    assert "no recipient could be checked" in gated.stdout


def test_an_unknown_recommender_configuration_is_a_usage_error(make_app: Callable[..., Flask], mixed: Path) -> None:
    result = run(make_app(), str(mixed), "--recommender", "nope")

    assert result.exit_code == 2
    assert "Recommender configurations are off" in result.output


def test_a_live_source_is_called_at_most_tps_times_a_second(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    fake = FakeRecommender()
    users = tmp_path / "users.txt"
    users.write_text("".join(f"u{n}\n" for n in range(6)))
    app = make_app({"recommender": fake})

    started = time.monotonic()
    result = run(app, str(users), "--tps", "10")
    elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.output
    assert len(fake.calls) == 6
    assert 0.5 <= elapsed < 5  # 5 gaps of 0.1 s; no burst at the start
    assert "at most 10 calls/s" in result.stdout


def test_a_batch_only_service_is_not_capped(batch_app: Flask, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("".join(f"user{n}\n" for n in range(1000, 1010)))

    started = time.monotonic()
    result = run(batch_app, str(users), "--tps", "1")
    elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.output
    assert elapsed < 5  # capped at 1 a second, 10 users would take 9 s
    assert "uncapped" in result.stdout


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], Any]:
    """A millisecond clock for pyrate-limiter that its sleeps move forward: [now in ms], and the clock."""
    now = [1_000_000.0]

    class Clock:
        def now(self) -> int:
            return int(now[0])

    def sleep(seconds: float) -> None:
        now[0] += seconds * 1000

    monkeypatch.setattr("pyrate_limiter.limiter.sleep", sleep)
    return now, Clock()


def test_the_pace_spaces_calls_evenly(fake_time: tuple[list[float], Any]) -> None:
    now, clock = fake_time
    with Pace(4, clock=clock) as pace:  # type: ignore[arg-type]
        starts = []
        for _ in range(5):
            pace.wait()
            starts.append(now[0])

    assert [round(b - a) for a, b in itertools.pairwise(starts)] == [250, 250, 250, 250]
    assert starts[0] == 1_000_000.0  # the first call does not wait


@pytest.mark.parametrize("per_second", [485, 1000, 2000])
def test_the_pace_keeps_rates_that_are_not_whole_milliseconds_apart(fake_time: tuple[list[float], Any],
                                                                   per_second: int) -> None:
    """pyrate-limiter waits whole milliseconds: a one-token bucket let 485 a second through as 334."""
    now, clock = fake_time
    starts: list[float] = []
    with Pace(per_second, clock=clock) as pace:  # type: ignore[arg-type]
        for _ in range(per_second * 3):
            pace.wait()
            starts.append(now[0])

    seconds = (starts[-1] - starts[0]) / 1000
    assert 0.97 * per_second <= (len(starts) - 1) / seconds <= per_second + 1
    busiest = max(bisect.bisect_left(starts, start + 1000) - n for n, start in enumerate(starts))
    assert busiest <= per_second + 1  # never more than the cap (and the one the bucket starts with) in a second


def test_the_command_ends_with_a_summary_on_stderr(batch_app: Flask, mixed: Path) -> None:
    result = run(batch_app, str(mixed))

    assert result.stderr.splitlines()[-1].startswith("check-send: 8 users in ")
    assert "check-send" not in result.stdout.splitlines()[0]


def test_progress_away_from_a_terminal_is_a_plain_line_every_few_seconds() -> None:
    clock = [100.0]
    stream = io.StringIO()
    with Progress("check-send", 10, stream=stream, line_seconds=10, terminal=False, clock=lambda: clock[0]) as p:
        for when in (101, 102, 105, 112, 113, 114, 125):
            clock[0] = when
            p.advance()

    assert stream.getvalue().splitlines() == [
        "check-send: 4/10 users (40%), 0.3 users/s, about 18.0 s left",
        "check-send: 7/10 users (70%), 0.3 users/s, about 10.7 s left",
        "check-send: 7 users in 25.0 s (0.3 users/s)",
    ]


def test_progress_on_a_terminal_is_a_bar_with_count_and_rate() -> None:
    stream = io.StringIO()
    with Progress("check-send", 3, stream=stream, terminal=True) as p:
        for _ in range(3):
            p.advance()

    output = stream.getvalue()
    assert "3/3" in output and "users/s" in output
    assert "check-send: 3 users in " in output.splitlines()[-1]  # after the escape that shows the cursor again


def test_report_cells_a_spreadsheet_would_run_as_formulas_are_kept_as_text(make_app: Callable[..., Flask],
                                                                          tmp_path: Path) -> None:
    fake = FakeRecommender({"=HYPERLINK(\"http://x\")": ["1000"], "+1": ["1037"], "plain": ["1111"]})
    users, report = tmp_path / "users.txt", tmp_path / "report.csv"
    users.write_text('=HYPERLINK("http://x")\n+1\nplain\n')

    result = run(make_app({"recommender": fake}), str(users), "--report", str(report), "--tps", "1000")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert [row["user_id"] for row in rows] == ["'=HYPERLINK(\"http://x\")", "'+1", "plain"]
