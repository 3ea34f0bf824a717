"""Crash-and-outage runs of the real delivery worker, shared by the crash test and the soak bench.

A producer queues alerts into a real SQLite outbox while ``tests/delivery_worker.py``
delivers them to a local :class:`SlackServer` that misbehaves at random (429, 500, 503, dropped
connections, lost responses). The worker is SIGKILLed again and again, sometimes from inside the
server while a post is in flight (before or after the message is accepted), sometimes at a random
moment. At the end one clean worker drains the outbox and the server's records are counted.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aggregator.models import AlertState, Entry
from aggregator.store import Store
from tests import waiting
from tests.slackserver import TOKEN, Fault, SlackServer
from tests.storing import alert_item, store_items

WORKER = Path(__file__).with_name("delivery_worker.py")  # a process that only delivers
UNSENT = (AlertState.PENDING, AlertState.FAILED, AlertState.HELD, AlertState.SENDING)

ROOT = Path(__file__).resolve().parents[1]
READS = ("conversations.history", "conversations.replies", "conversations.list")
WRITES = ("chat.postMessage", "chat.update")


@dataclass
class ChannelPacing:
    requests: int
    accepted: int
    min_gap: float  # seconds between consecutive chat.postMessage requests
    max_in_window: int  # most requests seen in any sliding window of one interval


@dataclass
class SoakResult:
    alerts: int
    kills: int
    kills_in_flight: int
    kills_at_random: int
    lost: int
    duplicated: int
    not_sent: int
    faults: dict[str, int]
    pacing: dict[str, ChannelPacing]
    seconds: float
    restarts: int = 0
    notes: list[str] = field(default_factory=list)


class Chaos:
    """Decides faults per call (``slow_rate``: some calls are answered late), and kills the
    worker from inside a post or an edit now and then.

    With ``kill_client``, only a call from that client of the server (``SlackServer.caller``) can
    kill: the process is killed while its own message is in flight, not another process's.
    """

    def __init__(
        self,
        rng: random.Random,
        fault_rate: float,
        kill_rate: float,
        *,
        kill_client: str | None = None,
        slow_rate: float = 0.0,
    ) -> None:
        self.rng = rng
        self.fault_rate = fault_rate
        self.kill_rate = kill_rate
        self.slow_rate = slow_rate  # calls answered normally, but 0.2 to 1.5 s late
        self.kill_client = kill_client
        self.server: SlackServer | None = None  # set when kill_client is
        self.proc: subprocess.Popen[Any] | None = None
        self.killing = True
        self.kills_in_flight = 0
        self.faults: dict[str, int] = {}
        self.called = threading.Event()
        self.kill_lock = threading.Lock()
        self.round_killed = False

    def _kill(self) -> bool:
        if self.kill_client is not None and (
            self.server is None or self.server.caller() != self.kill_client
        ):
            return False
        with self.kill_lock:
            proc = self.proc
            if not self.killing or self.round_killed or proc is None or proc.poll() is not None:
                return False
            os.kill(proc.pid, signal.SIGKILL)
            self.round_killed = True
            self.kills_in_flight += 1
            return True

    def kill_now(self) -> bool:
        """SIGKILL the worker from outside, unless a post already killed it this round."""
        with self.kill_lock:
            proc = self.proc
            if self.round_killed or proc is None or proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            self.round_killed = True
            return True

    def __call__(self, method: str, params: dict[str, Any]) -> Fault | None:
        if self.kill_client is None or (self.server and self.server.caller() == self.kill_client):
            self.called.set()
        roll = self.rng.random()
        fault: Fault | None = None
        if method in WRITES:
            if roll < self.kill_rate / 2 and self._kill():
                fault = Fault.accept_then_drop()  # Slack has it; the worker never hears back
            elif roll < self.kill_rate and self._kill():
                fault = Fault.drop()  # died before Slack got it
            else:
                roll = self.rng.random()
                kinds = [
                    Fault.rate_limited(self.rng.choice([0.2, 0.5, 1])),
                    Fault.in_body_rate_limited(0.3),
                    Fault.status(500),
                    Fault.status(503),
                    Fault.drop(),
                    Fault.accept_then_drop(),
                ]
                if roll < self.fault_rate:
                    fault = self.rng.choice(kinds)
        elif method in READS and roll < self.fault_rate / 2:
            fault = Fault.status(503)
        if fault is None and self.slow_rate and self.rng.random() < self.slow_rate:
            fault = Fault.held(threading.Event(), timeout=self.rng.uniform(0.2, 1.5))
        if fault is not None:
            name = (
                "slow" if fault.kind == "held" else f"{fault.kind}:{fault.http_status}:{fault.code}"
            )
            self.faults[name] = self.faults.get(name, 0) + 1
        return fault


def _queue(store: Store, serial: itertools.count[int], channels: list[str], count: int) -> None:
    batch = []
    now = datetime.now(UTC)
    for _ in range(count):
        n = next(serial)
        channel = channels[n % len(channels)]
        topic = channel.lstrip("#")
        entry = Entry(
            feed_url="https://feeds.example/soak",
            guid=f"soak-{n}",
            link=f"https://news.example/{n}",
            canonical_url=f"https://news.example/{n}",
            title=f"Soak story {n}: <!channel> AI rules",
            summary="Lawmakers debated AI regulation.",
            published=now,
            content_hash=f"h{n}",
            source="Soak News",
        )
        batch.append(alert_item(entry, topic, channel, "AI"))
    store_items(store, batch, now)


def _pacing(server: SlackServer, window: float) -> dict[str, ChannelPacing]:
    by_channel: dict[str, list[float]] = {}
    for call in server.calls:
        if call.method == "chat.postMessage":
            by_channel.setdefault(str(call.params.get("channel")), []).append(call.at)
    accepted: dict[str, int] = {}
    for post in server.posts():
        accepted[post.channel] = accepted.get(post.channel, 0) + 1
    out = {}
    for channel, times in sorted(by_channel.items()):
        times.sort()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        most, start = 0, 0
        for end in range(len(times)):
            while times[end] - times[start] >= window:
                start += 1
            most = max(most, end - start + 1)
        out[channel] = ChannelPacing(
            len(times), accepted.get(channel, 0), min(gaps) if gaps else float("inf"), most
        )
    return out


def _service_config(workdir: Path, channels: list[str], interval: float) -> Path:
    """A config for ``aggregator run``: no feeds (the test queues alerts), one topic a channel."""
    config = workdir / "config"
    config.mkdir(exist_ok=True)
    (config / "aggregator.toml").write_text(
        f'[polling]\ninterval = "10s"\n[slack]\nper_channel_interval = {interval}\n',
        encoding="utf-8",
    )
    (config / "feeds.toml").write_text("feeds = []\n", encoding="utf-8")
    topics = "".join(f'[topics.{c.lstrip("#")}]\nchannel = "{c}"\nquery = "AI"\n' for c in channels)
    (config / "topics.toml").write_text(topics, encoding="utf-8")
    return config


def _wait_until_drained(store: Store, timeout: float) -> None:
    """Until nothing is left to send, or ``timeout``. The service logs each cycle after its
    deliveries are committed: each line it writes is the moment to look again."""
    waiting.wait_for(lambda: not store.outbox.rows(*UNSENT), timeout)


def _copy_output(stream: IO[bytes], log: IO[bytes]) -> None:
    for line in stream:
        log.write(line)
        waiting.changed()


def run_soak(
    workdir: Path,
    *,
    alerts: int,
    kills: int,
    channels: int = 3,
    per_channel_interval: float = 1.0,
    fault_rate: float = 0.25,
    kill_rate: float = 0.08,
    max_delay: float = 1.5,
    seed: int = 1,
    drain_timeout: float = 300.0,
    burst: bool = False,
    service: bool = False,
) -> SoakResult:
    """Run the crash-and-outage scenario and count what the server received.

    ``service=True`` kills and restarts the real service (``aggregator run``, which delivers in its
    cycles with the production backoff) instead of the bare delivery worker.
    """
    rng = random.Random(seed)
    chaos = Chaos(rng, fault_rate, kill_rate)
    names = [f"#soak-{i}" for i in range(channels)]
    db = workdir / "soak.db"
    store = Store.open(db)
    serial = itertools.count(1)
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": TOKEN,
        "PYTHONPATH": str(ROOT),
    }
    started = time.monotonic()
    kills_at_random = 0
    restarts = 0
    # a burst queues everything at once (the fastest producer); otherwise alerts trickle in
    per_round = alerts if burst else max(1, -(-alerts // max(1, kills)))
    queued = 0
    with SlackServer(chaos=chaos) as server:
        for name in names:
            server.add_channel(name)
        env["SLACK_API_URL"] = server.url
        command = [
            sys.executable, str(WORKER), "--db", str(db),
            "--per-channel-interval", str(per_channel_interval), "--retry-base", "0.2",
            "--pause-base", "0.1", "--pause-cap", "1.0", "--idle", "0.05",
        ]  # fmt: skip
        if service:
            config = _service_config(workdir, names, per_channel_interval)
            command = [
                sys.executable, "-c", "from aggregator.cli import main; main()",
                "--config", str(config), "--db", str(db), "run",
            ]  # fmt: skip
        log = open(workdir / "worker.log", "ab")  # noqa: SIM115 - kept open across restarts
        try:
            while chaos.kills_in_flight + kills_at_random < kills or queued < alerts:
                chaos.called.clear()
                with chaos.kill_lock:
                    chaos.round_killed = False
                    chaos.proc = subprocess.Popen(
                        command, env=env, stdout=log, stderr=log, cwd=ROOT
                    )
                restarts += 1
                if queued < alerts:
                    count = min(per_round, alerts - queued)
                    _queue(store, serial, names, count)
                    queued += count
                chaos.called.wait(3)  # an idle process makes no call: do not wait long
                try:
                    chaos.proc.wait(timeout=rng.uniform(0.0, max_delay))
                except subprocess.TimeoutExpired:
                    if chaos.kill_now():
                        kills_at_random += 1
                    chaos.proc.wait()
            chaos.killing = False
            final = command if service else [*command, "--until-idle"]
            output = subprocess.PIPE if service else log
            chaos.proc = subprocess.Popen(
                final, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT
            )
            restarts += 1
            if service:
                assert chaos.proc.stdout is not None
                copier = threading.Thread(
                    target=_copy_output, args=(chaos.proc.stdout, log), daemon=True
                )
                copier.start()
                _wait_until_drained(store, drain_timeout)
                chaos.proc.send_signal(signal.SIGTERM)
                chaos.proc.wait(timeout=drain_timeout)
                copier.join()  # the output ends with the process
            chaos.proc.wait(timeout=drain_timeout)
        finally:
            if chaos.proc is not None and chaos.proc.poll() is None:
                chaos.proc.kill()
                chaos.proc.wait()
            log.close()
        counts = server.alert_counts()
        pacing = _pacing(server, per_channel_interval)
    ids = [r.alert.id for r in store.outbox.rows()]
    not_sent = len(store.outbox.rows(*UNSENT, AlertState.DEAD))
    store.close()
    return SoakResult(
        alerts=len(ids),
        kills=chaos.kills_in_flight + kills_at_random,
        kills_in_flight=chaos.kills_in_flight,
        kills_at_random=kills_at_random,
        lost=sum(1 for i in ids if counts.get(i, 0) == 0),
        duplicated=sum(max(0, counts.get(i, 0) - 1) for i in ids),
        not_sent=not_sent,
        faults=dict(sorted(chaos.faults.items())),
        pacing=pacing,
        seconds=time.monotonic() - started,
        restarts=restarts,
    )
