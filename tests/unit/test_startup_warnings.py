"""Start-up warnings about settings that are valid alone but work against each other (create_app)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import FakeAws

CAMPAIGN_ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/braze-recs"
FILTER_ARN = "arn:aws:personalize:us-east-1:123456789012:filter/by-category"


@pytest.mark.parametrize(("connect", "read", "warned"), [(0.2, 0.5, False), (0.3, 0.5, True), (0.3, 0.7, True)])
def test_start_up_warns_when_the_timeouts_do_not_fit_the_budget(
    make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture, connect: float, read: float, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="app"):
        make_app({"aws": FakeAws(personalize=lambda role, region: None)}, personalize_campaign_arn=CAMPAIGN_ARN,
                 personalize_connect_timeout=connect, personalize_read_timeout=read, request_budget_ms=800)
    lines = [r.getMessage() for r in caplog.records if "watchdog" in r.getMessage()]
    assert bool(lines) is warned
    if warned:
        assert f"({connect + read:.2f} s) is not less than REQUEST_BUDGET_MS (800 ms)" in lines[0]


@pytest.mark.parametrize(("budget", "transformer", "warned"), [(800, 500, False), (1200, 800, False),
                                                                (1500, 600, True)])
def test_start_up_warns_when_budget_and_transformer_exceed_braze_s_wait(
    make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture, budget: int, transformer: int, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="app"):
        make_app(admin_api_keys="a" * 32, request_budget_ms=budget, transformer_timeout_ms=transformer)
    lines = [r.getMessage() for r in caplog.records if "TRANSFORMER_TIMEOUT_MS" in r.getMessage()]
    assert bool(lines) is warned
    if warned:
        assert lines[0].startswith(f"REQUEST_BUDGET_MS + TRANSFORMER_TIMEOUT_MS ({budget + transformer} ms)")


@pytest.mark.parametrize(("settings", "warned"), [
    ({"filters": f"category={FILTER_ARN}"}, True),
    ({"promotion_filter_arn": FILTER_ARN}, True),
    ({"filters": f"category={FILTER_ARN}", "personalize_campaign_arn": CAMPAIGN_ARN}, False),
    ({}, False),
])
def test_start_up_warns_when_filters_have_only_a_batch_file(
    make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture, settings: dict[str, str], warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="app"):
        make_app({"aws": FakeAws(personalize=lambda role, region: None)}, **settings)
    lines = [r.getMessage() for r in caplog.records if "X-Ignored-Parameters" in r.getMessage()]
    assert bool(lines) is warned
    if warned:
        assert "PERSONALIZE_CAMPAIGN_ARN is not" in lines[0]
