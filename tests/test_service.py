"""The service as systemd runs it: a real ``python -m aggregator run`` subprocess.

The test binds the ``$NOTIFY_SOCKET`` datagram socket itself and reads what the service tells the
service manager; feeds come from :mod:`tests.feedserver` and Slack is :mod:`tests.slackserver`.
``run --tick 0.2`` makes the scheduler look for work five times a second, so a test waits for
events (a datagram, a log line, a request) in bounded polling loops rather than sleeping.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from tests import waiting
from tests.configs import link_models
from tests.feedserver import FeedServer
from tests.slackserver import TOKEN, Fault, SlackServer

REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0  # the longest any single wait may take before the test fails
SEED = "Trump kills AI security order after tech pressure"
SEED_TEXT = (
    "President Trump withdrew an executive order on artificial intelligence and cybersecurity "
    "after lobbying by technology executives."
)


def rss(*items: tuple[str, str, str], title: str = "Feed") -> bytes:
    """An RSS body from (guid, title, description); every item is one hour old."""
    published = format_datetime(datetime.now(UTC) - timedelta(hours=1))
    parts = [f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>']
    for guid, item_title, description in items:
        parts.append(
            f"<item><guid isPermaLink='false'>{guid}</guid><title>{item_title}</title>"
            f"<link>https://news.example/{guid}</link><pubDate>{published}</pubDate>"
            f"<description><![CDATA[{description}]]></description></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode()


SEED_ITEM = ("seed-1", SEED, SEED_TEXT)
DULL_ITEM = ("dull-1", "Local bakery wins county fair pie contest", "A bakery took first prize.")


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    waiting.wait_until(condition, what, timeout)


class NotifyListener:
    """The service manager's side of ``$NOTIFY_SOCKET``: collects every assignment sent."""

    def __init__(self, directory: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = directory / "notify.sock"
        if len(str(path)) < 100:
            self.sock.bind(str(path))
            self.address = str(path)
        else:  # sun_path holds 108 bytes; fall back to the abstract namespace
            name = f"aggregator-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        self.sock.settimeout(0.1)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.lines.extend(data.decode().splitlines())
            waiting.changed()

    def pings(self) -> int:
        with self._lock:
            return self.lines.count("WATCHDOG=1")

    def states(self) -> list[str]:
        """READY=1, WATCHDOG=1, STOPPING=1 ... in arrival order (STATUS= lines left out)."""
        with self._lock:
            return [line for line in self.lines if not line.startswith(("STATUS=", "MONOTONIC"))]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Service:
    """One ``python -m aggregator run`` process; stderr and stdout are collected line by line."""

    def __init__(
        self,
        config_dir: Path,
        db: Path,
        notify: NotifyListener | None,
        *,
        env: dict[str, str] | None = None,
        run_args: tuple[str, ...] = (),
    ) -> None:
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "AGGREGATOR_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))
            and k != "CREDENTIALS_DIRECTORY"
        }
        environ["PYTHONPATH"] = str(REPO)
        if notify is not None:
            environ["NOTIFY_SOCKET"] = notify.address
            environ["WATCHDOG_USEC"] = "2000000"  # 2 s: the watch job pings every second
        environ.update(env or {})
        command = [sys.executable, "-m", "aggregator", "--config", str(config_dir)]
        command += ["--db", str(db), "--log-format", "text", "run", "--tick", "0.2", *run_args]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            waiting.changed()
        waiting.changed()  # the stream ended: the service exited

    def log_index(self, text: str, after: int = -1) -> int:
        """The index of the first stderr line after ``after`` that contains ``text``, or -1."""
        for i, line in enumerate(list(self.err)):
            if i > after and text in line:
                return i
        return -1

    def wait_log(self, text: str, after: int = -1, timeout: float = WAIT) -> int:
        def found() -> bool:
            if self.proc.poll() is not None and self.log_index(text, after) < 0:
                self._drain()
                raise AssertionError(f"service exited before logging {text!r}:\n{self.text()}")
            return self.log_index(text, after) >= 0

        try:
            wait_until(found, f"log line {text!r}", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- stderr ---\n{self.text()}") from None
        return self.log_index(text, after)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM, then the exit code (the test fails if it takes longer than ``timeout``)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = WAIT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"service did not exit in {timeout:g} s:\n{self.text()}") from None
        self._drain()
        return code

    def _drain(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)

    def text(self) -> str:
        return "\n".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain()


