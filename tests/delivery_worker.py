"""A stand-alone delivery loop for tests and the soak bench: ``tests/delivery_worker.py --db PATH``.

It settles rows a crash left in ``sending``, then delivers whatever falls due until stopped (or,
with ``--until-idle``, until the outbox is empty). The service runs the same :class:`Outbox` calls
inside its own scheduler; this entry point exists so crash tests and soak benches can SIGKILL a
real process that does nothing but deliver.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from types import FrameType

from aggregator.config.load import load_config, slack_token
from aggregator.config.model import Settings
from aggregator.models import AlertState
from aggregator.notify import Outbox, make_sink
from aggregator.store import Store


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aggregator-delivery-worker", description=__doc__)
    parser.add_argument("--db", required=True, help="the SQLite database")
    parser.add_argument("--config", help="config directory (topics and [slack] settings)")
    parser.add_argument("--per-channel-interval", type=float, help="seconds between posts")
    parser.add_argument("--retry-base", type=float, default=30.0)
    parser.add_argument("--pause-base", type=float, default=5.0)
    parser.add_argument("--pause-cap", type=float, default=900.0)
    parser.add_argument("--idle", type=float, default=1.0, help="longest sleep between passes")
    parser.add_argument("--until-idle", action="store_true", help="exit once nothing is waiting")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    environ = dict(os.environ)
    if args.config:
        config = load_config(args.config, environ)
        settings, topics = config.settings, config.topics
    else:
        api = environ.get("SLACK_API_URL") or Settings().slack_api_url
        settings, topics = Settings(slack_api_url=api), ()
    if args.per_channel_interval is not None:
        settings = replace(settings, per_channel_interval=args.per_channel_interval)
    stopping = threading.Event()  # set by SIGTERM: ends a pause between passes at once

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    store = Store.open(args.db)
    outbox = Outbox(
        store,
        make_sink(settings, slack_token(environ)),
        settings,
        topics,
        retry_base=args.retry_base,
        pause_base=args.pause_base,
        pause_cap=args.pause_cap,
    )
    try:
        outbox.recover(datetime.now(UTC))
        while not stopping.is_set():
            outbox.deliver_due(datetime.now(UTC), deadline=time.monotonic() + args.idle * 10)
            waiting = store.outbox.rows(
                AlertState.PENDING, AlertState.FAILED, AlertState.HELD, AlertState.SENDING
            )
            if args.until_idle and not waiting:
                break
            due = outbox.next_due()
            pause = args.idle
            if due is not None:
                pause = min(args.idle, max(0.0, (due - datetime.now(UTC)).total_seconds()))
            stopping.wait(max(pause, 0.005))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
