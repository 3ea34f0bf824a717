"""``aggregator feedback`` as a real subprocess over a real database, and the weekly summary.

Alerts are really delivered to the local Slack stand-in and reacted to there; the figures are
then checked against counts worked out by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.feedback.read import read_reactions
from aggregator.feedback.report import last_week, queue_weekly_summary, wilson
from aggregator.models import AlertKind, AlertState, NoticePayload
from aggregator.store.labels import LabelSource
from tests.configs import SHIPPED, link_models
from tests.feedback_world import FEEDBACK, FakeClock, Sent, World
from tests.slackserver import TOKEN, SlackServer

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)
TOPIC_NAMES = ["ai-policy", "executive-orders"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW - timedelta(hours=3))


@pytest.fixture
def slack(clock: FakeClock) -> Iterator[SlackServer]:
    with SlackServer(clock=lambda: clock.now.timestamp()) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, slack: SlackServer, clock: FakeClock) -> Iterator[World]:
    w = World(tmp_path, slack, clock)
    yield w
    w.close()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "topics.toml").write_text((SHIPPED / "topics.toml").read_text())
    link_models(directory)
    (directory / "feeds.toml").write_text('[[feeds]]\nurl = "https://feeds.example/a.xml"\n')
    (directory / "aggregator.toml").write_text("")
    return directory


def cli(config_dir: Path, world: World, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    environ.pop("CREDENTIALS_DIRECTORY", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config_dir), "--db", str(world.path),
         "feedback", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=environ, check=False,
    )  # fmt: skip


def read(world: World) -> None:
    clock = world.clock
    report = read_reactions(world.store, world.sink, FEEDBACK, clock.now,
                            monotonic=clock.monotonic, wait=clock.wait)  # fmt: skip
    assert report.complete, report


def marked_world(world: World) -> dict[str, Sent]:
    """Five ai-policy alerts (one shared with executive-orders) and one executive-orders alert,
    marked by three people."""
    w = world
    sent = {
        "liked": w.alert("Senate passes AI safety bill requiring audits"),
        "disliked": w.alert("EU AI Act fines begin for AI companies"),
        "tie": w.alert("FTC opens AI chatbot probe"),
        "unmarked": w.alert("Congress debates AI export rules"),
        "both": w.alert(
            "Trump signs executive order on AI chips export", "ai-policy", "executive-orders"
        ),
        "order": w.alert("Trump signs executive order on federal hiring", "executive-orders"),
    }
    w.react(sent["liked"], "+1", "U1", "U2")
    w.react(sent["disliked"], "-1", "U1")
    w.react(sent["disliked"], "+1", "U2")
    w.react(sent["disliked"], "x", "U3")  # two against one
    w.react(sent["tie"], "+1", "U1")
    w.react(sent["tie"], "-1", "U2")
    w.react(sent["both"], "-1", "U3")  # not relevant for both of its topics
    w.react(sent["order"], "white_check_mark", "U1")
    read(w)
    return sent


def test_feedback_json_counts_alerts_by_their_resolved_label(
    world: World, config_dir: Path
) -> None:
    sent = marked_world(world)
    result = cli(config_dir, world, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    ai, eo = report["topics"]["ai-policy"], report["topics"]["executive-orders"]
    assert {k: ai[k] for k in ("alerts", "relevant", "not_relevant", "unsure", "unmarked")} == {
        "alerts": 5, "relevant": 1, "not_relevant": 2, "unsure": 1, "unmarked": 1,
    }  # fmt: skip
    low, high = wilson(1, 3) or (0, 0)
    assert ai["precision"] == round(1 / 3, 4)
    assert (ai["precision_low"], ai["precision_high"]) == (round(low, 4), round(high, 4))
    assert 0.06 < low < 0.07 and 0.79 < high < 0.80  # Wilson's interval for 1 of 3
    assert {k: eo[k] for k in ("alerts", "relevant", "not_relevant", "unsure", "unmarked")} == {
        "alerts": 2, "relevant": 1, "not_relevant": 1, "unsure": 0, "unmarked": 0,
    }  # fmt: skip
    assert eo["precision"] == 0.5
    marked = {(m["topic"], m["alert_id"]) for m in report["not_relevant"]}
    assert marked == {
        ("ai-policy", sent["disliked"].alert_id),
        ("ai-policy", sent["both"].alert_id),
        ("executive-orders", sent["both"].alert_id),
    }
    votes = next(m["votes"] for m in report["not_relevant"]
                 if m["alert_id"] == sent["disliked"].alert_id)  # fmt: skip
    assert votes == {"relevant": 1, "not_relevant": 2, "unsure": 0}


def test_feedback_text_shows_the_table_and_why_each_bad_alert_alerted(
    world: World, config_dir: Path
) -> None:
    marked_world(world)
    result = cli(config_dir, world)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.strip().startswith("topic"))
    assert header.split() == ["topic", "alerts", "relevant", "not", "relevant", "unsure",
                              "unmarked", "precision"]  # fmt: skip
    ai = next(line for line in lines if line.strip().startswith("ai-policy"))
    assert ai.split()[:6] == ["ai-policy", "5", "1", "2", "1", "1"]
    assert "33% (6%-79%)" in ai
    eo = next(line for line in lines if line.strip().startswith("executive-orders"))
    assert "50% (9%-91%)" in eo
    assert "marked not relevant (3):" in result.stdout
    assert "ai-policy: 'EU AI Act fines begin for AI companies' (Example News" in result.stdout
    why = [line.strip() for line in lines if "why it alerted:" in line]
    assert len(why) == 3
    # the short form of explain: today's matched words, labelled clauses and the model's score
    assert all("matched" in w and "clauses: " in w and "score " in w for w in why), why
    assert any("matched EU, AI" in w for w in why), why


def test_since_leaves_out_older_alerts(world: World, config_dir: Path) -> None:
    world.clock.now = NOW - timedelta(days=40)
    old = world.alert("Old AI safety bill story")
    world.clock.now = NOW - timedelta(hours=1)
    world.alert("New AI safety bill story")
    world.store.labels.set(old.entry_id, "ai-policy", 0, LabelSource.CLI, "cli", world.clock.now)
    recent = json.loads(cli(config_dir, world, "--json").stdout)["topics"]["ai-policy"]
    assert (recent["alerts"], recent["not_relevant"], recent["unmarked"]) == (1, 0, 1)
    assert recent["precision"] is None and recent["precision_low"] is None
    wider = json.loads(cli(config_dir, world, "--json", "--since", "60d").stdout)
    ai = wider["topics"]["ai-policy"]
    assert (ai["alerts"], ai["not_relevant"]) == (2, 1)
    text = cli(config_dir, world, "--since", "60d")
    assert "ai-policy" in text.stdout and "- (none marked)" in text.stdout  # executive-orders
    bad = cli(config_dir, world, "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_refresh_needs_the_token(world: World, config_dir: Path) -> None:
    sent = world.alert("Senate passes AI safety bill requiring audits")
    world.react(sent, "+1", "U1")
    result = cli(config_dir, world, "--refresh")
    assert result.returncode == 2
    assert "--refresh reads the reactions from Slack and needs the bot token" in result.stderr
    assert "SLACK_BOT_TOKEN" in result.stderr
    assert world.store.labels.count() == 0


def test_refresh_reads_the_reactions_first(
    world: World, config_dir: Path, slack: SlackServer
) -> None:
    sent = world.alert("Senate passes AI safety bill requiring audits")
    order = world.alert("Trump signs executive order on federal hiring", "executive-orders")
    world.react(sent, "-1", "U7")
    world.react(order, "+1", "U7", "U8")
    env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": slack.url}
    result = cli(config_dir, world, "--refresh", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "read reactions on 2 of 2 alerts in 2 channel(s): 2 Slack call(s), 3 label" in (
        result.stderr
    )
    topics = json.loads(result.stdout)["topics"]
    assert (topics["ai-policy"]["not_relevant"], topics["executive-orders"]["relevant"]) == (1, 1)
    assert TOKEN not in result.stdout + result.stderr
    assert world.labels(sent) == {"U7": 0}


# -- the weekly summary ---------------------------------------------------------------------------


def test_the_weekly_summary_is_queued_once_per_iso_week(world: World) -> None:
    monday = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # ISO week 49 begins
    world.clock.now = monday - timedelta(days=3)  # Friday of week 48
    liked = world.alert("Senate passes AI safety bill requiring audits")
    disliked = world.alert("EU AI Act fines begin for AI companies")
    world.alert("Trump signs executive order on federal hiring", "executive-orders")
    world.react(liked, "+1", "U1")
    world.react(disliked, "-1", "U1")
    read(world)
    store = world.store
    assert queue_weekly_summary(store, None, monday + timedelta(hours=9), TOPIC_NAMES) is None
    first = queue_weekly_summary(store, "#ops", monday + timedelta(hours=9), TOPIC_NAMES)
    assert first is not None
    again = queue_weekly_summary(store, "#ops", monday + timedelta(days=6), TOPIC_NAMES)
    assert again is None  # the same week: once
    [row] = [r for r in store.outbox.rows() if r.alert.kind == AlertKind.OPS]
    assert isinstance(row.alert.payload, NoticePayload)
    text = row.alert.payload.text
    assert text.splitlines() == [
        "Alerts sent last week (2026-W48, Nov 23 to Nov 29): ai-policy 2, executive-orders 1.",
        "Marked by the team: ai-policy 1 relevant, 1 not relevant, 0 unmarked or unsure; "
        "executive-orders 0 relevant, 0 not relevant, 1 unmarked or unsure.",
        "Live precision (95% interval): ai-policy 50% (9%-91%); executive-orders - (none "
        "marked). Run 'aggregator feedback --since 7d' for the alerts marked not relevant and "
        "why.",
    ]
    # the next week had no alert: nothing; the one after has one: a second summary
    assert queue_weekly_summary(store, "#ops", monday + timedelta(days=7), TOPIC_NAMES) is None
    world.clock.now = monday + timedelta(days=10)
    world.alert("Congress debates AI export rules")
    later = queue_weekly_summary(store, "#ops", monday + timedelta(days=14), TOPIC_NAMES)
    assert later is not None and later != first
    # it goes out through the outbox like every ops notice
    world.slack.add_channel("#ops")
    world.outbox().deliver_due(monday + timedelta(days=14))
    posts = world.slack.posts("#ops")
    assert len(posts) == 2 and "2026-W48" in posts[0].text and "2026-W50" in posts[1].text
    assert store.outbox.row(later) is not None
    assert store.outbox.row(later).state == AlertState.SENT  # type: ignore[union-attr]


def test_last_week_is_the_previous_iso_week() -> None:
    start, end, name = last_week(datetime(2027, 1, 3, 23, 0, tzinfo=UTC))  # a Sunday
    assert (start, end, name) == (
        datetime(2026, 12, 21, tzinfo=UTC),
        datetime(2026, 12, 28, tzinfo=UTC),
        "2026-W52",
    )
    assert last_week(datetime(2027, 1, 4, 0, 1, tzinfo=UTC))[2] == "2026-W53"


def test_wilson_interval() -> None:
    assert wilson(0, 0) is None
    low, high = wilson(10, 10) or (0, 0)
    assert high == 1.0 and 0.72 < low < 0.73
    low, high = wilson(0, 5) or (1, 1)
    assert low == 0.0 and 0.43 < high < 0.44
