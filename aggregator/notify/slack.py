"""The Slack edge: a thin wrapper over slack-sdk's WebClient, the only module importing slack_sdk.

The client is built with ``retry_handlers=[]``: the SDK's default retry re-posts a message whose
response was lost, so the outbox owns every retry. Every failure becomes a
:class:`~aggregator.errors.DeliveryError` that says whether it is permanent, how long Slack asked us
to wait, whether it concerns the whole channel, and (as :class:`UncertainDelivery`) whether Slack
may have accepted the message anyway.

Every reason is redacted before it leaves this module: a proxy's error page or an API error field
may quote the Authorization header, and reasons are stored (an alert's ``last_error``, a channel's
pause reason) and printed (``outbox``, ``slack test``, ``doctor``).
"""

from __future__ import annotations

import http.client
import re
import socket
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from aggregator.errors import DeliveryError
from aggregator.models import ChannelMessage, HistoryPage, Reaction
from aggregator.notify.render import Message, alert_ids_in
from aggregator.notify.sink import Posted, UncertainDelivery
from aggregator.redact import Redactor

HISTORY_PAGE = 200
HISTORY_MAX_PAGES = 25
DEFAULT_RETRY_AFTER = 60.0
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")

RATE_LIMITED = {"ratelimited", "rate_limited"}
# Errors that will not go away by retrying the same message.
PERMANENT = {
    "channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "not_authed",
    "account_inactive", "token_revoked", "token_expired", "missing_scope", "no_permission",
    "not_allowed_token_type", "invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long",
    "msg_too_long", "no_text", "invalid_metadata_format", "invalid_metadata_schema",
    "metadata_too_large", "metadata_must_be_sent_from_app", "restricted_action",
    "restricted_action_read_only_channel", "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel", "restricted_action_thread_locked",
    "team_not_found", "as_user_not_supported", "too_many_attachments", "invalid_arguments",
    "invalid_arg_name", "invalid_array_arg", "invalid_charset", "invalid_form_data",
    "invalid_post_type", "missing_post_type", "method_deprecated", "deprecated_endpoint",
    "access_denied", "ekm_access_denied", "message_not_found", "cant_update_message",
    "edit_window_closed", "is_inactive", "markdown_text_conflict", "invalid_attachments",
    "messages_tab_disabled", "enterprise_is_restricted", "two_factor_setup_required",
    "team_access_not_granted", "cannot_reply_to_message", "block_mismatch",
}  # fmt: skip
# Errors after which Slack may still have done the work.
MAYBE_DONE = {"fatal_error", "internal_error", "request_timeout", "update_failed"}
# Errors about the service, not the message: pause the channel.
SERVICE = MAYBE_DONE | {
    "service_unavailable", "team_added_to_org", "org_login_required", "external_channel_migrating",
    "message_limit_exceeded",
}  # fmt: skip
AUTH = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What ``auth.test`` says about the token; ``scopes`` is None when Slack did not say."""

    user: str
    team: str
    scopes: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What ``conversations.info`` says about a channel the bot can see."""

    id: str
    name: str
    is_member: bool
    is_archived: bool
    is_private: bool


def describe(code: str, channel: str) -> str:
    """What a Slack error code means for this channel, in plain words with the fix."""
    words = {
        "channel_not_found": f"Slack has no channel {channel} that the bot can see: check the "
        "name in topics.toml, or invite the bot if the channel is private",
        "not_in_channel": f"the bot is not in {channel}: invite it (/invite @your-bot) or add "
        "the chat:write.public scope",
        "is_archived": f"{channel} is archived: unarchive it or point the topic at another channel",
        "invalid_auth": "Slack rejected the token: check SLACK_BOT_TOKEN (a bot token, xoxb-...)",
        "not_authed": "no Slack token was sent: set SLACK_BOT_TOKEN",
        "token_revoked": "the Slack token was revoked: reinstall the app and update the token",
        "token_expired": "the Slack token expired: refresh it and update SLACK_BOT_TOKEN",
        "account_inactive": "the Slack app or workspace is inactive: reinstall the app",
        "missing_scope": "the Slack app lacks a scope: add chat:write (and chat:write.public, "
        "channels:history, channels:read) and reinstall it",
        "invalid_blocks": "Slack refused the message layout (invalid_blocks)",
        "msg_blocks_too_long": "Slack refused the message as too long",
        "ratelimited": f"Slack asked us to slow down in {channel}",
        "rate_limited": f"Slack asked us to slow down in {channel}",
        "restricted_action": f"a workspace setting stops the bot posting in {channel}",
        "restricted_action_read_only_channel": f"{channel} is read-only for the bot",
    }
    explanation = words.get(code)
    return f"{code}: {explanation}" if explanation else code


def is_channel_id(channel: str) -> bool:
    return bool(_CHANNEL_ID.match(channel))


