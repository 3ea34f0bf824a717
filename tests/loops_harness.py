"""``aggregator run`` and ``aggregator poll --once`` on one database at once; what reached Slack.

Two delivery loops share one SQLite file: the service (``run``, a short tick) and a loop that
starts ``poll --once`` again as soon as the last one ended. Both poll the feeds of a
:class:`~tests.newsroom.Newsroom`, whose stories become alerts, thread replies and edits, and both
deliver to one :class:`~tests.slackserver.SlackServer`, each under its own client name so the
server can tell their calls apart.

With ``kills`` the service is SIGKILLed again and again (from inside the Slack server while one
of its own posts or edits is in flight, before or after Slack accepted it, and at random moments)
and restarted, while the server answers at random with the faults of
:mod:`tests.delivery_harness`. At the end the polls stop, one clean service drains the outbox, and
the server's records are counted per kind of row:

- alerts and replies: a row is *lost* when no accepted post names its id, *duplicated* once for
  each further post that names it (a reply may share one post with other replies of its story);
- edits: an edit is idempotent (doing it twice shows the same message), so a second
  ``chat.update`` after a lost response is only counted (``repeated_updates``). An edit row is
  *lost* when it never reached ``sent``, or when the message it edits does not show, at the end,
  the story as the database holds it (its entry's current title and its number of outlets: a stale
  edit that landed last loses the newer one). An edit is *duplicated* when a ``chat.update``
  changed a message that is not a top-level alert (a reply, say), or changed the message of
  another story than the one its text is about.

Story-level counts do not trust the rows: a story alerted twice in one channel (it should have
joined its first alert's thread), a story never alerted, and an outlet listed twice, or never, in
a story's thread.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.models import AlertKind, AlertState
from aggregator.store import Store
from tests import waiting
from tests.delivery_harness import UNSENT, Chaos
from tests.feedserver import FeedServer
from tests.newsroom import CHANNELS, SOURCES, TOPICS, Newsroom
from tests.slackserver import TOKEN, Received, SlackServer

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"https://(alpha|beta|gamma)\.example/story/(\d+)")  # an item's own link
TROUBLE = ("database is locked", "cycle failed", "Traceback")  # never in either process's output


@dataclass
class KindCount:
    rows: int = 0
    lost: int = 0
    duplicated: int = 0


@dataclass
class LoopsResult:
    alerts: KindCount
    replies: KindCount
    edits: KindCount
    repeated_updates: int  # the same edit applied again after a lost response: harmless
    stories: int  # stories published
    stories_alerted_twice: int  # (story, channel) pairs with more than one top-level post
    stories_missed: int  # (story, channel) pairs with no top-level post
    outlets_repeated: int  # an outlet listed more than once in a story's thread
    outlets_missing: int  # a further outlet never listed in the story's thread
    replies_elsewhere: int  # an outlet's item listed in another story's thread
    sent_by: dict[str, int]  # accepted posts and edits per client (run, poll)
    not_sent: int
    notes: list[str]
    # what the run did
    polls: int = 0
    polls_failed: list[str] = field(default_factory=list)  # the output of each failed poll
    trouble: list[str] = field(default_factory=list)  # lines of TROUBLE in any output
    service_starts: int = 0
    kills: int = 0
    kills_in_flight: int = 0
    kills_at_random: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.alerts.lost + self.replies.lost + self.edits.lost

    @property
    def duplicated(self) -> int:
        return self.alerts.duplicated + self.replies.duplicated + self.edits.duplicated

    @property
    def story_errors(self) -> int:
        return (self.stories_alerted_twice + self.stories_missed + self.outlets_repeated
                + self.outlets_missing + self.replies_elsewhere)  # fmt: skip


def write_config(directory: Path, feeds: dict[str, str], *, interval: float) -> Path:
    """The outlets' feeds, both topics, and delivery settings short enough for a test."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "aggregator.toml").write_text(
        '[polling]\ninterval = "10s"\njitter = 0\n'
        '[fetch]\ntimeout = "2s"\ndeadline = "5s"\nallow_private = true\nparse_workers = 1\n'
        f"[slack]\nper_channel_interval = {interval}\n"
        '[stories]\nreply_batch = "1s"\n',
        encoding="utf-8",
    )
    lines = [f'[[feeds]]\nurl = "{url}"\nname = "{SOURCES[o]}"\n' for o, url in feeds.items()]
    (directory / "feeds.toml").write_text("\n".join(lines) or "feeds = []\n", encoding="utf-8")
    (directory / "topics.toml").write_text(TOPICS, encoding="utf-8")
    return directory


