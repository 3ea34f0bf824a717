"""Soak: the delivery worker SIGKILLed many times while Slack misbehaves; count lost and duplicates.

    .venv/bin/python bench/soak_delivery.py [--alerts 220] [--kills 55] [--channels 4]
    .venv/bin/python bench/soak_delivery.py --beside-polls [--stories 150] [--kills 140]

Alerts are queued while a real delivery worker (``tests/delivery_worker.py``) delivers them to the
local Slack server of ``tests/slackserver.py``, which answers at random with 429 (``ratelimited``
and ``rate_limited``), 500, 503, dropped connections and lost responses. The worker is killed with
SIGKILL from inside the server during posts (before and after Slack accepted the message) and at
random moments, then restarted; a last clean run drains the outbox. It prints lost and duplicated
alerts (from the server's records) and per-channel pacing measured on the server's receive times of
every ``chat.postMessage`` request, faulted ones included, at the real 1 message/second setting.

``--beside-polls`` runs ``aggregator run`` and, beside it on the same database, loops of
``aggregator poll --once`` (each starts the next poll as its last one ends), both polling feeds
whose stories become alerts, thread replies and edits (``tests/newsroom.py``). The service is
SIGKILLed during its own posts and edits and at random, and stays down a random while (up to
``--restart-delay``) as the next story step is told and the polls go on, while Slack misbehaves
as above and answers some calls late (``--slow-rate``); ``tests/loops_harness.py`` counts lost
and duplicated messages per kind.
Edits are idempotent, so an edit counts as duplicated only when it changed the wrong message
(not the alert of its story); it counts as lost when its row was never sent or its alert does
not show, at the end, the story as stored (a stale edit landing last). A ``chat.update`` sent
again after a lost response is only counted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.delivery_harness import run_soak
from tests.loops_harness import LoopsResult, run_loops


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
    parser.add_argument(
        "--beside-polls", action="store_true",
        help="aggregator run beside loops of poll --once, over feeds with replies and edits",
    )  # fmt: skip
    parser.add_argument("--stories", type=int, default=150, help="with --beside-polls")
    parser.add_argument("--poll-loops", type=int, default=2, help="with --beside-polls")
    parser.add_argument("--max-delay", type=float, default=2.0, help="longest life of a start, s")
    parser.add_argument("--restart-delay", type=float, default=1.5, help="longest downtime, s")
    parser.add_argument("--slow-rate", type=float, default=0.1, help="calls answered late")
    args = parser.parse_args()
    if args.beside_polls:
        return beside_polls(args)
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


def beside_polls(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-loops-") as tmp:
        r = run_loops(
            Path(tmp),
            stories=args.stories,
            kills=args.kills,
            per_channel_interval=args.interval,
            fault_rate=args.fault_rate,
            kill_rate=args.kill_rate,
            max_delay=args.max_delay,
            restart_delay=args.restart_delay,
            slow_rate=args.slow_rate,
            poll_loops=args.poll_loops,
            seed=args.seed,
            drain_timeout=900,
        )
    report(r, args)
    ok = r.lost == 0 and r.duplicated == 0 and r.story_errors == 0 and r.not_sent == 0
    ok = ok and not r.polls_failed and not r.trouble
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def report(r: LoopsResult, args: argparse.Namespace) -> None:
    print(
        f"processes: aggregator run beside {args.poll_loops} loop(s) of poll --once, one database"
    )
    print(f"stories: {r.stories} (each told by 3 outlets, then one rewrites its title), 2 channels")
    print(f"SIGKILLs of the service: {r.kills} ({r.kills_in_flight} during its own post or edit, "
          f"{r.kills_at_random} at random)")  # fmt: skip
    print(f"service starts: {r.service_starts}")
    print(f"polls: {r.polls} ({len(r.polls_failed)} exited non-zero)")
    print(f"faults injected: {sum(r.faults.values())} {r.faults}")
    for name, kind in (("alerts", r.alerts), ("replies", r.replies), ("edits", r.edits)):
        print(f"{name}: {kind.rows} rows, lost {kind.lost}, duplicated {kind.duplicated}")
    print(f"chat.update of the same edit again, after a lost response (harmless): "
          f"{r.repeated_updates}")  # fmt: skip
    print(f"stories alerted twice in a channel: {r.stories_alerted_twice}, never alerted: "
          f"{r.stories_missed}")  # fmt: skip
    print(f"outlets listed twice in a thread: {r.outlets_repeated}, never listed: "
          f"{r.outlets_missing}, in another story's thread: {r.replies_elsewhere}")  # fmt: skip
    print(f"lost: {r.lost}")
    print(f"duplicated: {r.duplicated}")
    print(f'"database is locked", "cycle failed" or tracebacks in any output: {len(r.trouble)}')
    for line in r.trouble[:10]:
        print(f"  {line}")
    print(f"accepted posts and edits by process: {r.sent_by}")
    print(f"left unsent in the outbox: {r.not_sent}")
    for note in r.notes[:20]:
        print(f"  {note}")
    print(f"wall time: {r.seconds:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
