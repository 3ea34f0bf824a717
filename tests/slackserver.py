"""A real Slack Web API server on 127.0.0.1, in a thread, with scriptable faults.

It speaks enough of the Web API for the bot: ``chat.postMessage``, ``chat.update``,
``conversations.history`` and ``conversations.replies`` (with message metadata when
``include_all_metadata`` is asked), ``conversations.list``, ``conversations.info`` and
``auth.test``.
It records every message it accepts, with the time it received it (from an injectable clock), so
tests count what reached each channel instead of trusting the client.

People react to messages through :meth:`SlackServer.react` and :meth:`SlackServer.unreact` (as
a user id); ``conversations.history`` then returns ``reactions`` on each message (name, users,
count), as Slack does, and honours ``oldest``, ``latest`` and ``inclusive``.
:meth:`SlackServer.stall` holds every call of a method until the test releases it (a slow Slack).

Faults are queued per method and used one per call (:meth:`SlackServer.script`), set per channel
(:meth:`SlackServer.fail_channel`), or chosen by a hook for chaos runs (``chaos=``):

- ``Fault.rate_limited(retry_after)``: HTTP 429, ``Retry-After``, ``{"error": "ratelimited"}``;
- ``Fault.in_body_rate_limited()``: HTTP 200 with ``{"ok": false, "error": "rate_limited"}``;
- ``Fault.status(500)`` / ``Fault.status(503)``: a server error (HTML body, as Slack's edge sends);
- ``Fault.drop()``: the connection is closed before any response, nothing accepted;
- ``Fault.accept_then_drop()``: the message is stored, then the connection closed (lost response);
- ``Fault.error("channel_not_found")`` and the like: HTTP 200 with ``{"ok": false, "error": ...}``;
- ``Fault.echo_auth_page(502)``: a proxy's HTML error page that quotes the request's Authorization
  header (the token); ``Fault.echo_auth_error()``: an ``error`` field that quotes it.

Run it by hand with ``python tests/slackserver.py`` to point a bot at it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.waiting import changed

TOKEN = "xoxb-test-token"
# What a correctly installed bot holds; sent in the x-oauth-scopes header, as Slack does.
SCOPES = (
    "chat:write", "chat:write.public", "channels:history", "groups:history", "channels:read",
    "groups:read",
)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    kind: str  # rate_limited | status | drop | accept_then_drop | error | echo_page | echo_error
    http_status: int = 200
    code: str = ""
    retry_after: float | None = None

    @classmethod
    def rate_limited(cls, retry_after: float = 1) -> Fault:
        return cls("rate_limited", 429, "ratelimited", retry_after)

    @classmethod
    def in_body_rate_limited(cls, retry_after: float | None = None) -> Fault:
        return cls("rate_limited", 200, "rate_limited", retry_after)

    @classmethod
    def status(cls, code: int) -> Fault:
        return cls("status", code)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def accept_then_drop(cls) -> Fault:
        return cls("accept_then_drop")

    @classmethod
    def error(cls, code: str) -> Fault:
        return cls("error", 200, code)

    @classmethod
    def echo_auth_page(cls, status: int = 502) -> Fault:
        return cls("echo_page", status)

    @classmethod
    def echo_auth_error(cls) -> Fault:
        return cls("echo_error", 200)


@dataclass
class Received:
    """One message Slack accepted (a post, or an update when ``method`` is chat.update)."""

    method: str
    channel: str  # as the client named it
    channel_id: str
    ts: str
    at: float  # the server clock when the request arrived
    text: str
    blocks: list[dict[str, Any]]
    metadata: dict[str, Any] | None
    thread_ts: str | None = None

    @property
    def alert_ids(self) -> list[int]:
        meta = self.metadata or {}
        payload = meta.get("event_payload") or {}
        ids = payload.get("alert_ids") or [payload.get("alert_id")]
        return [int(i) for i in ids if i is not None]


@dataclass
class Call:
    method: str
    at: float
    params: dict[str, Any]
    outcome: str  # ok | the error code | the fault kind


@dataclass
class Stall:
    """Calls of one method wait at the door until :meth:`release` (then answer as scripted)."""

    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    waiting: int = 0

    def release(self) -> None:
        self.released.set()


@dataclass
class _Channel:
    id: str
    name: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    is_member: bool = True
    is_archived: bool = False
    is_private: bool = False


class SlackServer:
    """Use ``with SlackServer() as slack:``; point ``WebClient(base_url=slack.url)`` at it."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        token: str = TOKEN,
        auto_channels: bool = True,
        chaos: Callable[[str, dict[str, Any]], Fault | None] | None = None,
    ) -> None:
        self.clock = clock
        self.token = token
        self.auto_channels = auto_channels
        self.chaos = chaos
        self.scopes: tuple[str, ...] | None = SCOPES  # None: send no x-oauth-scopes header
        self.received: list[Received] = []
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self._faults: dict[str, deque[Fault | None]] = defaultdict(deque)
        self._channel_errors: dict[str, str] = {}
        self._channels: dict[str, _Channel] = {}
        self._stalls: dict[str, Stall] = {}
        self._last_ts = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> SlackServer:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/api/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SlackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------------------

    def script(self, method: str, *faults: Fault | None) -> None:
        """Queue faults for the next calls of ``method``, one per call; None answers normally."""
        with self.lock:
            self._faults[method].extend(faults)

    def fail_channel(self, channel: str, error: str | None) -> None:
        """Answer every post to ``channel`` (name or id) with this permanent error (None: clear)."""
        with self.lock:
            if error is None:
                self._channel_errors.pop(channel, None)
            else:
                self._channel_errors[channel] = error

    def add_channel(
        self,
        name: str,
        channel_id: str | None = None,
        *,
        is_member: bool = True,
        is_archived: bool = False,
        is_private: bool = False,
    ) -> str:
        with self.lock:
            ch = self._channel(name, channel_id, create=True)
            assert ch is not None
            ch.is_member, ch.is_archived, ch.is_private = is_member, is_archived, is_private
            return ch.id

    def stall(self, method: str) -> Stall:
        """Hold every call of ``method`` until the returned stall is released."""
        with self.lock:
            self._stalls[method] = stall = Stall()
        return stall

    def react(self, channel: str, ts: str, name: str, user: str) -> None:
        """``user`` adds the reaction ``name`` to the message ``ts`` (as reactions.add does)."""
        with self.lock:
            message = self._message(channel, ts)
            reactions = message.setdefault("reactions", [])
            found = next((r for r in reactions if r["name"] == name), None)
            if found is None:
                reactions.append({"name": name, "users": [user], "count": 1})
            elif user not in found["users"]:
                found["users"].append(user)
                found["count"] += 1
        changed()

    def unreact(self, channel: str, ts: str, name: str, user: str) -> None:
        """``user`` removes their reaction ``name`` (as reactions.remove does)."""
        with self.lock:
            message = self._message(channel, ts)
            reactions = message.get("reactions") or []
            for r in reactions:
                if r["name"] == name and user in r["users"]:
                    r["users"].remove(user)
                    r["count"] -= 1
            message["reactions"] = [r for r in reactions if r["count"] > 0]
            if not message["reactions"]:
                del message["reactions"]
        changed()

    def _message(self, channel: str, ts: str) -> dict[str, Any]:
        ch = self._channel(channel, create=False)
        found = next((m for m in ch.messages if m["ts"] == ts), None) if ch else None
        if found is None:
            raise KeyError(f"no message {ts} in {channel}")
        return found

    # -- inspection -------------------------------------------------------------------------------

    def posts(self, channel: str | None = None) -> list[Received]:
        """Accepted chat.postMessage calls, optionally for one channel (name or id)."""
        with self.lock:
            return [
                r
                for r in self.received
                if r.method == "chat.postMessage"
                and (channel is None or channel in (r.channel, r.channel_id))
            ]

    def updates(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.method == "chat.update"]

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c.method == method)

    def alert_counts(self) -> dict[int, int]:
        """How many accepted posts carried each alert id."""
        counts: dict[int, int] = defaultdict(int)
        for r in self.posts():
            for alert_id in r.alert_ids:
                counts[alert_id] += 1
        return dict(counts)

    # -- the API ----------------------------------------------------------------------------------

    def _channel(self, ref: str, channel_id: str | None = None, *, create: bool) -> _Channel | None:
        for ch in self._channels.values():
            if ref in (ch.id, f"#{ch.name}", ch.name):
                return ch
        if not create or (ref[:1] in ("C", "G", "D") and ref[1:].isalnum() and ref.isupper()):
            return None
        name = ref.lstrip("#")
        cid = channel_id or "C" + format(zlib.crc32(name.encode()), "08X") + "X"
        self._channels[cid] = _Channel(cid, name)
        return self._channels[cid]

    def _next_ts(self) -> str:
        now = max(self.clock(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"

    def handle(self, method: str, params: dict[str, Any], auth: str) -> tuple[int, dict[str, Any]]:
        """Answer one call (faults already applied). Returns (HTTP status, body)."""
        if auth != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if method == "auth.test":
            return 200, {"ok": True, "user": "alertbot", "user_id": "U0BOT", "team": "Test Team"}
        if method in ("chat.postMessage", "chat.update"):
            return self._post(method, params)
        if method in ("conversations.history", "conversations.replies"):
            return self._history(method, params)
        if method == "conversations.list":
            items = [
                {"id": c.id, "name": c.name, "is_channel": True} for c in self._channels.values()
            ]
            return 200, {"ok": True, "channels": items, "response_metadata": {"next_cursor": ""}}
        if method == "conversations.info":
            ch = self._channel(str(params.get("channel", "")), create=False)
            if ch is None:
                return 200, {"ok": False, "error": "channel_not_found"}
            info = {"id": ch.id, "name": ch.name, "is_channel": not ch.is_private}
            info |= {"is_member": ch.is_member, "is_archived": ch.is_archived}
            return 200, {"ok": True, "channel": info | {"is_private": ch.is_private}}
        return 404, {"ok": False, "error": "unknown_method"}

    def _post(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ref = str(params.get("channel", ""))
        ch = self._channel(ref, create=self.auto_channels)
        error = self._channel_errors.get(ref) or (ch and self._channel_errors.get(ch.id))
        if error:
            return 200, {"ok": False, "error": error}
        if ch is None:
            return 200, {"ok": False, "error": "channel_not_found"}
        text = params.get("text")
        blocks = params.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not text and not blocks:
            return 200, {"ok": False, "error": "no_text"}
        if blocks is not None and not _blocks_valid(blocks):
            return 200, {"ok": False, "error": "invalid_blocks"}
        metadata = params.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        at = self.clock()
        if method == "chat.update":
            target = next((m for m in ch.messages if m["ts"] == params.get("ts")), None)
            if target is None:
                return 200, {"ok": False, "error": "message_not_found"}
            target.update(text=text, blocks=blocks or [])
            if metadata:
                target["metadata"] = metadata
            ts = str(target["ts"])
        else:
            ts = self._next_ts()
            message: dict[str, Any] = {"type": "message", "ts": ts, "text": text or ""}
            message["blocks"] = blocks or []
            if metadata:
                message["metadata"] = metadata
            if params.get("thread_ts"):
                message["thread_ts"] = params["thread_ts"]
            ch.messages.append(message)
        self.received.append(
            Received(
                method,
                ref,
                ch.id,
                ts,
                at,
                text or "",
                blocks or [],
                metadata,
                params.get("thread_ts"),
            )
        )
        return 200, {"ok": True, "channel": ch.id, "ts": ts, "message": {"text": text, "ts": ts}}

    def _history(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ch = self._channel(str(params.get("channel", "")), create=False)
        if ch is None or not str(params.get("channel", "")).startswith(("C", "G", "D")):
            return 200, {"ok": False, "error": "channel_not_found"}
        with_meta = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        oldest = float(params.get("oldest") or 0)
        latest = float(params.get("latest") or "inf")
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        if method == "conversations.replies":
            parent = str(params.get("ts", ""))
            pool = [m for m in ch.messages if m["ts"] == parent or m.get("thread_ts") == parent]
        else:
            pool = [m for m in reversed(ch.messages) if not m.get("thread_ts")]  # newest first
        if inclusive:
            pool = [m for m in pool if oldest <= float(m["ts"]) <= latest]
        else:
            pool = [m for m in pool if oldest < float(m["ts"]) < latest]
        start = int(params.get("cursor") or 0)
        limit = max(1, min(int(params.get("limit") or 100), 999))
        page = pool[start : start + limit]
        out = []
        for m in page:
            item = {k: v for k, v in m.items() if k != "metadata" or with_meta}
            if "reactions" in item:  # a copy: a later reaction must not change a sent answer
                item["reactions"] = [dict(r, users=list(r["users"])) for r in item["reactions"]]
            out.append(item)
        more = start + limit < len(pool)
        cursor = str(start + limit) if more else ""
        return 200, {
            "ok": True,
            "messages": out,
            "has_more": more,
            "response_metadata": {"next_cursor": cursor},
        }


def _blocks_valid(blocks: object) -> bool:
    """The limits Slack enforces that our messages could break."""
    if not isinstance(blocks, list) or len(blocks) > 50:
        return False
    for block in blocks:
        if not isinstance(block, dict) or "type" not in block:
            return False
        text = block.get("text")
        if block["type"] == "header":
            if not isinstance(text, dict) or text.get("type") != "plain_text":
                return False
            if len(text.get("text", "")) > 150:
                return False
        if block["type"] == "section" and isinstance(text, dict) and len(text["text"]) > 3000:
            return False
    return True


def _make_handler(server: SlackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.do_POST()

        def do_POST(self) -> None:
            at = server.clock()
            parts = urlsplit(self.path)
            method = parts.path.rsplit("/", 1)[-1]
            params: dict[str, Any] = dict(parse_qsl(parts.query))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type", "")
            if raw and "json" in ctype:
                params.update(json.loads(raw.decode("utf-8")))
            elif raw:
                params.update(parse_qsl(raw.decode("utf-8")))
            auth = self.headers.get("Authorization", "")
            with server.lock:
                stall = server._stalls.get(method)
                if stall is not None:
                    stall.waiting += 1
            if stall is not None:
                stall.arrived.set()
                changed()
                stall.released.wait(60)
            with server.lock:
                fault = server._faults[method].popleft() if server._faults[method] else None
                if fault is None and server.chaos is not None:
                    fault = server.chaos(method, params)
                if fault is not None and fault.kind != "accept_then_drop":
                    server.calls.append(Call(method, at, params, fault.kind))
                else:
                    status, body = server.handle(method, params, auth)
                    outcome = "ok" if body.get("ok") else str(body.get("error"))
                    server.calls.append(Call(method, at, params, outcome))
            changed()
            if fault is None:
                scopes = {"x-oauth-scopes": ",".join(server.scopes)} if server.scopes else {}
                self._reply(status, body, headers=scopes)
            elif fault.kind in ("drop", "accept_then_drop"):
                self._drop()
            elif fault.kind == "status":
                page = b"<html><body>Slack is having trouble</body></html>"
                self._reply(fault.http_status, None, page)
            elif fault.kind == "echo_page":
                page = (  # early in the page: slack-sdk keeps the first 100 characters
                    f"<html><body>Bad gateway: Authorization: {auth}; Host: slack.com"
                    "<p>upstream refused the request</p></body></html>"
                )
                self._reply(fault.http_status, None, page.encode())
            elif fault.kind == "echo_error":
                body = {"ok": False, "error": f"bad_request: could not verify {auth}"}
                self._reply(fault.http_status, body)
            else:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                body = {"ok": False, "error": fault.code}
                self._reply(fault.http_status, body, headers=headers)

        def _reply(
            self,
            status: int,
            body: dict[str, Any] | None,
            raw: bytes | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            data = raw if raw is not None else json.dumps(body).encode("utf-8")
            self.send_response(status)
            ctype = "text/html" if raw is not None else "application/json; charset=utf-8"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client died mid-call (the crash tests do that)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


if __name__ == "__main__":
    with SlackServer() as slack:
        print(f"Slack Web API stand-in at {slack.url} (token {TOKEN}); Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