def environment(slack: SlackServer, client: str) -> dict[str, str]:
    """A process's environment: ours without service settings, Slack as ``client`` of ``slack``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "AGGREGATOR_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))
    }
    return base | {
        "PYTHONPATH": str(ROOT),
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_API_URL": slack.client_url(client),
    }


def aggregator(config: Path, db: Path, *args: str) -> list[str]:
    """The command line of ``aggregator ARGS`` on this config and database."""
    return [sys.executable, "-m", "aggregator", "--config", str(config), "--db", str(db),
            "--log-format", "text", *args]  # fmt: skip


class Logged:
    """A process whose output lines are kept (and appended to ``log``) as they come."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, args=(log,), daemon=True)
        self._reader.start()

    def _read(self, path: Path) -> None:
        """Each line is a moment to look again (the service logs each cycle after its
        deliveries are committed)."""
        assert self.proc.stdout is not None
        with open(path, "a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                waiting.changed()
        waiting.changed()

    def find(self, text: str, after: int = -1) -> int:
        """The index of the first line after ``after`` that contains ``text``, or -1."""
        for i, line in enumerate(list(self.lines)):
            if i > after and text in line:
                return i
        return -1

    def wait_line(self, text: str, after: int = -1, timeout: float = 30.0) -> int:
        def seen() -> bool:
            return self.find(text, after) >= 0 or self.proc.poll() is not None

        waiting.wait_until(seen, f"{text!r} in the output", timeout)
        found = self.find(text, after)
        assert found >= 0, f"exited before {text!r}:\n" + "\n".join(self.lines)
        return found

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)


class _Processes:
    """The service (restartable) and the poll loop, with their output kept in log files."""

    def __init__(self, workdir: Path, config: Path, db: Path, slack: SlackServer) -> None:
        self.env = {name: environment(slack, name) for name in ("run", "poll")}
        self.workdir, self.config, self.db = workdir, config, db
        self.service_log = workdir / "service.log"
        self._lock = threading.Lock()
        self.polls = 0
        self.polls_failed: list[str] = []
        self.polls_after: list[float] = []  # when each successful poll started (monotonic)
        self._stop_polls = threading.Event()
        self._poll_threads: list[threading.Thread] = []

    def start_service(self) -> subprocess.Popen[str]:
        command = aggregator(self.config, self.db, "run", "--tick", "0.2")
        return Logged(command, self.env["run"], self.service_log).proc

    def start_polls(self, loops: int) -> None:
        """``loops`` threads, each starting ``poll --once`` again as soon as its last one ended."""
        for _ in range(loops):
            thread = threading.Thread(target=self._poll_loop, daemon=True)
            thread.start()
            self._poll_threads.append(thread)

    def wait_for_poll_after(self, after: float, timeout: float) -> None:
        """Until a poll that started after ``after`` (monotonic) succeeded, or one failed."""
        waiting.wait_until(lambda: any(t > after for t in self.polls_after) or self.polls_failed,
                           "a poll after the last step", timeout)  # fmt: skip

    def rest(self, seconds: float) -> None:
        """A pause of the scenario's own (the service down between kills): over at once when
        the polls are stopped."""
        self._stop_polls.wait(seconds)

    def stop_polls(self, after: float, timeout: float) -> None:
        """Stop the loop once a poll that started after ``after`` (monotonic) succeeded."""
        self.wait_for_poll_after(after, timeout)
        self._stop_polls.set()
        for thread in self._poll_threads:
            thread.join(timeout)

    def _poll_loop(self) -> None:
        while not self._stop_polls.is_set():
            started = time.monotonic()
            with self._lock:
                self.polls += 1
                log = self.workdir / f"poll-{self.polls}.log"
            poll = Logged(aggregator(self.config, self.db, "poll", "--once"), self.env["poll"], log)
            code = poll.wait(300)
            with self._lock:
                if code != 0:
                    self.polls_failed.append("\n".join(poll.lines))
                else:
                    self.polls_after.append(started)
            waiting.changed()

    def close(self) -> None:
        """Stop starting polls, and wait for the one running to end."""
        self._stop_polls.set()
        for thread in self._poll_threads:
            thread.join(300)

    def trouble(self) -> list[str]:
        lines = []
        for path in [self.service_log, *sorted(self.workdir.glob("poll-*.log"))]:
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace")
                lines += [line for line in text.splitlines() if any(t in line for t in TROUBLE)]
        return lines


