"""What the outbox sends through: Slack, or the console when no token is set."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aggregator.errors import DeliveryError
from aggregator.notify.render import Message


@dataclass(frozen=True, slots=True)
class Posted:
    """Where a message landed: Slack's channel id and the message ``ts``."""

    channel_id: str
    ts: str


class Sink(Protocol):
    """A message destination. Every method raises :class:`~aggregator.errors.DeliveryError`."""

    name: str

    def post(self, channel: str, message: Message, *, thread_ts: str | None = None) -> Posted:
        """Post one message (a thread reply when ``thread_ts`` is given)."""
        ...

    def update(self, channel: str, ts: str, message: Message) -> Posted:
        """Replace the content of a message already posted."""
        ...

    def find_alert(
        self,
        channel: str,
        alert_id: int,
        *,
        oldest: datetime | None = None,
        channel_id: str | None = None,
        thread_ts: str | None = None,
    ) -> Posted | None:
        """The message carrying this alert id in its metadata, or None when Slack never got it."""
        ...

    def identity(self) -> str:
        """Who we post as, in plain words (checks the token)."""
        ...


class UncertainDelivery(DeliveryError):
    """A send whose outcome is unknown: Slack may have accepted the message (lost response, 5xx).

    The outbox looks the alert up in the channel's history before it sends it again.
    """