class SlackSink:
    """Posts through the Slack Web API. One per thread (the WebClient is not shared)."""

    name = "slack"

    def __init__(self, token: str, base_url: str, *, timeout: float = 15.0) -> None:
        self._client = WebClient(
            token=token, base_url=base_url, timeout=int(max(1, timeout)), retry_handlers=[]
        )
        self._channel_ids: dict[str, str] = {}
        self._redact = Redactor([token])

    # -- sending ---------------------------------------------------------------------------------

    def post(self, channel: str, message: Message, *, thread_ts: str | None = None) -> Posted:
        args: dict[str, Any] = {
            "channel": channel,
            "text": message.text,
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if message.blocks:
            args["blocks"] = list(message.blocks)
        if message.metadata:
            args["metadata"] = message.metadata
        if thread_ts:
            args["thread_ts"] = thread_ts
        data = self._call(channel, "chat.postMessage", self._client.chat_postMessage, args)
        return self._posted(channel, data)

    def update(self, channel: str, ts: str, message: Message) -> Posted:
        args: dict[str, Any] = {"channel": self.channel_id(channel), "ts": ts, "text": message.text}
        if message.blocks:
            args["blocks"] = list(message.blocks)
        if message.metadata:
            args["metadata"] = message.metadata
        data = self._call(channel, "chat.update", self._client.chat_update, args)
        return self._posted(channel, data)

    # -- reconciliation --------------------------------------------------------------------------

    def find_alert(
        self,
        channel: str,
        alert_id: int,
        *,
        oldest: datetime | None = None,
        channel_id: str | None = None,
        thread_ts: str | None = None,
    ) -> Posted | None:
        cid = channel_id or self.channel_id(channel)
        for message in self._history(channel, cid, oldest, thread_ts):
            if alert_id in alert_ids_in(message.get("metadata")):
                return Posted(cid, str(message.get("ts", "")))
        return None

    def _history(
        self, channel: str, cid: str, oldest: datetime | None, thread_ts: str | None
    ) -> Iterator[Mapping[str, Any]]:
        cursor: str | None = None
        for _ in range(HISTORY_MAX_PAGES):
            args: dict[str, Any] = {"channel": cid, "include_all_metadata": True}
            args["limit"] = HISTORY_PAGE
            if oldest is not None:
                args["oldest"] = f"{oldest.timestamp():.6f}"
            if cursor:
                args["cursor"] = cursor
            if thread_ts:
                args["ts"] = thread_ts
                replies = self._client.conversations_replies
                data = self._call(channel, "conversations.replies", replies, args)
            else:
                history = self._client.conversations_history
                data = self._call(channel, "conversations.history", history, args)
            messages = data.get("messages") or []
            yield from (m for m in messages if isinstance(m, dict))
            meta = data.get("response_metadata") or {}
            cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
            if not cursor:
                return

    def history_page(
        self, channel_id: str, *, oldest: str, latest: str, cursor: str | None = None,
        limit: int = HISTORY_PAGE,
    ) -> HistoryPage:  # fmt: skip
        """One ``conversations.history`` call: the channel's top-level messages from ``oldest`` to
        ``latest`` (Slack ts, both included), with their reactions. The caller pages and paces."""
        args: dict[str, Any] = {"channel": channel_id, "oldest": oldest, "latest": latest}
        args |= {"inclusive": True, "limit": limit}
        if cursor:
            args["cursor"] = cursor
        history = self._client.conversations_history
        data = self._call(channel_id, "conversations.history", history, args)
        messages = tuple(
            _channel_message(m) for m in data.get("messages") or [] if isinstance(m, dict)
        )
        meta = data.get("response_metadata") or {}
        next_cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
        return HistoryPage(messages, str(next_cursor) if next_cursor else None)

    def channel_id(self, channel: str) -> str:
        """Slack's id for ``#name`` (history and updates need ids; posting accepts names)."""
        if is_channel_id(channel):
            return channel
        if channel in self._channel_ids:
            return self._channel_ids[channel]
        wanted = channel.lstrip("#")
        cursor: str | None = None
        for _ in range(50):
            args: dict[str, Any] = {"types": "public_channel,private_channel", "limit": 1000}
            if cursor:
                args["cursor"] = cursor
            data = self._call(channel, "conversations.list", self._client.conversations_list, args)
            for item in data.get("channels") or []:
                if isinstance(item, dict) and item.get("name") == wanted and item.get("id"):
                    self._channel_ids[channel] = str(item["id"])
                    return self._channel_ids[channel]
            meta = data.get("response_metadata") or {}
            cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
            if not cursor:
                break
        raise DeliveryError(describe("channel_not_found", channel), permanent=True)

    def identity(self) -> str:
        data = self._call("", "auth.test", self._client.auth_test, {})
        return f"{data.get('user', '?')} in workspace {data.get('team', '?')}"

    def token_info(self) -> TokenInfo:
        """``auth.test``, with the token's scopes from the ``x-oauth-scopes`` response header."""
        response = self._request("", "auth.test", self._client.auth_test, {})
        data = response.data if isinstance(response.data, dict) else {}
        raw = next(
            (v for k, v in (response.headers or {}).items() if str(k).lower() == "x-oauth-scopes"),
            None,
        )
        if isinstance(raw, list | tuple):
            raw = ",".join(str(v) for v in raw)
        scopes = None if raw is None else frozenset(s.strip() for s in str(raw).split(",") if s)
        return TokenInfo(str(data.get("user", "?")), str(data.get("team", "?")), scopes)

    def channel_info(self, channel: str) -> ChannelInfo:
        """``conversations.info`` for ``#name`` or an id; never posts."""
        cid = self.channel_id(channel)
        info = self._client.conversations_info
        data = self._call(channel, "conversations.info", info, {"channel": cid})
        item = data.get("channel")
        item = item if isinstance(item, dict) else {}
        return ChannelInfo(
            id=cid,
            name=str(item.get("name") or channel.lstrip("#")),
            is_member=bool(item.get("is_member")),
            is_archived=bool(item.get("is_archived")),
            is_private=bool(item.get("is_private")),
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _posted(self, channel: str, data: Mapping[str, Any]) -> Posted:
        cid = str(data.get("channel") or channel)
        if is_channel_id(cid) and not is_channel_id(channel):
            self._channel_ids[channel] = cid
        return Posted(cid, str(data.get("ts") or ""))

    def _call(
        self, channel: str, method: str, call: Callable[..., Any], args: dict[str, Any]
    ) -> Mapping[str, Any]:
        """Run one API call and turn every failure into a DeliveryError."""
        data = self._request(channel, method, call, args).data
        return data if isinstance(data, dict) else {}

    def _request(
        self, channel: str, method: str, call: Callable[..., Any], args: dict[str, Any]
    ) -> Any:
        """The SDK's response object (data and headers), or a DeliveryError."""
        try:
            return call(**args)
        except SlackApiError as e:
            error = api_error(channel, method, e.response.status_code, e.response)
            raise self._redacted(error, e) from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise self._redacted(connection_error(method, e), e) from e
        except SlackClientError as e:
            error = DeliveryError(f"{method}: {e}", channel_wide=True)
            raise self._redacted(error, e) from e

    def _redacted(self, error: DeliveryError, cause: BaseException) -> DeliveryError:
        """``error`` with no secret in its reason, nor in the SDK error it is chained to (a
        traceback prints that one too)."""
        error.reason = self._redact(error.reason)
        error.args = (error.reason,)
        cause.args = tuple(self._redact(str(a)) if isinstance(a, str) else a for a in cause.args)
        return error


def _channel_message(message: Mapping[str, Any]) -> ChannelMessage:
    reactions = []
    for item in message.get("reactions") or []:
        if not isinstance(item, dict) or not item.get("name"):
            continue
        users = tuple(str(u) for u in item.get("users") or [] if u)
        count = item.get("count")
        reactions.append(
            Reaction(str(item["name"]), users, count if isinstance(count, int) else len(users))
        )
    thread = message.get("thread_ts")
    return ChannelMessage(str(message.get("ts", "")), str(thread) if thread else None,
                          tuple(reactions))  # fmt: skip


def api_error(channel: str, method: str, status: int, response: Any) -> DeliveryError:
    """Classify an answer from Slack that was not ``ok``."""
    data = getattr(response, "data", None)
    code = str(data.get("error") or "") if isinstance(data, dict) else ""
    headers = getattr(response, "headers", {}) or {}
    if status == 429 or code in RATE_LIMITED:
        wait = _retry_after(headers)
        return DeliveryError(
            f"{describe(code or 'ratelimited', channel)} (HTTP {status}, retry after {wait:g} s)",
            retry_after=wait,
            channel_wide=True,
        )
    if status >= 500:
        reason = f"{method}: Slack answered HTTP {status}" + (f" ({code})" if code else "")
        return UncertainDelivery(reason, channel_wide=True)
    if code in PERMANENT:
        return DeliveryError(describe(code, channel), permanent=True)
    if code in MAYBE_DONE:
        return UncertainDelivery(f"{method}: {describe(code, channel)}", channel_wide=True)
    if code in SERVICE:
        limit = 900.0 if code == "message_limit_exceeded" else None
        return DeliveryError(describe(code, channel), channel_wide=True, retry_after=limit)
    if status != 200:
        reason = f"{method}: Slack answered HTTP {status} {code}".strip()
        return DeliveryError(reason, channel_wide=True)
    return DeliveryError(f"{method}: {describe(code or 'unknown error', channel)}")


def connection_error(method: str, error: BaseException) -> DeliveryError:
    """A network failure. A refused connection never reached Slack; anything later might have."""
    reason = getattr(error, "reason", None)
    cause = reason if isinstance(reason, BaseException) else error
    text = f"{method}: cannot reach Slack: {type(cause).__name__}: {cause}".rstrip(": ")
    if isinstance(cause, ConnectionRefusedError | socket.gaierror):
        return DeliveryError(text, channel_wide=True)
    return UncertainDelivery(text, channel_wide=True)


def _retry_after(headers: Mapping[str, Any]) -> float:
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return max(0.0, float(str(raw).strip()))
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER
