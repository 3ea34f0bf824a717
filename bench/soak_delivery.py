"""Soak: the delivery worker SIGKILLed many times while Slack misbehaves; count lost and duplicates.

    .venv/bin/python bench/soak_delivery.py [--alerts 220] [--kills 55] [--channels 4]

Alerts are queued while a real delivery worker (``tests/delivery_worker.py``) delivers them to the
local Slack server of ``tests/slackserver.py``, which answers at random with 429 (``ratelimited``
and ``rate_limited``), 500, 503, dropped connections and lost responses. The worker is killed with
SIGKILL from inside the server during posts (before and after Slack accepted the message) and at
random moments, then restarted; a last clean run drains the outbox. It prints lost and duplicated
alerts (from the server's records) and per-channel pacing measured on the server's receive times of
every ``chat.postMessage`` request, faulted ones included, at the real 1 message/second setting.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.delivery_harness import run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=220)
    parser.add_argument("--kills", type=int, default=55)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="per-channel interval, s")
    parser.add_argument("--fault-rate", type=float, default=0.25)
    parser.add_argument("--kill-rate", type=float, default=0.08)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--burst", action="store_true", help="queue every alert at the start")
    parser.add_argument(
        "--service", action="store_true", help="kill the real service (aggregator run)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-delivery-") as tmp:
        r = run_soak(
            Path(tmp),
            alerts=args.alerts,
            kills=args.kills,
            channels=args.channels,
            per_channel_interval=args.interval,
            fault_rate=args.fault_rate,
            kill_rate=args.kill_rate,
            seed=args.seed,
            drain_timeout=900,
            burst=args.burst,
            service=args.service,
        )
    print(f"alerts queued: {r.alerts} ({'all at once' if args.burst else 'a batch per restart'})")
    print(f"process: {'aggregator run (the service)' if args.service else 'delivery worker'}")
    print(f"SIGKILLs: {r.kills} ({r.kills_in_flight} during a post, {r.kills_at_random} at random)")
    print(f"worker starts: {r.restarts}")
    print(f"faults injected: {sum(r.faults.values())} {r.faults}")
    print(f"lost: {r.lost}")
    print(f"duplicated: {r.duplicated}")
    print(f"left unsent in the outbox: {r.not_sent}")
    print(f"wall time: {r.seconds:.1f} s")
    print(f"per-channel pacing (setting {args.interval:g} s):")
    for channel, p in r.pacing.items():
        print(
            f"  {channel}: {p.requests} requests ({p.accepted} accepted), "
            f"min gap {p.min_gap:.3f} s, max requests in any {args.interval:g} s window "
            f"{p.max_in_window}"
        )
    ok = r.lost == 0 and r.duplicated == 0 and r.not_sent == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