def run_loops(
    workdir: Path,
    *,
    stories: int,
    per_step: int = 1,
    kills: int = 0,
    per_channel_interval: float = 0.0,
    fault_rate: float = 0.0,
    kill_rate: float = 0.0,
    max_delay: float = 3.0,
    restart_delay: float = 0.0,
    slow_rate: float = 0.0,
    poll_loops: int = 1,
    seed: int = 1,
    drain_timeout: float = 120.0,
) -> LoopsResult:
    """Tell ``stories`` stories (the next step once a poll that started after the last one has
    finished, or one per service start when ``kills``) while the service and the poll loop run;
    then drain, stop and count."""
    rng = random.Random(seed)
    chaos = Chaos(rng, fault_rate, kill_rate, kill_client="run", slow_rate=slow_rate)
    db = workdir / "loops.db"
    started = time.monotonic()
    kills_at_random = 0
    starts = 0
    with FeedServer() as feeds, SlackServer(chaos=chaos) as slack:
        chaos.server = slack
        for name in CHANNELS:
            slack.add_channel(name)
        newsroom = Newsroom(feeds, stories, per_step=per_step)
        config = write_config(workdir / "config", newsroom.urls(), interval=per_channel_interval)
        procs = _Processes(workdir, config, db, slack)
        Store.open(db).close()  # created and migrated before two processes race to do it
        chaos.killing = kills > 0
        try:
            chaos.proc = procs.start_service()
            starts += 1
            procs.start_polls(poll_loops)
            last_step = time.monotonic()
            stepped = newsroom.advance()
            while True:
                if stepped:
                    last_step = time.monotonic()
                if not kills:
                    if not stepped:
                        break
                    procs.wait_for_poll_after(last_step, drain_timeout)
                    stepped = newsroom.advance()
                    continue
                if not stepped and chaos.kills_in_flight + kills_at_random >= kills:
                    break
                # Let the service run a random while (from its first call to Slack: an idle one
                # makes none), kill it unless a post did, tell the next story step while it is
                # down (the polls go on: systemd would wait RestartSec), and start it again.
                chaos.called.wait(max_delay)
                try:
                    chaos.proc.wait(timeout=rng.uniform(0.0, max_delay))
                except subprocess.TimeoutExpired:
                    if chaos.kill_now():
                        kills_at_random += 1
                    chaos.proc.wait()
                stepped = newsroom.advance()
                procs.rest(rng.uniform(0.0, restart_delay))  # down, as for systemd's RestartSec
                with chaos.kill_lock:
                    chaos.called.clear()
                    chaos.round_killed = False
                    chaos.proc = procs.start_service()
                starts += 1
            chaos.killing = False
            if chaos.proc.poll() is not None:
                chaos.proc = procs.start_service()
                starts += 1
            procs.stop_polls(after=last_step, timeout=drain_timeout)
            store = Store.open(db)
            try:
                waiting.wait_for(lambda: not store.outbox.rows(*UNSENT), drain_timeout)
            finally:
                store.close()
            chaos.proc.send_signal(signal.SIGTERM)
            chaos.proc.wait(timeout=60)
        finally:
            if chaos.proc is not None and chaos.proc.poll() is None:
                chaos.proc.kill()
                chaos.proc.wait()
            procs.close()
        result = _count(db, slack, newsroom)
        result.polls, result.polls_failed = procs.polls, procs.polls_failed
        result.trouble = procs.trouble()
    result.service_starts = starts
    result.kills = chaos.kills_in_flight + kills_at_random
    result.kills_in_flight, result.kills_at_random = chaos.kills_in_flight, kills_at_random
    result.faults = dict(sorted(chaos.faults.items()))
    result.seconds = time.monotonic() - started
    return result