class World:
    """A config directory, a database, a feed server, a Slack server and the notify socket."""

    def __init__(self, tmp: Path, feeds: FeedServer, slack: SlackServer) -> None:
        self.tmp = tmp
        self.feeds = feeds
        self.slack = slack
        self.config = tmp / "config"
        self.config.mkdir()
        self.db = tmp / "bot.db"
        self.notify = NotifyListener(tmp)
        self.services: list[Service] = []

    def write_config(
        self,
        feed_urls: list[str],
        *,
        topics: str | None = None,
        settings: str = "",
        polling: str = "",
    ) -> None:
        shipped = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
        (self.config / "topics.toml").write_text(topics or shipped, encoding="utf-8")
        link_models(self.config)
        (self.config / "aggregator.toml").write_text(
            f'[polling]\ninterval = "10s"\njitter = 0\n{polling}\n'
            '[fetch]\ntimeout = "2s"\ndeadline = "6s"\nparse_workers = 1\nallow_private = true\n'
            '[slack]\nper_channel_interval = "0.05s"\n' + settings,
            encoding="utf-8",
        )
        self.write_feeds(feed_urls)

    def write_feeds(self, feed_urls: list[str]) -> None:
        lines = [f'[[feeds]]\nurl = "{u}"\nname = "Outlet {i}"\n' for i, u in enumerate(feed_urls)]
        (self.config / "feeds.toml").write_text("\n".join(lines), encoding="utf-8")

    def start(
        self,
        *,
        token: str | None = TOKEN,
        run_args: tuple[str, ...] = (),
        notify: bool = True,
        env: dict[str, str] | None = None,
    ) -> Service:
        env = {"SLACK_API_URL": self.slack.url, **(env or {})}
        if token:
            env["SLACK_BOT_TOKEN"] = token
        service = Service(
            self.config, self.db, self.notify if notify else None, env=env, run_args=run_args
        )
        self.services.append(service)
        return service

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as conn:
            return list(conn.execute(sql))

    def alert_states(self) -> dict[str, int]:
        return dict(self.query("SELECT state, count(*) FROM alerts GROUP BY state"))

    def close(self) -> None:
        for service in self.services:
            service.kill()
        self.notify.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FeedServer() as feeds, SlackServer() as slack:
        w = World(tmp_path, feeds, slack)
        try:
            yield w
        finally:
            w.close()


def replace_keeping_mtime(path: Path, text: str) -> None:
    """Change a file so that only SIGHUP can notice: same mtime, swapped in atomically."""
    stat = path.stat()
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(temporary, path)


# -- readiness, watchdog, stopping ----------------------------------------------------------------


def test_ready_then_watchdog_then_stopping_and_exit_0(world: World) -> None:
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    service = world.start()
    service.wait_log("ready")
    wait_until(lambda: "WATCHDOG=1" in world.notify.states(), "a watchdog ping")
    service.wait_log("cycle: 1 feeds: 1 fetched")
    assert service.stop() == 0

    states = world.notify.states()
    assert states.index("READY=1") < states.index("WATCHDOG=1") < states.index("STOPPING=1")
    assert "READY=1" not in states[states.index("STOPPING=1") :]
    assert "stopped" in service.text()
    # READY=1 only once the database is migrated: the tables exist when the manager hears of it.
    assert world.query("SELECT max(version) FROM schema_migrations")[0][0] >= 1
    assert world.query("PRAGMA journal_mode")[0][0] == "wal"


