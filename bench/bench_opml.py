"""`aggregator feeds import-opml` over generated OPML files of growing size.

Each size runs the real command in a subprocess against a fresh config directory (the shipped
topics, an empty feeds.toml), so the figure is what a person waits for, interpreter start
included. The import should grow about linearly: compare the seconds per outline across sizes.

    .venv/bin/python bench/bench_opml.py                  # 250, 1,000 and 5,000 outlines
    .venv/bin/python bench/bench_opml.py --sizes 100 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

ROOT = Path(__file__).resolve().parents[1]


def opml(outlines: int) -> str:
    """``outlines`` feeds in folders of 50, plus two that must be skipped (javascript:, file:)."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<opml version="2.0"><body>']
    for folder in range(0, outlines, 50):
        lines.append(f'<outline text="Folder {folder // 50}">')
        for n in range(folder, min(folder + 50, outlines)):
            url = f"https://news{n % 97}.example/section/{n}/feed.xml"
            lines.append(f'  <outline type="rss" text={quoteattr(f"Feed {n}")} xmlUrl="{url}"/>')
        lines.append("</outline>")
    lines.append('<outline text="bad" xmlUrl="javascript:alert(1)"/>')
    lines.append('<outline text="local" xmlUrl="file:///etc/passwd"/>')
    lines.append("</body></opml>")
    return "\n".join(lines) + "\n"


def run_once(outlines: int, timeout: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-opml-") as tmp:
        config = Path(tmp) / "config"
        config.mkdir()
        shutil.copy(ROOT / "config" / "topics.toml", config / "topics.toml")
        (config / "aggregator.toml").write_text("", encoding="utf-8")
        (config / "feeds.toml").write_text("", encoding="utf-8")
        source = Path(tmp) / "subs.opml"
        source.write_text(opml(outlines), encoding="utf-8")
        command = [sys.executable, "-m", "aggregator", "--config", str(config)]
        command += ["feeds", "import-opml", str(source)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
            )
        except subprocess.TimeoutExpired:
            return {"outlines": outlines, "seconds": None, "timed_out_after": timeout}
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"import of {outlines} outlines failed:\n{proc.stderr[-2000:]}")
        written = (config / "feeds.toml").read_text(encoding="utf-8").count("[[feeds]]")
        return {
            "outlines": outlines,
            "seconds": round(seconds, 3),
            "ms_per_outline": round(1000 * seconds / outlines, 3),
            "feeds_written": written,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 5000])
    parser.add_argument("--timeout", type=float, default=240.0, help="per size, in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = [run_once(n, args.timeout) for n in args.sizes]
    if args.json:
        print(json.dumps({"runs": results}))
        return
    for r in results:
        if r["seconds"] is None:
            print(f"{r['outlines']:>6} outlines: did not finish in {r['timed_out_after']:g} s")
        else:
            print(
                f"{r['outlines']:>6} outlines: {r['seconds']:8.3f} s "
                f"({r['ms_per_outline']} ms per outline, {r['feeds_written']} feeds written)"
            )


if __name__ == "__main__":
    main()
