"""``aggregator demo``: one full cycle, offline.

Serves a few real feed snapshots (from ``../shared/corpus/real-feeds`` when it is there, plus the
small feed shipped in this package) over HTTP on 127.0.0.1, points a temporary config and database
at them, runs one cycle through the real pipeline and prints the alerts with the console sink.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PACKAGE_FEEDS = Path(__file__).parent
SNAPSHOTS = (  # (name, path under corpus/real-feeds)
    ("Ars Technica", "politics-tech-2024-2026/arstechnica/arstechnica_2025-07-25.xml"),
    ("NPR News", "politics-tech-2024-2026/npr-news-1001/npr-news-1001_2025-07-24.xml"),
    ("The Hill", "politics-tech-2024-2026/thehill-2024/thehill_partnerfeed_2024-07-19.xml"),
    (
        "White House: executive orders",
        "politics-tech-2024-2026/whitehouse-executive-orders-GENERATED/wh_eo_2025-09-22.xml",
    ),
)


def find_snapshots(start: Path) -> Path | None:
    """``../shared/corpus/real-feeds`` beside the checkout (or the working directory), if any."""
    for base in (start, *start.parents):
        candidate = base.parent / "shared" / "corpus" / "real-feeds"
        if candidate.is_dir():
            return candidate
    return None


def demo_feeds(feeds_dir: Path | None) -> list[tuple[str, str, bytes]]:
    """(name, path on the demo server, body) for every feed the demo serves."""
    feeds = [("Demo wire", "/demo-wire.xml", (PACKAGE_FEEDS / "demo-wire.xml").read_bytes())]
    if feeds_dir is not None:
        for path in sorted(feeds_dir.glob("*.xml")):
            feeds.append((path.stem, f"/{path.name}", path.read_bytes()))
        return feeds
    corpus = find_snapshots(Path(__file__).resolve()) or find_snapshots(Path.cwd().resolve())
    if corpus is not None:
        for name, relative in SNAPSHOTS:
            path = corpus / relative
            if path.is_file():
                feeds.append((name, f"/{path.name}", path.read_bytes()))
    return feeds


@contextmanager
def serve_feeds(files: dict[str, bytes]) -> Iterator[str]:
    """A feed server on 127.0.0.1 for as long as the block runs; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_demo(
    config_dir: Path, *, feeds_dir: Path | None = None, echo: Callable[[str], None] = print
) -> int:
    """Run the demo; returns the number of alerts shown."""
    from aggregator.service.runtime import Runtime

    feeds = demo_feeds(feeds_dir)
    with (
        serve_feeds({path: body for _, path, body in feeds}) as base,
        tempfile.TemporaryDirectory(prefix="aggregator-demo-") as tmp,
    ):
        work = Path(tmp)
        topics = (config_dir / "topics.toml").read_text(encoding="utf-8")
        (work / "topics.toml").write_text(topics, encoding="utf-8")
        models = config_dir / "models"
        if models.is_dir():  # the topics name their models relative to their directory
            (work / "models").symlink_to(models.resolve(), target_is_directory=True)
        # Snapshots are months old: the demo treats every item as fresh news.
        (work / "aggregator.toml").write_text(
            '[polling]\nfirst_poll_window = "36500d"\n'
            '[fetch]\ntimeout = 5\ndeadline = 10\nallow_networks = ["127.0.0.1/32"]\n',
            encoding="utf-8",
        )
        lines = []
        for name, path, _ in [*feeds, ("Unreachable feed", "/missing.xml", b"")]:
            lines.append(
                f"[[feeds]]\nurl = {_toml_string(base + path)}\nname = {_toml_string(name)}\n"
            )
        (work / "feeds.toml").write_text("\n".join(lines), encoding="utf-8")
        echo(f"demo: serving {len(feeds)} feeds (and one missing) on {base}")
        runtime = Runtime(work, {}, db_path=str(work / "demo.db"))
        try:
            report = runtime.cycle(everything=True)
        finally:
            runtime.close()
    for feed in report.feeds:
        state = feed.status if not feed.reason else f"{feed.status}: {feed.reason}"
        where = feed.url.removeprefix(base)
        echo(f"  {where}: {feed.new_entries} entries, {feed.matched} matched ({state})")
    echo(report.summary())
    return report.alerts
