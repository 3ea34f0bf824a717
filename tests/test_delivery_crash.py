"""Crash test: a real worker process, SIGKILLed at random moments while Slack is faulty.

Every alert must reach the local Slack server exactly once: none lost, none twice. The worker is
killed from inside the server while a post is in flight (both before and after Slack accepted the
message) and at random moments, then restarted. ``bench/soak_delivery.py`` is the long version.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.delivery_harness import run_soak


@pytest.mark.slow
def test_sigkill_during_outages_delivers_every_alert_exactly_once(tmp_path: Path) -> None:
    result = run_soak(
        tmp_path,
        alerts=30,
        kills=6,
        channels=3,
        per_channel_interval=0.02,
        fault_rate=0.3,
        kill_rate=0.12,
        max_delay=0.3,
        seed=7,
        drain_timeout=60,
    )
    assert result.alerts == 30
    assert result.kills >= 6
    assert result.lost == 0, result
    assert result.duplicated == 0, result
    assert result.not_sent == 0, result
    assert sum(result.faults.values()) > 0  # Slack really was faulty
