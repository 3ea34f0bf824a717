"""Masking secrets in text, before it is logged, stored or printed.

Anything shaped like a Slack token (``xoxb-``, ``xoxp-``, ``xapp-`` ...), an incoming-webhook URL,
the credential after ``Bearer``, and every value registered as secret (with its URL-encoded form)
becomes ``[REDACTED]``. The log handler, the Slack sink's error reasons (which end up in the
database) and the CLI's output all go through one :class:`Redactor`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "[REDACTED]"

# Slack bot/user/app/refresh tokens, incoming-webhook URLs, and any bearer credential (a proxy
# that quotes the Authorization header it received).
_SECRET = re.compile(
    r"(?P<bearer>\bBearer\s+)[^\s\"'<>;,&]+"
    r"|\b(?P<kind>xox[abeposr]|xapp|xoxe\.xox[bp])-[A-Za-z0-9-]+"
    r"|(?P<hook>https://hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]+"
)
_MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words in every line


class Redactor:
    """Masks secret-shaped text and registered secret values."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Register a value (and its URL-encoded form) that must never be shown."""
        value = (secret or "").strip()
        if len(value) < _MIN_SECRET_LENGTH:
            return
        for form in (value, quote(value, safe="")):
            if form not in self._secrets:
                self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)  # mask the longest form first

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _SECRET.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    if match.group("bearer"):
        return match.group("bearer") + REDACTED
    if match.group("hook"):
        return match.group("hook") + REDACTED
    return f"{match.group('kind')}-{REDACTED}"
