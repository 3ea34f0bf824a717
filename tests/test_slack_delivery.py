"""The Slack sink against a real local Slack Web API server: each answer becomes the right error."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from aggregator.errors import DeliveryError
from aggregator.notify.render import Message, metadata_for
from aggregator.notify.sink import UncertainDelivery
from aggregator.notify.slack import SlackSink
from tests.slackserver import TOKEN, Fault, SlackServer


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


def sink_for(slack: SlackServer, token: str = TOKEN) -> SlackSink:
    return SlackSink(token, slack.url, timeout=5)


def message(alert_id: int = 1) -> Message:
    blocks = ({"type": "section", "text": {"type": "mrkdwn", "text": "hello"}},)
    return Message("hello", blocks, metadata_for([alert_id]), (alert_id,))


def test_post_returns_channel_id_and_ts(slack: SlackServer) -> None:
    posted = sink_for(slack).post("#ai-policy", message())
    assert posted.channel_id.startswith("C")
    assert posted.ts
    [got] = slack.posts("#ai-policy")
    assert got.text == "hello"
    assert got.metadata == metadata_for([1])


def test_rate_limit_429_carries_retry_after(slack: SlackServer) -> None:
    slack.script("chat.postMessage", Fault.rate_limited(7))
    with pytest.raises(DeliveryError) as caught:
        sink_for(slack).post("#ai-policy", message())
    error = caught.value
    assert error.retry_after == 7 and error.channel_wide and not error.permanent
    assert "ratelimited" in error.reason
    assert slack.count("chat.postMessage") == 1  # no SDK retry
    assert slack.posts() == []


def test_in_body_rate_limited_spelling(slack: SlackServer) -> None:
    slack.script("chat.postMessage", Fault.in_body_rate_limited(3), Fault.in_body_rate_limited())
    sink = sink_for(slack)
    with pytest.raises(DeliveryError) as first:
        sink.post("#ai-policy", message())
    assert first.value.retry_after == 3 and "rate_limited" in first.value.reason
    with pytest.raises(DeliveryError) as second:
        sink.post("#ai-policy", message())
    assert second.value.retry_after is not None and second.value.retry_after > 0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_uncertain_and_channel_wide(slack: SlackServer, status: int) -> None:
    slack.script("chat.postMessage", Fault.status(status))
    with pytest.raises(UncertainDelivery) as caught:
        sink_for(slack).post("#ai-policy", message())
    assert caught.value.channel_wide and not caught.value.permanent
    assert str(status) in caught.value.reason
    assert slack.count("chat.postMessage") == 1


def test_dropped_connection_is_not_retried_by_the_sdk(slack: SlackServer) -> None:
    slack.script("chat.postMessage", Fault.drop())
    with pytest.raises(UncertainDelivery) as caught:
        sink_for(slack).post("#ai-policy", message())
    assert caught.value.channel_wide
    assert slack.count("chat.postMessage") == 1
    assert slack.posts() == []


def test_lost_response_is_found_in_history(slack: SlackServer) -> None:
    slack.script("chat.postMessage", Fault.accept_then_drop())
    sink = sink_for(slack)
    with pytest.raises(UncertainDelivery):
        sink.post("#ai-policy", message(5))
    assert len(slack.posts()) == 1  # Slack did get it
    found = sink.find_alert("#ai-policy", 5)  # the id comes from conversations.list
    assert found is not None and found.ts == slack.posts()[0].ts
    assert sink.find_alert("#ai-policy", 6) is None
    assert slack.count("conversations.list") == 1


def test_history_pages_and_known_channel_id(slack: SlackServer) -> None:
    sink = sink_for(slack)
    first = sink.post("#ai-policy", message(1))
    for alert_id in range(2, 460):
        sink.post("#ai-policy", message(alert_id))
    fresh = sink_for(slack)
    assert fresh.find_alert("#ai-policy", 1, channel_id=first.channel_id) == first
    assert slack.count("conversations.list") == 0
    assert slack.count("conversations.history") == 3  # 200 a page


PERMANENT = [
    ("channel_not_found", "no channel"),
    ("not_in_channel", "the bot is not in #ai-policy: invite it"),
    ("is_archived", "#ai-policy is archived"),
    ("invalid_auth", "Slack rejected the token"),
    ("invalid_blocks", "invalid_blocks"),
    ("msg_blocks_too_long", "too long"),
    ("token_revoked", "revoked"),
    ("missing_scope", "scope"),
]


@pytest.mark.parametrize(("code", "words"), PERMANENT)
def test_permanent_errors(slack: SlackServer, code: str, words: str) -> None:
    slack.script("chat.postMessage", Fault.error(code))
    with pytest.raises(DeliveryError) as caught:
        sink_for(slack).post("#ai-policy", message())
    assert caught.value.permanent
    assert caught.value.reason.startswith(code)
    assert words in caught.value.reason


def test_wrong_token_is_invalid_auth(slack: SlackServer) -> None:
    with pytest.raises(DeliveryError) as caught:
        sink_for(slack, token="xoxb-wrong").post("#ai-policy", message())
    assert caught.value.permanent and "invalid_auth" in caught.value.reason


def test_unknown_error_is_transient_for_the_message(slack: SlackServer) -> None:
    slack.script("chat.postMessage", Fault.error("something_new"))
    with pytest.raises(DeliveryError) as caught:
        sink_for(slack).post("#ai-policy", message())
    assert not caught.value.permanent and not caught.value.channel_wide


def test_refused_connection_is_certain_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = SlackSink(TOKEN, f"http://127.0.0.1:{port}/api/", timeout=2)
    with pytest.raises(DeliveryError) as caught:
        sink.post("#ai-policy", message())
    assert not isinstance(caught.value, UncertainDelivery)
    assert caught.value.channel_wide
    assert "cannot reach Slack" in caught.value.reason


def test_update_and_identity(slack: SlackServer) -> None:
    sink = sink_for(slack)
    posted = sink.post("#ai-policy", message(3))
    sink.update("#ai-policy", posted.ts, Message("edited", (), metadata_for([3])))
    [update] = slack.updates()
    assert update.ts == posted.ts and update.text == "edited"
    assert "alertbot" in sink.identity()


def test_thread_reply_found_in_replies(slack: SlackServer) -> None:
    sink = sink_for(slack)
    parent = sink.post("#ai-policy", message(1))
    slack.script("chat.postMessage", Fault.accept_then_drop())
    with pytest.raises(UncertainDelivery):
        sink.post("#ai-policy", message(2), thread_ts=parent.ts)
    assert sink.find_alert("#ai-policy", 2) is None  # replies are not in the channel history
    found = sink.find_alert("#ai-policy", 2, thread_ts=parent.ts)
    assert found is not None
