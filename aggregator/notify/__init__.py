"""Delivery: Block Kit rendering, the Slack and console sinks, and the outbox loop.

The pipeline builds a sink with :func:`make_sink` and an :class:`Outbox` over the store, calls
:meth:`Outbox.recover` once at start-up and :meth:`Outbox.deliver_due` every cycle.
"""

from __future__ import annotations

from aggregator.config.model import Settings
from aggregator.notify.console import ConsoleSink
from aggregator.notify.outbox import Outbox
from aggregator.notify.render import Message, render, render_digest
from aggregator.notify.sink import Posted, Sink, UncertainDelivery


def make_sink(settings: Settings, token: str | None) -> Sink:
    """Slack when a token is set, else the console."""
    if token:
        from aggregator.notify.slack import SlackSink

        return SlackSink(token, settings.slack_api_url)
    return ConsoleSink()


__all__ = [
    "ConsoleSink",
    "Message",
    "Outbox",
    "Posted",
    "Sink",
    "UncertainDelivery",
    "make_sink",
    "render",
    "render_digest",
]