def _count(db: Path, slack: SlackServer, newsroom: Newsroom) -> LoopsResult:
    store = Store.open(db)
    try:
        rows = store.outbox.rows()
        titles = {
            int(r["id"]): str(r["title"]) for r in store.db.rows("SELECT id, title FROM entries")
        }
        outlets = {
            int(r["story_id"]): int(r["n"])
            for r in store.db.rows(
                "SELECT story_id, count(DISTINCT feed_url) AS n FROM entries "
                "WHERE story_id IS NOT NULL GROUP BY story_id"
            )
        }
    finally:
        store.close()
    posts = slack.posts()
    counts: Counter[int] = Counter(i for p in posts for i in p.alert_ids)
    by_kind = {kind: [r for r in rows if r.alert.kind == kind] for kind in AlertKind}
    kinds: dict[AlertKind, KindCount] = {}
    for kind in (AlertKind.ALERT, AlertKind.REPLY):
        mine = by_kind[kind]
        kinds[kind] = KindCount(
            len(mine),
            sum(1 for r in mine if counts[r.alert.id] == 0),
            sum(max(0, counts[r.alert.id] - 1) for r in mine),
        )
    top = {(p.channel_id, p.ts): p for p in posts if p.thread_ts is None}
    edits = by_kind[AlertKind.UPDATE]
    edit_lost = sum(1 for r in edits if r.state != AlertState.SENT)
    parents = {r.alert.id: r for r in by_kind[AlertKind.ALERT]}
    edited = {r.alert.parent_alert_id for r in edits}
    notes: list[str] = []
    for parent_id in sorted(i for i in edited if i is not None):
        parent = parents.get(parent_id)
        if parent is None or parent.slack_ts is None or parent.slack_channel is None:
            continue  # a lost alert, counted there
        shown = slack.message(parent.slack_channel, parent.slack_ts)
        text = str(shown.get("blocks")) if shown else ""
        title = titles.get(parent.entry_id or -1, "")
        n = outlets.get(parent.alert.story_id or -1, 1)
        wanted = [title] + ([f"covered by {n} outlets"] if n > 1 else [])
        if not all(w in text for w in wanted):
            edit_lost += 1
            notes.append(f"alert {parent_id} shows a stale edit: want {wanted}")
    edit_dup = 0
    updates = slack.updates()
    for u in updates:
        target = top.get((u.channel_id, u.ts))
        if target is None or newsroom.story_of(_text(target)) != newsroom.story_of(_text(u)):
            edit_dup += 1
            notes.append(f"an edit changed the wrong message: {u.channel} {u.ts}")
    last: dict[tuple[str, str], str] = {}
    repeats = 0  # the same edit applied again (after a lost response): harmless, only counted
    for u in updates:
        key, content = (u.channel_id, u.ts), str(u.blocks)
        repeats += last.get(key) == content
        last[key] = content
    kinds[AlertKind.UPDATE] = KindCount(len(edits), edit_lost, edit_dup)
    twice, missed = _stories(newsroom, top.values())
    repeated, missing, elsewhere = _threads(newsroom, posts, top.values())
    sent_by = Counter(r.client for r in slack.received)
    return LoopsResult(
        alerts=kinds[AlertKind.ALERT], replies=kinds[AlertKind.REPLY],
        edits=kinds[AlertKind.UPDATE], repeated_updates=repeats, stories=newsroom.told(),
        stories_alerted_twice=twice, stories_missed=missed, outlets_repeated=repeated,
        outlets_missing=missing, replies_elsewhere=elsewhere, sent_by=dict(sent_by),
        not_sent=sum(1 for r in rows if r.state != AlertState.SENT), notes=notes,
    )  # fmt: skip


def _text(message: Received) -> str:
    return message.text + str(message.blocks)


def _stories(newsroom: Newsroom, top: Any) -> tuple[int, int]:
    per: Counter[tuple[int | None, str]] = Counter(
        (newsroom.story_of(_text(p)), p.channel) for p in top
    )
    twice = sum(n - 1 for (story, _), n in per.items() if story is not None and n > 1)
    missed = sum(1 for n in range(newsroom.told()) for c in CHANNELS if per[(n, c)] == 0)
    return twice, missed


def _threads(newsroom: Newsroom, posts: list[Received], top: Any) -> tuple[int, int, int]:
    """Per story and channel: each outlet after the first listed once, in that story's thread.
    Returns (outlets listed again, outlets never listed, items in another story's thread)."""
    parents = {(p.channel_id, p.ts): newsroom.story_of(_text(p)) for p in top}
    first: dict[tuple[int, str], str] = {}  # (story, channel id): the outlet of its alert
    for p in top:
        for outlet, n in _LINK.findall(str(p.blocks)):
            first.setdefault((int(n), p.channel_id), outlet)
    listed: Counter[tuple[int, str, str]] = Counter()
    elsewhere = 0
    for p in posts:
        if p.thread_ts is None:
            continue
        story = parents.get((p.channel_id, p.thread_ts))
        for outlet, n in _LINK.findall(str(p.blocks)):
            if int(n) == story:
                listed[(story, p.channel_id, outlet)] += 1
            else:
                elsewhere += 1
    repeated = sum(n - 1 for n in listed.values() if n > 1)
    missing = sum(
        1
        for (story, channel), alerted_by in first.items()
        for outlet in newsroom.published.get(story, [])
        if outlet != alerted_by and listed[(story, channel, outlet)] == 0
    )
    return repeated, missing, elsewhere
