"""The Slack token never leaves the process: not in errors, not in the database, not in output.

A proxy's HTML error page, or an API error field, may quote the request's Authorization header.
The local Slack stand-in does exactly that (``Fault.echo_auth_page``, ``Fault.echo_auth_error``);
every path such an answer takes is checked: the sink's errors, the rows the outbox stores (an
alert's ``last_error``, a channel's pause reason), and what ``poll``, ``outbox``, ``slack test``
and ``doctor`` print.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.errors import DeliveryError
from aggregator.notify.render import Message
from aggregator.notify.slack import SlackSink
from tests.configs import link_models
from tests.feedserver import FeedServer
from tests.slackserver import Fault, SlackServer

ROOT = Path(__file__).resolve().parents[1]
SLACK_SHAPED = "xoxb-4242-1717-TopSecretTokenValue"
PLAIN = "corp-gateway-9f8e7d6c5b4a3210"  # a token that does not look like Slack's
MARK = "[REDACTED]"


def leaks(text: str, token: str) -> bool:
    return token in text or token.split("-")[-1] in text


@pytest.mark.parametrize("token", [SLACK_SHAPED, PLAIN])
@pytest.mark.parametrize(
    "fault",
    [Fault.echo_auth_page(502), Fault.echo_auth_page(400), Fault.echo_auth_error()],
    ids=["html-502", "html-400", "error-field"],
)
def test_the_sinks_errors_carry_no_token(token: str, fault: Fault) -> None:
    with SlackServer(token=token) as slack:
        slack.script("chat.postMessage", fault)
        slack.script("auth.test", fault)
        sink = SlackSink(token, slack.url)
        for call in (lambda: sink.post("#ai-policy", Message(text="hi")), sink.identity):
            with pytest.raises(DeliveryError) as caught:
                call()
            error = caught.value
            assert not leaks(error.reason, token) and not leaks(str(error), token), error.reason
            assert MARK in error.reason  # the echo reached the reason, masked


def test_a_bearer_credential_is_masked_even_when_nobody_registered_it() -> None:
    from aggregator.redact import Redactor

    redact = Redactor()
    assert redact("Authorization: Bearer abc.DEF-123_x; Host: x") == (
        f"Authorization: Bearer {MARK}; Host: x"
    )
    assert redact("error: xoxp-1-2-abc and xapp-1-A-b") == f"error: xoxp-{MARK} and xapp-{MARK}"


# -- end to end -----------------------------------------------------------------------------------

SEED = "Trump kills AI security order after tech pressure"


def rss() -> bytes:
    published = format_datetime(datetime.now(UTC) - timedelta(hours=1))
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Feed</title>'
        f"<item><guid>seed-1</guid><title>{SEED}</title><link>https://news.example/1</link>"
        f"<pubDate>{published}</pubDate><description>An executive order on AI.</description>"
        "</item></channel></rss>"
    ).encode()


class Bot:
    def __init__(self, tmp: Path, feeds: FeedServer, slack: SlackServer, token: str) -> None:
        self.config = tmp / "config"
        self.config.mkdir()
        self.db = tmp / "bot.db"
        self.token = token
        self.slack = slack
        shutil.copy(ROOT / "config" / "topics.toml", self.config / "topics.toml")
        link_models(self.config)
        (self.config / "aggregator.toml").write_text(
            '[fetch]\nallow_private = true\nparse_workers = 1\n[slack]\nops_channel = "#ops"\n'
        )
        url = feeds.serve("/a.xml", rss())
        (self.config / "feeds.toml").write_text(f'[[feeds]]\nurl = "{url}"\nname = "Outlet"\n')

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AGGREGATOR_"))}
        env |= {"SLACK_BOT_TOKEN": self.token, "SLACK_API_URL": self.slack.url}
        command = [sys.executable, "-m", "aggregator", "--config", str(self.config)]
        command += ["--db", str(self.db), "--log-format", "text", *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, check=False
        )

    def stored(self) -> list[Any]:
        with sqlite3.connect(self.db) as conn:
            rows = list(conn.execute("SELECT last_error FROM alerts"))
            rows += list(conn.execute("SELECT pause_reason FROM channel_state"))
        return [value for (value,) in rows if value]


@pytest.fixture(params=[SLACK_SHAPED, PLAIN])
def bot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bot]:
    token = request.param
    with FeedServer() as feeds, SlackServer(token=token) as slack:
        yield Bot(tmp_path, feeds, slack, token)


def test_no_token_is_stored_or_printed_when_slack_echoes_it(bot: Bot) -> None:
    def echo(method: str, params: dict[str, Any]) -> Fault | None:
        if method == "chat.postMessage":
            channel = str(params.get("channel"))
            return Fault.echo_auth_page(502) if "ai" in channel else Fault.echo_auth_error()
        return Fault.echo_auth_page(502) if method == "auth.test" else None

    bot.slack.chaos = echo
    polled = bot.run("poll", "--once")
    assert polled.returncode == 0, polled.stderr
    stored = bot.stored()
    assert stored and any(MARK in value for value in stored), stored  # the echoes were stored
    assert not any(leaks(value, bot.token) for value in stored), stored

    # An older version may have stored the token already: output still never shows it.
    with sqlite3.connect(bot.db) as conn:
        conn.execute("UPDATE alerts SET last_error = ?", (f"old: Bearer {bot.token}",))
    outputs = [polled]
    for command in (["outbox"], ["slack", "test"], ["doctor"]):
        done = bot.run(*command)
        assert done.returncode in (0, 1), done.stderr
        outputs.append(done)
    for done in outputs:
        assert not leaks(done.stdout + done.stderr, bot.token), done.args
    assert MARK in outputs[1].stdout  # outbox: the stored reasons, masked
    assert MARK in outputs[2].stdout  # slack test: Slack's answers, masked
    assert MARK in outputs[3].stdout  # doctor: auth.test's answer, masked
