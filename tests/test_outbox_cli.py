"""`aggregator outbox`, `outbox retry` and `slack test` as real subprocesses on a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from aggregator.models import Entry
from aggregator.store import Store
from tests.slackserver import TOKEN, SlackServer
from tests.storing import alert_item, store_items

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "aggregator" / "config" / "defaults"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "SLACK_API_URL")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "from aggregator.cli import main; main()", "--config", str(CONFIG),
         *args],
        capture_output=True, text=True, timeout=60, env=environ, cwd=ROOT, check=False,
    )  # fmt: skip


def queue(db: Path) -> list[int]:
    store = Store.open(db)
    now = datetime.now(UTC)
    batch = []
    for n in (1, 2):
        entry = Entry("https://f.example/", f"g{n}", f"https://n.example/{n}",
                      f"https://n.example/{n}", f"Story {n}", "", now, f"h{n}", "News")  # fmt: skip
        batch.append(alert_item(entry, "ai-policy", "#ai-policy", "AI"))
    store_items(store, batch, now)
    rows = store.outbox.rows()
    ids = [r.alert.id for r in rows]
    store.outbox.mark_dead(rows[:1], now, "not_in_channel: the bot is not in")
    store.close()
    return ids


def test_outbox_list_and_retry(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    dead, pending = queue(db)
    listed = run("--db", str(db), "outbox")
    assert listed.returncode == 0, listed.stderr
    assert f"#{dead} dead" in listed.stdout and "not_in_channel" in listed.stdout
    assert f"#{pending} pending" in listed.stdout
    assert run("--db", str(db), "outbox", "retry").returncode == 2
    retried = run("--db", str(db), "outbox", "retry", "--dead")
    assert retried.returncode == 0 and "re-queued 1 dead alert" in retried.stdout
    again = run("--db", str(db), "outbox", "retry", str(dead))
    assert "re-queued 0 alerts" in again.stdout  # already pending


def test_slack_test_reports_per_channel(tmp_path: Path) -> None:
    with SlackServer() as slack:
        slack.fail_channel("#executive-orders", "not_in_channel")
        env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": slack.url}
        result = run("--db", str(tmp_path / "b.db"), "slack", "test", env=env)
        assert result.returncode == 1
        assert "#ai-policy: ok: posted as alertbot" in result.stdout
        assert (
            "#executive-orders: FAILED: not_in_channel: the bot is not in #executive-orders: "
            "invite it" in result.stdout
        )
        assert len(slack.posts("#ai-policy")) == 1
    no_token = run("slack", "test")
    assert no_token.returncode == 1 and "no Slack token" in no_token.stderr
