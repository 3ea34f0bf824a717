"""Reading the team's reactions: how many Slack calls a read takes, and how long it is paced.

N alerts are delivered through the real outbox to the local Slack stand-in, spread over C
channels, with some human chatter between them; a third get reactions. Then one read (every
label new) and a second read (nothing changed) run with the service's pacing, against a real
SQLite file. Printed: calls, pages per channel, seconds waited for pacing, seconds spent
otherwise (HTTP and the database), and the label changes.

    .venv/bin/python bench/bench_feedback.py [--alerts 1000] [--channels 2] [--chatter 1]
                                             [--pace 2.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.config.model import FeedbackSettings, Settings, TopicConfig  # noqa: E402
from aggregator.feedback.read import READ_PACE, ReadReport, read_reactions  # noqa: E402
from aggregator.models import Entry, TopicMatch  # noqa: E402
from aggregator.notify import Outbox  # noqa: E402
from aggregator.notify.render import Message  # noqa: E402
from aggregator.notify.slack import SlackSink  # noqa: E402
from aggregator.store import Store  # noqa: E402
from tests.slackserver import TOKEN, SlackServer  # noqa: E402
from tests.storing import Item, store_items  # noqa: E402


def setup(store: Store, slack: SlackServer, alerts: int, channels: int, chatter: int) -> None:
    """Alerts delivered in batches of 100, with ``chatter`` x 50 people's messages per channel
    after each batch (they lie between the alerts a read spans); a third get a reaction."""
    now = datetime.now(UTC) - timedelta(hours=1)
    topics = tuple(TopicConfig(f"t{c}", f"#c{c}", "x") for c in range(channels))
    sink = SlackSink(TOKEN, slack.url, timeout=10)
    outbox = Outbox(store, sink, Settings(per_channel_interval=0.0), topics)
    for start in range(0, alerts, 100):
        items = []
        for n in range(start, min(alerts, start + 100)):
            topic = topics[n % channels]
            link = f"https://n.example/{n}"
            entry = Entry("https://a.example/f", f"g{n}", link, link, f"Story {n}", "", now,
                          f"h{n}", "Bench")  # fmt: skip
            items.append(Item(entry, (TopicMatch(topic.name),), (topic.channel,)))
        store_items(store, items, now)
        outbox.deliver_due(datetime.now(UTC))
        for c in range(channels):
            for k in range(chatter * 50):
                sink.post(f"#c{c}", Message(f"chat {k}", (), {}, ()))
    names = ("+1", "-1", "white_check_mark", "x")
    for n, row in enumerate(r for r in store.outbox.rows() if r.slack_ts):
        if n % 3 == 0:
            assert row.slack_channel is not None and row.slack_ts is not None
            slack.react(row.slack_channel, row.slack_ts, names[n % 4], f"U{n % 5}")


def one_read(store: Store, slack: SlackServer, pace: float) -> tuple[ReadReport, float]:
    sink = SlackSink(TOKEN, slack.url, timeout=10)
    started = time.perf_counter()
    report = read_reactions(store, sink, FeedbackSettings(), datetime.now(UTC), pace=pace)
    return report, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--chatter", type=int, default=1, help="x 50 messages per 100 alerts")
    parser.add_argument("--pace", type=float, default=READ_PACE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"alerts": args.alerts, "channels": args.channels, "pace": args.pace}
    with tempfile.TemporaryDirectory() as tmp, SlackServer() as slack:
        store = Store.open(Path(tmp) / "bench.db")
        try:
            setup(store, slack, args.alerts, args.channels, args.chatter)
            result["messages_in_slack"] = sum(1 for c in slack.calls
                                              if c.method == "chat.postMessage")  # fmt: skip
            for name in ("first_read", "second_read"):
                report, seconds = one_read(store, slack, args.pace)
                result[name] = {
                    "calls": report.calls, "found": report.found, "changed": report.changed,
                    "paced_seconds": report.paced, "seconds": round(seconds, 2),
                    "working_seconds": round(seconds - report.paced, 2),
                    "complete": report.complete,
                }  # fmt: skip
        finally:
            store.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    messages = result["messages_in_slack"]
    print(f"{args.alerts} alerts in {args.channels} channel(s), {messages} messages in Slack, "
          f"a call every {args.pace:g} s")  # fmt: skip
    for name in ("first_read", "second_read"):
        r = result[name]
        print(f"  {name.replace('_', ' ')}: {r['calls']} calls, {r['found']} alerts found, "
              f"{r['changed']} label changes; {r['seconds']} s, of which {r['paced_seconds']} s "
              f"pacing and {r['working_seconds']} s HTTP and database")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
