"""``aggregator doctor`` against a real config directory, real SQLite files and the local Slack
server (tests/slackserver.py); the end-to-end case runs the real command as a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from aggregator.admin.doctor import Check, check_database, check_feeds, format_report, run_checks
from aggregator.config.model import FeedConfig
from aggregator.cycle.plan import FeedUpdate
from aggregator.models import FeedStatus
from aggregator.store import MIGRATIONS, Store
from tests.configs import link_models
from tests.feedserver import FeedServer
from tests.slackserver import TOKEN, SlackServer

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def rss(title: str) -> bytes:
    published = format_datetime(datetime.now(UTC) - timedelta(days=3))
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed</title><item>'
        f"<guid>g1</guid><title>{title}</title><link>https://news.example/1</link>"
        f"<pubDate>{published}</pubDate></item></channel></rss>"
    ).encode()


def write_config(directory: Path, feed_urls: list[str], *, topics: str | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    shipped = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
    (directory / "topics.toml").write_text(topics or shipped, encoding="utf-8")
    link_models(directory)
    (directory / "aggregator.toml").write_text(
        '[fetch]\ntimeout = "2s"\ndeadline = "3s"\nparse_workers = 1\nallow_private = true\n',
        encoding="utf-8",
    )
    lines = [f'[[feeds]]\nurl = "{u}"\nname = "Outlet {i}"\n' for i, u in enumerate(feed_urls)]
    (directory / "feeds.toml").write_text("\n".join(lines), encoding="utf-8")
    return directory


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        server.add_channel("ai-policy")
        server.add_channel("executive-orders")
        yield server


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config", ["https://news.example/feed.xml"])


def env(slack: SlackServer, token: str | None = TOKEN) -> dict[str, str]:
    environ = {"SLACK_API_URL": slack.url}
    if token:
        environ["SLACK_BOT_TOKEN"] = token
    return environ


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# -- the whole command ----------------------------------------------------------------------------


def test_a_healthy_install_passes_every_check_and_exits_0(
    tmp_path: Path, slack: SlackServer
) -> None:
    with FeedServer() as feeds:
        urls = [feeds.serve("/a.xml", rss("Pie contest")), feeds.serve("/b.xml", rss("Fair"))]
        config = write_config(tmp_path / "config", urls)
        db = tmp_path / "state" / "bot.db"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AGGREGATOR_"))
        }
        environ |= {**env(slack), "PYTHONPATH": str(REPO)}
        base = [sys.executable, "-m", "aggregator", "--config", str(config), "--db", str(db)]
        poll = subprocess.run(
            [*base, "poll", "--once"], env=environ, capture_output=True, text=True, timeout=60
        )
        assert poll.returncode == 0, poll.stderr
        doctor = subprocess.run(
            [*base, "doctor"], env=environ, capture_output=True, text=True, timeout=60
        )

    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert all(line.startswith("ok") for line in lines[:-1]), doctor.stdout
    assert lines[-1] == "8 of 8 checks passed: all good."
    assert "2 feeds, 2 topics (ai-policy, executive-orders); every topic's examples pass" in (
        doctor.stdout
    )
    assert f"migrated (schema version {max(MIGRATIONS)}) and in WAL mode" in doctor.stdout
    assert "valid: the bot is alertbot in Test Team" in doctor.stdout
    assert "channel #ai-policy: exists (C" in doctor.stdout
    assert "Slack feedback: reactions on alerts are readable in 2 channel(s)" in doctor.stdout
    assert "2 of 2 feeds were reachable on their last fetch" in doctor.stdout
    assert slack.posts() == []  # the doctor never posts
    assert TOKEN not in doctor.stdout + doctor.stderr


def test_failures_exit_1_with_a_fix_for_each(tmp_path: Path, slack: SlackServer) -> None:
    config = write_config(tmp_path / "config", ["https://news.example/feed.xml"])
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AGGREGATOR_"))}
    environ |= {"SLACK_API_URL": slack.url, "PYTHONPATH": str(REPO)}
    doctor = subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), "--db",
         str(tmp_path / "bot.db"), "doctor"],
        env=environ, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert doctor.returncode == 1
    assert "FAILED  Slack token: no token is set" in doctor.stdout
    assert "        fix: set SLACK_BOT_TOKEN" in doctor.stdout
    assert "FAILED  channels: not checked (#ai-policy, #executive-orders)" in doctor.stdout
    assert doctor.stdout.splitlines()[-1].endswith("fix the FAILED checks above.")


# -- config ---------------------------------------------------------------------------------------


def test_an_invalid_config_fails_and_points_at_check_config(
    tmp_path: Path, slack: SlackServer
) -> None:
    broken = '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI AND ("\n'
    config = write_config(tmp_path / "config", ["https://news.example/f.xml"], topics=broken)
    checks = by_name(run_checks(config, env(slack), db_path=str(tmp_path / "bot.db")))
    assert not checks["config"].ok
    assert "topics.toml" in checks["config"].detail
    assert "check-config" in checks["config"].fix
    assert checks["Slack token"].ok  # the rest is still checked where it can be
    assert "feeds" not in checks


def test_a_failing_topic_example_fails_the_config_check(tmp_path: Path, slack: SlackServer) -> None:
    topics = (
        '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "regulation"\n'
        '[topics.ai-policy.examples]\nmatch = ["A new chatbot launches"]\n'
    )
    config = write_config(tmp_path / "config", ["https://news.example/f.xml"], topics=topics)
    check = by_name(run_checks(config, env(slack), db_path=str(tmp_path / "bot.db")))["config"]
    assert not check.ok
    assert "A new chatbot launches" in check.detail


# -- Slack ----------------------------------------------------------------------------------------


def test_a_rejected_token_is_named_without_showing_it(tmp_path: Path, config_dir: Path) -> None:
    secret = "xoxb-9999-8888-DoNotShowMe"
    with SlackServer(token="xoxb-the-right-one") as slack:
        checks = run_checks(config_dir, env(slack, secret), db_path=str(tmp_path / "bot.db"))
    token = by_name(checks)["Slack token"]
    assert not token.ok
    assert "invalid_auth" in token.detail
    assert "OAuth" in token.fix
    assert "DoNotShowMe" not in format_report(checks)


def test_missing_scopes_are_listed(tmp_path: Path, config_dir: Path, slack: SlackServer) -> None:
    slack.scopes = ("chat:write", "channels:read")
    check = by_name(run_checks(config_dir, env(slack), db_path=str(tmp_path / "bot.db")))[
        "Slack scopes"
    ]
    assert not check.ok
    assert check.detail == "the token lacks chat:write.public, channels:history"
    assert "slack-app-manifest.yml" in check.fix


def test_scopes_unknown_when_slack_sends_no_header(
    tmp_path: Path, config_dir: Path, slack: SlackServer
) -> None:
    slack.scopes = None
    check = by_name(run_checks(config_dir, env(slack), db_path=str(tmp_path / "bot.db")))[
        "Slack scopes"
    ]
    assert check.ok
    assert "not checked" in check.detail


def test_each_channel_is_looked_up_and_judged_without_posting(
    tmp_path: Path, config_dir: Path
) -> None:
    topics = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
    with SlackServer(auto_channels=False) as slack:
        slack.add_channel("ai-policy", is_member=False)  # public: chat:write.public suffices
        slack.add_channel("archived", is_archived=True)
        slack.add_channel("secret", is_private=True, is_member=False)
        slack.add_channel("members-only", is_member=False)
        for channel in ("archived", "secret", "missing", "members-only"):
            topics += f'\n[topics.t-{channel}]\nchannel = "#{channel}"\nquery = "x{channel}"\n'
        write_config(config_dir, ["https://news.example/feed.xml"], topics=topics)
        checks = by_name(run_checks(config_dir, env(slack), db_path=str(tmp_path / "bot.db")))
        slack.scopes = ("chat:write", "channels:history", "channels:read")
        without_public = by_name(
            run_checks(config_dir, env(slack), db_path=str(tmp_path / "bot.db"))
        )
        assert slack.posts() == []

    assert checks["channel #ai-policy"].ok
    assert "not a member but may post with chat:write.public" in checks["channel #ai-policy"].detail
    assert not checks["channel #executive-orders"].ok  # never created in this workspace
    assert "channel_not_found" in checks["channel #executive-orders"].detail
    assert not checks["channel #missing"].ok
    assert not checks["channel #archived"].ok
    assert "unarchive" in checks["channel #archived"].fix
    assert not checks["channel #secret"].ok
    assert checks["channel #secret"].fix == "invite the bot: /invite @bot in #secret"
    assert checks["channel #members-only"].ok
    assert not without_public["channel #members-only"].ok
    assert "chat:write.public" in without_public["channel #members-only"].fix
    # posting without membership works; reading the team's reactions there does not
    feedback = checks["Slack feedback"]
    assert not feedback.ok
    assert feedback.detail == (
        "the team's reactions cannot be read as labels in: #ai-policy (the bot is not a member); "
        "#members-only (the bot is not a member); #secret (the bot is not a member)"
    )
    assert feedback.fix.startswith("invite the bot to #ai-policy (/invite @bot); ")
    assert feedback.fix.endswith("or set [feedback] enabled = false")


def test_feedback_needs_groups_history_in_a_private_channel(
    tmp_path: Path, config_dir: Path
) -> None:
    topics = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
    topics += '\n[topics.t-secret]\nchannel = "#secret"\nquery = "xsecret"\n'
    write_config(config_dir, ["https://news.example/feed.xml"], topics=topics)
    with SlackServer(auto_channels=False) as slack:
        for name in ("ai-policy", "executive-orders"):
            slack.add_channel(name)
        slack.add_channel("secret", is_private=True)
        db = str(tmp_path / "bot.db")
        complete = by_name(run_checks(config_dir, env(slack), db_path=db))["Slack feedback"]
        slack.scopes = tuple(s for s in slack.scopes or () if s != "groups:history")
        lacking = by_name(run_checks(config_dir, env(slack), db_path=db))["Slack feedback"]
        (config_dir / "aggregator.toml").write_text("[feedback]\nenabled = false\n")
        off = by_name(run_checks(config_dir, env(slack), db_path=db))
    assert complete.ok and complete.detail == "reactions on alerts are readable in 3 channel(s)"
    assert not lacking.ok
    assert "#secret (private, and the token lacks groups:history)" in lacking.detail
    assert "add groups:history (deploy/slack-app-manifest.yml) and reinstall" in lacking.fix
    assert "Slack feedback" not in off  # not reading reactions: nothing to check


# -- database -------------------------------------------------------------------------------------


def test_a_database_not_created_yet_passes_when_its_directory_is_writable(tmp_path: Path) -> None:
    check, rows = check_database(str(tmp_path / "new.db"))
    assert check.ok
    assert "creates it on its first start" in check.detail
    assert rows is None
    assert not (tmp_path / "new.db").exists()  # the doctor created nothing

    check, _ = check_database(str(tmp_path / "no" / "such" / "dir" / "x.db"))
    assert not check.ok
    assert "StateDirectory=" in check.fix


def test_a_current_database_passes_and_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "odd #1?.db"  # characters that mean something in a file: URI
    Store.open(path).close()
    before = path.stat().st_mtime_ns
    check, rows = check_database(str(path))
    assert check.ok, check
    assert rows == []
    assert path.stat().st_mtime_ns == before


def test_a_database_not_in_wal_mode_fails_and_is_not_switched(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    check, _ = check_database(str(path))
    assert not check.ok
    assert "delete journal mode, not WAL" in check.detail
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_an_older_or_newer_schema_fails_with_the_right_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.admin.doctor as doctor

    path = tmp_path / "bot.db"
    Store.open(path).close()
    current = max(MIGRATIONS)
    known = {**MIGRATIONS, current + 1: ""}  # this bot knows one more
    monkeypatch.setattr(doctor, "MIGRATIONS", known)
    check, _ = check_database(str(path))
    assert not check.ok
    assert f"schema version {current}; this version of the bot uses {current + 1}" in check.detail
    assert "restart the service" in check.fix
    monkeypatch.undo()

    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, '2030-01-01T00:00:00+00:00')", [current + 1]
        )
    check, _ = check_database(str(path))
    assert not check.ok
    assert "newer than this bot knows" in check.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_a_read_only_database_fails(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    Store.open(path).close()
    path.chmod(0o444)
    check, _ = check_database(str(path))
    assert not check.ok
    assert "not writable" in check.detail


def test_a_file_that_is_not_a_database_fails(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    path.write_bytes(b"this is not SQLite" * 100)
    check, _ = check_database(str(path))
    assert not check.ok
    assert "cannot be opened" in check.detail


# -- feeds ----------------------------------------------------------------------------------------


def test_feeds_counts_reachable_failing_gone_and_not_yet_fetched(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    urls = [f"https://feeds.example/{name}.xml" for name in ("ok", "down", "gone", "new", "moved")]
    feeds = [FeedConfig(url=u, name=u) for u in urls]
    store = Store.open(path)
    store.feeds.sync(feeds, NOW)
    store.feeds.record(urls[0], FeedUpdate(FeedStatus.ACTIVE, NOW, 0, None, last_fetch_at=NOW))
    error = "fetch failed: 'https://feeds.example/down.xml': HTTP 503"
    down = FeedUpdate(FeedStatus.FAILING, NOW, 2, NOW, last_fetch_at=NOW, error=error)
    store.feeds.record(urls[1], down)
    gone = FeedUpdate(FeedStatus.GONE, None, 1, NOW, last_fetch_at=NOW, error="HTTP 410 Gone")
    store.feeds.record(urls[2], gone)
    store.feeds.rename(urls[4], "https://feeds.example/new-home.xml")  # a permanent redirect
    moved = FeedUpdate(FeedStatus.ACTIVE, NOW, 0, None, last_fetch_at=NOW)
    store.feeds.record("https://feeds.example/new-home.xml", moved)
    store.close()

    db_check, rows = check_database(str(path))
    assert db_check.ok
    check = check_feeds(feeds, rows)
    assert not check.ok
    assert check.detail.startswith(
        "2 of 5 feeds were reachable on their last fetch; 1 not fetched yet; failing: "
    )
    assert "down.xml (fetch failed: 'https://feeds.example/down.xml': HTTP 503)" in check.detail
    assert "gone.xml (410 Gone: no longer polled)" in check.detail
    assert "aggregator feeds status" in check.fix

    healthy = check_feeds(feeds[:1], rows)
    assert healthy.ok
    assert healthy.detail == "1 of 1 feeds were reachable on their last fetch"
    assert not check_feeds([], rows).ok