def test_the_watchdog_is_fed_only_while_cycles_complete(world: World) -> None:
    entered, release = threading.Event(), threading.Event()

    def hung_post(method: str, params: dict[str, Any]) -> Fault | None:
        if method == "chat.postMessage" and not entered.is_set():
            entered.set()
            release.wait(WAIT)  # the cycle hangs in a send
        return None

    world.slack.chaos = hung_post
    world.write_config(
        [world.feeds.serve("/a.xml", rss(SEED_ITEM))], polling='cycle_timeout = "1s"'
    )
    service = world.start()
    assert entered.wait(WAIT), "the cycle never hung in a send"
    wait_until(lambda: world.notify.pings() > 0, "the first pings")  # start-up counts as success
    # With no cycle completing for cycle_timeout + 3 ticks (1.6 s), the pings stop: under systemd
    # WatchdogSec= would now run out and the process would be restarted.
    stalled, deadline = world.notify.pings(), time.monotonic() + WAIT
    while waiting.wait_for(lambda seen=stalled: world.notify.pings() > seen, 2.0):
        stalled = world.notify.pings()  # still pinging: wait for a 2 s silence
        assert time.monotonic() < deadline, "the pings never stopped"
    release.set()
    wait_until(lambda: world.notify.pings() > stalled, "the pings to resume after the cycle")
    # The hung cycle ran past its deadline, so the second alert goes out with the next cycle.
    wait_until(lambda: len(world.slack.posts()) == 2, "the second alert")
    assert service.stop() == 0


def test_sigterm_taken_by_a_worker_thread_still_stops_the_service(world: World) -> None:
    # The kernel may hand a process-directed signal to any thread. One taken by a fetch or
    # scheduler thread never interrupted the main thread's wait, so SIGTERM went unheard for good;
    # the wake-up fd carries it to the main thread whichever thread took it.
    # kill() on a thread's id makes that thread the preferred recipient, so this is deterministic.
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        pytest.skip("needs /proc to find the service's threads")
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    service = world.start()
    service.wait_log("cycle: 1 feeds: 1 fetched")
    pid = service.proc.pid
    workers = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if int(t.name) != pid]
    assert workers, "the service runs scheduler threads"
    os.kill(workers[0], signal.SIGTERM)
    assert service.wait() == 0
    assert "STOPPING=1" in world.notify.states()


def test_sigterm_the_moment_ready_is_sent_still_stops(world: World) -> None:
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    service = world.start()
    wait_until(lambda: "READY=1" in world.notify.states(), "READY=1")
    assert service.stop() == 0
    assert "STOPPING=1" in world.notify.states()


def test_invalid_config_at_start_exits_78_without_ready(world: World) -> None:
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    (world.config / "topics.toml").write_text(
        '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI AND ("\n', encoding="utf-8"
    )
    service = world.start()
    assert service.wait() == 78
    assert "READY=1" not in world.notify.states()
    assert "invalid config, not starting" in service.text()
    assert "topics.toml" in service.text()


def test_each_config_problem_is_a_readable_log_line_of_its_own(world: World) -> None:
    # Under systemd each line is one journal entry. Joined into one, the problems showed up as
    # a single line full of literal \n, with the rule's caret nowhere near its column.
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    (world.config / "topics.toml").write_text(
        '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI AND ("\n'
        '[topics.other]\nchannel = "#other"\nquery = "x"\nbogus = 1\n',
        encoding="utf-8",
    )
    (world.config / "feeds.toml").write_text(
        f'[[feeds]]\nurl = "{world.feeds.url("/a.xml")}"\n', encoding="utf-8"
    )
    service = world.start()
    assert service.wait() == 78

    logged = (re.match(r"\S+ ERROR [\w.]+: (.*)$", line) for line in service.err)
    messages = [found.group(1) for found in logged if found]
    assert not any("\\n" in m for m in messages), messages
    head = messages.index("invalid config, not starting (2 problems):")
    query, pointed, caret, unknown = messages[head + 1 : head + 5]
    assert query.startswith("  ") and query.endswith(
        "topics.toml:3: topics.ai-policy.query: the query ends too early: "
        "expected a word after ( at column 9:"
    )
    assert pointed == "    AI AND ("
    assert caret.index("^") == pointed.index("(") + 1  # under column 9, just past the end
    assert unknown.startswith("  ") and "topics.toml:7: topics.other.bogus: unknown key" in unknown


