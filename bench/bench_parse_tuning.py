"""feedparser with and without ``aggregator/ingest/tuning.py``: seconds of CPU over the same bytes.

Each repetition parses the bench corpus in two fresh processes, one untuned and one tuned, with
the settings the service uses (no sanitising, no relative-URI resolution): once not told the
feeds' URLs, as most feeds are parsed, and once told them, as a feed that sets a base is. Prints
the medians and their ratios, measured in the same run. The results must not differ; that is
``tests/test_parse_tuning.py``'s job.

    .venv/bin/python bench/bench_parse_tuning.py [--feeds 200] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import build_corpus, render  # noqa: E402

MODES = {"no_url": "not told the URL", "url": "told the URL"}


def parse_all(folder: Path, tuned: bool) -> dict[str, float]:
    """CPU seconds for parsing every file of ``folder``, without and with its URL (a child)."""
    import feedparser

    if tuned:  # as each parse worker does when it starts
        from aggregator.ingest.parse import tune_parser

        if not tune_parser():
            raise SystemExit(f"feedparser {feedparser.__version__} is not the tuned version")
    bodies = [p.read_bytes() for p in sorted(folder.iterdir())]
    seconds = {}
    for mode in MODES:
        started = time.process_time()
        for number, body in enumerate(bodies):
            url = f"http://127.0.0.1/feeds/{number}.xml" if mode == "url" else ""
            feedparser.parse(
                io.BytesIO(body),
                response_headers={"content-location": url} if url else None,
                sanitize_html=False,
                resolve_relative_uris=False,
            )
        seconds[mode] = time.process_time() - started
    return seconds


def run_child(folder: Path, tuned: bool) -> dict[str, float]:
    flag = "--tuned" if tuned else "--untuned"
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), flag],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds: dict[str, float] = json.loads(out.stdout)
    return seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--untuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(parse_all(args.child, args.tuned)))
        return 0

    runs: dict[str, list[dict[str, float]]] = {"untuned": [], "tuned": []}
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        folder = Path(tmp)
        for number, feed in enumerate(build_corpus(args.feeds)):
            (folder / f"{number:05d}.xml").write_bytes(render(feed))
        for _ in range(args.repeat):
            runs["untuned"].append(run_child(folder, tuned=False))
            runs["tuned"].append(run_child(folder, tuned=True))
    summary: dict[str, object] = {"feeds": args.feeds, "repetitions": args.repeat}
    lines = [f"feedparser over {args.feeds} bench feeds, CPU seconds, median of {args.repeat}:"]
    for mode in MODES:
        untuned, tuned = (statistics.median(r[mode] for r in runs[k]) for k in runs)
        ratio = round(tuned / untuned, 3)
        summary[mode] = {
            "untuned_seconds": round(untuned, 3),
            "tuned_seconds": round(tuned, 3),
            "tuned_over_untuned": ratio,
            "tuned_ms_per_feed": round(1000 * tuned / args.feeds, 2),
        }
        label = MODES[mode]
        lines.append(f"  {label:<18} untuned {untuned:7.3f}  tuned {tuned:7.3f}  ratio {ratio}")
    print(json.dumps(summary, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
