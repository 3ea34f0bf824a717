"""The benchmark peer: lemon24's ``reader`` updating the same feeds, cold then warm.

Runs inside its own virtualenv (``bench/.venv-reader``, made by ``bench_cycle.py`` or
``make bench``), so reader's dependencies never touch the project's venv; it imports nothing
from the project. Prints one JSON object: seconds for the cold update (empty database) and the
warm one (nothing changed), and what reader stored.

    bench/.venv-reader/bin/python bench/peer_reader.py --urls urls.txt --db /tmp/r.sqlite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reader import make_reader


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=Path, required=True, help="one feed URL per line")
    parser.add_argument("--db", type=Path, required=True, help="database file (made fresh)")
    parser.add_argument("--workers", type=int, default=16, help="reader's update threads")
    args = parser.parse_args(argv)

    urls = [u for u in args.urls.read_text(encoding="utf-8").split() if u]
    reader = make_reader(str(args.db))
    for url in urls:
        reader.add_feed(url)

    # scheduled=False: update every feed each time, as our benchmark cycle polls every feed.
    started = time.perf_counter()
    reader.update_feeds(workers=args.workers, scheduled=False)
    cold = time.perf_counter() - started
    entries = reader.get_entry_counts().total

    started = time.perf_counter()
    reader.update_feeds(workers=args.workers, scheduled=False)
    warm = time.perf_counter() - started

    broken = sum(1 for feed in reader.get_feeds() if feed.last_exception is not None)
    reader.close()
    result = {
        "cold_seconds": cold,
        "warm_seconds": warm,
        "feeds": len(urls),
        "entries": entries,
        "broken_feeds": broken,
        "workers": args.workers,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