# -- SIGTERM: nothing lost ------------------------------------------------------------------------


def test_sigterm_during_a_fetch_exits_0_and_the_alerts_wait_for_the_next_start(
    world: World,
) -> None:
    fast = world.feeds.serve("/fast.xml", rss(SEED_ITEM))
    # About 1 s of drip: the cycle is still fetching when SIGTERM arrives.
    slow = world.feeds.drip("/slow.xml", rss(DULL_ITEM), interval=0.002)
    world.write_config([fast, slow])
    service = world.start()
    wait_until(lambda: world.feeds.count("/slow.xml") >= 1, "the slow fetch to start")
    assert service.stop() == 0

    # The cycle finished its fetch and committed the entries and their alerts, then sent nothing:
    # a stop means no new send starts.
    assert "stopping: finishing the cycle in flight" in service.text()
    assert "maximum number of running instances" not in service.text()  # a long cycle is no news
    assert world.query("SELECT count(*) FROM entries")[0][0] == 2
    assert world.alert_states() == {"pending": 2}
    assert world.slack.posts() == []

    again = world.start()
    wait_until(lambda: len(world.slack.posts()) == 2, "the pending alerts to be delivered")
    assert again.stop() == 0
    assert sorted(world.slack.alert_counts().values()) == [1, 1]
    assert world.alert_states() == {"sent": 2}
    assert {p.channel for p in world.slack.posts()} == {"#ai-policy", "#executive-orders"}


