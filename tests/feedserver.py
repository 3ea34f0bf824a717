"""A real HTTP feed server on 127.0.0.1, in a thread, for tests and the demo.

Each path is scripted with one or more :class:`Reply` values (a sequence is consumed one per
request, the last one repeats). It answers conditional GETs with 304 when the validators match,
gzips on request, and can be hostile: redirect loops, redirects to ``file://``, slow drips, endless
bodies and gzip bombs. It counts requests and body bytes sent per path, so tests can show that a
304 costs no body.
"""

from __future__ import annotations

import contextlib
import gzip
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.waiting import changed


@dataclass(frozen=True)
class Reply:
    """What one request to a path gets."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/rss+xml; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    gzip: bool = False  # compress when the client accepts gzip
    drip: float | None = None  # seconds between single bytes: a slow drip
    stream: Callable[[], Iterator[bytes]] | None = None  # body produced lazily (huge or endless)
    length: int | None = None  # Content-Length to declare for a stream (None: close-delimited)
    raw_encoding: str | None = None  # Content-Encoding for a pre-encoded stream (gzip bombs)


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0


class FeedServer:
    """``with FeedServer() as server: server.serve("/feed", body); url = server.url("/feed")``."""

    def __init__(self) -> None:
        self._routes: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.hits: list[Hit] = []
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FeedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- scripting --------------------------------------------------------------------------------

    def route(self, path: str, *replies: Reply) -> str:
        """Script a path; returns its URL."""
        with self._lock:
            self._routes[path] = list(replies)
        return self.url(path)

    def serve(self, path: str, body: bytes, **options: Any) -> str:
        return self.route(path, Reply(body=body, **options))

    def redirect(self, path: str, location: str, status: int = 301) -> str:
        return self.route(path, Reply(status=status, headers={"Location": location}))

    def status(self, path: str, code: int, headers: dict[str, str] | None = None) -> str:
        body = f"status {code}\n".encode()
        return self.route(
            path, Reply(status=code, body=body, content_type="text/plain", headers=headers or {})
        )

    def drip(self, path: str, body: bytes, interval: float) -> str:
        return self.route(path, Reply(body=body, drip=interval))

    def endless(self, path: str, block: bytes = b"<item>x</item>" * 4096) -> str:
        """A body that never ends (no Content-Length): only a size cap or a deadline stops it."""

        def blocks() -> Iterator[bytes]:
            while not self._stop.is_set():
                yield block

        return self.route(path, Reply(stream=blocks))

    def gzip_bomb(self, path: str, decoded_size: int) -> str:
        """A small gzip body that decodes to ``decoded_size`` zero bytes."""
        return self.encoded(path, gzip_zeros(decoded_size), "gzip")

    def encoded(self, path: str, data: bytes, encoding: str) -> str:
        """Send ``data`` as is, labelled with ``Content-Encoding: encoding``."""
        return self.route(
            path, Reply(stream=lambda: iter([data]), length=len(data), raw_encoding=encoding)
        )

    # -- what happened ----------------------------------------------------------------------------

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for h in self.hits if path is None or h.path == path)

    def bytes_sent(self, path: str | None = None) -> int:
        with self._lock:
            return sum(h.body_bytes for h in self.hits if path is None or h.path == path)

    def statuses(self, path: str | None = None) -> Counter[int]:
        with self._lock:
            return Counter(h.status for h in self.hits if path is None or h.path == path)

    # -- internals --------------------------------------------------------------------------------

    def _next_reply(self, path: str) -> Reply | None:
        with self._lock:
            replies = self._routes.get(path)
            if not replies:
                return None
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)
        changed()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under a concurrent burst (a 1 s stall)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # a client hanging up is expected


def gzip_zeros(size: int) -> bytes:
    """Gzip of ``size`` zero bytes, built in 1 MiB steps so the test itself stays small."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    parts: list[bytes] = []
    left = size
    while left > 0:
        step = block if left >= len(block) else bytes(left)
        parts.append(z.compress(step))
        left -= len(step)
    parts.append(z.flush())
    return b"".join(parts)


def _handler_for(server: FeedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet tests

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            hit = Hit(path=self.path, headers={k.lower(): v for k, v in self.headers.items()})
            server._record(hit)  # before answering, so a client that has its answer sees the hit
            # The client may give up (a cap or a deadline): that is the point.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                self._answer(server._next_reply(path) or server._next_reply(self.path), hit)

        def _answer(self, reply: Reply | None, hit: Hit) -> None:
            if reply is None:
                reply = Reply(status=404, body=b"no such feed\n", content_type="text/plain")
            if _not_modified(reply, hit.headers):
                hit.status = 304
                self.send_response(304)
                self._validators(reply)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            hit.status = reply.status
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self._validators(reply)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream is not None:
                self._stream(reply, hit)
                return
            body = reply.body
            if reply.gzip and "gzip" in hit.headers.get("accept-encoding", ""):
                body = gzip.compress(body)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if reply.drip is None:
                hit.body_bytes += len(body)  # counted first: the client may read it at once
                self.wfile.write(body)
                return
            for i in range(len(body)):
                if server._stop.wait(reply.drip):
                    return
                hit.body_bytes += 1
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()

        def _stream(self, reply: Reply, hit: Hit) -> None:
            assert reply.stream is not None
            if reply.raw_encoding:
                self.send_header("Content-Encoding", reply.raw_encoding)
            if reply.length is not None:
                self.send_header("Content-Length", str(reply.length))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            for block in reply.stream():
                hit.body_bytes += len(block)
                self.wfile.write(block)

        def _validators(self, reply: Reply) -> None:
            if reply.etag:
                self.send_header("ETag", reply.etag)
            if reply.last_modified:
                self.send_header("Last-Modified", reply.last_modified)

    return Handler


def _not_modified(reply: Reply, headers: dict[str, str]) -> bool:
    if reply.status != 200:
        return False
    if reply.etag and headers.get("if-none-match"):
        tags: Sequence[str] = [t.strip() for t in headers["if-none-match"].split(",")]
        return reply.etag in tags or "*" in tags
    if reply.last_modified and headers.get("if-modified-since"):
        return headers["if-modified-since"] == reply.last_modified
    return False
