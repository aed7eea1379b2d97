"""check-send through Personalize's stand-in over HTTP: answers from Personalize, then the fallbacks of a throttled one."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Flask

from tests.integration.test_personalize_standin import CAMPAIGN, aws_env, standin  # noqa: F401 (fixtures)
from tests.standin.personalize import StandinHandle
from tests.unit.test_check_send import run, table


def test_check_send_counts_personalize_answers_then_a_throttled_campaign_s_fallbacks(
        make_app: Callable[..., Flask], standin: StandinHandle, tmp_path: Path) -> None:  # noqa: F811
    app = make_app(personalize_campaign_arn=CAMPAIGN)  # the sample batch output is the fallback
    users = tmp_path / "users.txt"
    users.write_text("user123\nuser456\nnobody\n")

    answered = run(app, str(users), "--tps", "50", "--max-fallback", "0")

    assert answered.exit_code == 0, answered.output
    assert table(answered.stdout, "source")["personalize"] == (3, "100.0%")
    assert "at most 50 calls/s" in answered.stdout
    assert sorted(standin.calls()["by_user"]) == ["nobody", "user123", "user456"]

    standin.set_fault("throttle")
    throttled = run(app, str(users), "--tps", "50", "--max-fallback", "5%")

    assert throttled.exit_code == 1
    sources = table(throttled.stdout, "source")
    # The first check cached nothing, so no stale answer: the batch output answers its users, popular items the rest.
    assert (sources["personalize"], sources["stale"], sources["batch"], sources["fallback"]) == (
        (0, "0.0%"), (0, "0.0%"), (2, "66.7%"), (1, "33.3%"))
    assert table(throttled.stdout, "fallback reason") == {"upstream_throttled": (3, "100.0%")}