def test_sigterm_during_a_send_finishes_that_send_and_leaves_the_rest_queued(
    world: World,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_first_post(method: str, params: dict[str, Any]) -> Fault | None:
        if method == "chat.postMessage" and not entered.is_set():
            entered.set()
            release.wait(WAIT)  # Slack is slow to answer this one
        return None

    world.slack.chaos = slow_first_post
    world.write_config([world.feeds.serve("/a.xml", rss(SEED_ITEM))])
    service = world.start()
    assert entered.wait(WAIT), "the first post never reached Slack"
    service.signal(signal.SIGTERM)
    service.wait_log("stopping: finishing the cycle in flight")
    release.set()
    assert service.wait() == 0

    assert len(world.slack.posts()) == 1
    assert world.alert_states() == {"sent": 1, "pending": 1}

    again = world.start()
    wait_until(lambda: len(world.slack.posts()) == 2, "the queued alert to be delivered")
    assert again.stop() == 0
    assert sorted(world.slack.alert_counts().values()) == [1, 1]
    assert world.alert_states() == {"sent": 2}


def test_a_cycle_longer_than_the_stop_grace_is_abandoned_with_exit_0(world: World) -> None:
    slow = world.feeds.drip("/slow.xml", rss(SEED_ITEM), interval=0.01)  # 5 s, under the deadline
    world.write_config([slow], settings="")
    service = world.start(run_args=("--stop-grace", "0.3"))
    wait_until(lambda: world.feeds.count("/slow.xml") >= 1, "the slow fetch to start")
    assert service.stop() == 0

    assert "abandoning it" in service.text()
    # The abandoned cycle committed nothing, so the feed is still due and the database is sound.
    assert world.query("PRAGMA integrity_check")[0][0] == "ok"
    assert world.query("SELECT count(*) FROM entries")[0][0] == 0
    assert world.query("SELECT count(*) FROM feeds WHERE last_fetch_at IS NULL")[0][0] == 1


# -- reload ---------------------------------------------------------------------------------------


def test_reload_refuses_a_broken_config_keeps_the_old_rules_and_logs_each_change(
    world: World,
) -> None:
    url = world.feeds.serve("/a.xml", rss(DULL_ITEM))
    world.write_config([url])
    service = world.start()
    first = service.wait_log("cycle: 1 feeds: 1 fetched")

    # The next poll (10 s on) will carry a story; before it, a broken topics.toml and SIGHUP.
    world.feeds.serve("/a.xml", rss(SEED_ITEM, DULL_ITEM))
    topics = world.config / "topics.toml"
    shipped = topics.read_text(encoding="utf-8")
    replace_keeping_mtime(
        topics, '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI AND ("\n'
    )
    service.signal(signal.SIGHUP)
    hup = service.wait_log("reloading config (SIGHUP)", after=first)
    refused = service.wait_log("config reload refused, the previous config stays live", after=hup)
    assert service.err[refused].endswith("the previous config stays live (1 problem):")
    problem = service.wait_log("topics.toml:3: topics.ai-policy.query:", after=refused)
    assert problem == refused + 1

    # The old rules stay live: the next poll matches the story for both shipped topics.
    wait_until(lambda: len(world.slack.posts()) == 2, "the story matched by the old rules", 20)
    matched = service.wait_log("1 new entries, 1 matched", after=refused)
    assert {p.channel for p in world.slack.posts()} == {"#ai-policy", "#executive-orders"}

    # A valid change by SIGHUP alone (the file keeps its mtime): one line says what changed.
    replace_keeping_mtime(topics, shipped.replace('"#executive-orders"', '"#eo-desk"'))
    service.signal(signal.SIGHUP)
    hup = service.wait_log("reloading config (SIGHUP)", after=matched)
    line = service.err[service.wait_log("config reloaded:", after=hup)]
    assert line.endswith("config reloaded: topics changed: executive-orders")

    # Saving a file is enough too: a new feed is picked up and fetched.
    other = world.feeds.serve("/b.xml", rss(DULL_ITEM))
    world.write_feeds([url, other])
    later = time.time() + 5  # a clearly newer mtime, whatever the filesystem's granularity
    os.utime(world.config / "feeds.toml", (later, later))
    changed = service.wait_log("reloading config (a config file changed)", after=hup)
    line = service.err[service.wait_log("config reloaded:", after=changed)]
    assert line.endswith(f"config reloaded: feeds added: {other}")
    wait_until(lambda: world.feeds.count("/b.xml") >= 1, "the new feed to be fetched")
    assert service.stop() == 0
    assert "RELOADING=1" in world.notify.states()


# Edits that parse as TOML but cannot work: (file, text, what the refusal names).
BAD_EDITS = [
    ("topics.toml", '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = \'\'\n',
     "topics.toml:3: topics.ai-policy.query: is empty"),
    ("feeds.toml", '[[feeds]]\nurl = "https://a.example/feed"\ninterval = inf\n',
     "feeds.toml:3: feeds[0].interval: a duration must be a finite number"),
    ("topics.toml", "[topics.ai-policy]\nquery = '" + "(" * 200 + "AI" + ")" * 200 + "'\n",
     "topics.toml:2: topics.ai-policy.query: the query nests more than 32 levels deep"),
    ("topics.toml", "[topics.ai-policy]\nquery = '" + "NOT " * 1000 + "AI'\n",
     "topics.toml:2: topics.ai-policy.query: the query nests more than 32 levels deep"),
    ("topics.toml", "[topics.ai-policy]\nquery = '" + " NEAR/5 ".join(["AI"] * 330) + "'\n",
     "topics.toml:2: topics.ai-policy.query: the query nests more than 32 levels deep"),
    ("topics.toml", "[topics.ai-policy]\nquery = '" + " OR ".join(["AI"] * 50_000) + "'\n",
     "topics.toml:2: topics.ai-policy.query: the query is longer than 100,000 characters"),
]  # fmt: skip


def test_reload_refuses_edits_that_cannot_work_without_a_traceback(world: World) -> None:
    url = world.feeds.serve("/a.xml", rss(DULL_ITEM))
    world.write_config([url])
    service = world.start()
    after = service.wait_log("cycle: 1 feeds: 1 fetched")
    for name, text, reason in BAD_EDITS:
        path = world.config / name
        good = path.read_text(encoding="utf-8")
        replace_keeping_mtime(path, text)
        service.signal(signal.SIGHUP)
        hup = service.wait_log("reloading config (SIGHUP)", after=after)
        refused = service.wait_log("stays live (1 problem):", after=hup)
        after = service.wait_log(reason, after=refused)  # the problem, on a line of its own
        assert after == refused + 1
        replace_keeping_mtime(path, good)
    world.feeds.serve("/a.xml", rss(SEED_ITEM))  # the old config stays live and keeps working
    wait_until(lambda: len(world.slack.posts()) == 2, "the story matched by the old rules")
    assert service.stop() == 0
    assert "cycle failed" not in service.text()
    assert "Traceback" not in service.text()


# -- secrets --------------------------------------------------------------------------------------


def test_the_token_never_appears_in_output_even_when_slack_rejects_it(world: World) -> None:
    secret = "xoxb-1111-2222-NeverLogThisValue"
    world.write_config([world.feeds.serve("/a.xml", rss(SEED_ITEM))])
    service = world.start(token=secret, env={"AGGREGATOR_LOG_LEVEL": "debug"})
    wait_until(
        lambda: sum(c.outcome == "invalid_auth" for c in world.slack.calls) >= 2,
        "Slack to reject both posts",
    )
    service.wait_log("cycle: 1 feeds")
    assert service.stop() == 0

    output = "\n".join(service.err + service.out)
    assert "dead in #ai-policy: invalid_auth: Slack rejected the token" in output
    assert "NeverLogThisValue" not in output
    assert secret not in output
    assert world.alert_states() == {"dead": 2}
    assert "NeverLogThisValue" not in str(world.query("SELECT last_error FROM alerts"))


# -- upgrades -------------------------------------------------------------------------------------


def test_the_service_starts_on_a_database_from_an_earlier_version_and_delivers_its_backlog(
    world: World,
) -> None:
    fixture = Path(__file__).parent / "fixtures" / "schema_v1.sql"
    conn = sqlite3.connect(world.db)
    conn.executescript(fixture.read_text(encoding="utf-8"))
    conn.close()
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    service = world.start()
    wait_until(lambda: len(world.slack.posts()) == 1, "the old failed alert to be delivered")
    assert service.stop() == 0

    assert [p.channel for p in world.slack.posts()] == ["#executive-orders"]
    assert world.slack.alert_counts() == {2: 1}  # the alert sent before the upgrade is not resent
    assert world.alert_states() == {"sent": 2}
    assert world.query("SELECT count(*) FROM entries")[0][0] == 4  # 3 from before, 1 new


def test_the_reload_summary_names_what_changed(tmp_path: Path) -> None:
    from aggregator.config.load import load_config
    from aggregator.service.runtime import describe_reload

    def config(name: str, feeds: list[str], settings: str, topics: str) -> Any:
        directory = tmp_path / name
        directory.mkdir()
        shipped = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
        (directory / "topics.toml").write_text(shipped.replace("#ai-policy", topics))
        link_models(directory)
        (directory / "aggregator.toml").write_text(settings)
        (directory / "feeds.toml").write_text(
            "\n".join(f'[[feeds]]\nurl = "{u}"\nname = "n"\n' for u in feeds)
        )
        return load_config(directory, {})

    a, b, c = (f"https://feeds.example/{x}.xml" for x in "abc")
    old = config("old", [a, b], "", "#ai-policy")
    new = config("new", [b, c], '[slack]\nper_channel_interval = "2s"\n', "#ai-desk")
    assert describe_reload(old, new).text == (
        f"feeds added: {c}; feeds removed: {a}; topics changed: ai-policy; "
        "settings changed: per_channel_interval"
    )
    assert describe_reload(old, old).text == "no changes"
    assert not describe_reload(old, old).changed
